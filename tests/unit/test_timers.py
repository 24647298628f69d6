"""gateway.timers: sleep_until, Deadlines (one timer per deadline for many sleepers), and SharedTimeout
(asyncio.timeout for many blocks of one limit, one timer)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pytest

from gateway.timers import Deadlines, SharedTimeout, sleep_until


async def _hang() -> None:
    await asyncio.Event().wait()  # nobody sets it


async def test_a_block_past_its_limit_raises_timeout_error_at_the_limit() -> None:
    guard = SharedTimeout(0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with guard:
            await _hang()
    assert loop.time() - start >= 0.1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_short_blocks_pass_and_a_later_hang_gets_its_own_full_limit() -> None:
    """The timer set by the first block is moved on to the block running when it fires."""
    guard = SharedTimeout(0.2)
    loop = asyncio.get_running_loop()
    for _ in range(8):  # 0.4 s of short blocks: the first timer fires while one of them runs
        async with guard:
            await asyncio.sleep(0.05)
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with guard:
            await _hang()
    assert loop.time() - start >= 0.2


async def test_blocks_of_several_tasks_each_keep_their_own_limit() -> None:
    guard = SharedTimeout(0.2)

    async def block(delay: float, work: float) -> str:
        await asyncio.sleep(delay)
        async with guard:
            await asyncio.sleep(work)
        return "done"

    old = asyncio.create_task(block(0.0, 10.0))  # outlives its limit
    young = asyncio.create_task(block(0.1, 0.15))  # ends 0.25 s in: past the old one's limit, within its own
    results = await asyncio.gather(old, young, return_exceptions=True)
    assert isinstance(results[0], TimeoutError)
    assert results[1] == "done"


async def test_a_cancel_from_elsewhere_stays_a_cancellation() -> None:
    guard = SharedTimeout(10.0)
    entered = asyncio.Event()

    async def block() -> None:
        async with guard:
            entered.set()
            await _hang()

    task = asyncio.create_task(block())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    guard.close()


async def test_a_cancel_both_from_the_guard_and_from_elsewhere_stays_a_cancellation() -> None:
    guard = SharedTimeout(0.05)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    async def block() -> None:
        async with guard:
            waited = loop.create_future()
            # A stop that lands together with the guard's cancel, before the task runs again:
            # this callback is registered first, so it runs before the task's own wake-up.
            waited.add_done_callback(lambda _: tasks[0].cancel())
            await waited

    tasks.append(asyncio.create_task(block()))
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]


async def test_a_swallowed_cancel_is_taken_back() -> None:
    guard = SharedTimeout(0.05)
    async with guard:
        with contextlib.suppress(asyncio.CancelledError):  # a block that swallows the cancel ends normally
            await _hang()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    async with guard:  # and the guard still works
        await asyncio.sleep(0)


async def test_sleep_until_wakes_at_its_deadline_and_not_before() -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    await sleep_until(deadline)
    assert loop.time() >= deadline
    past = loop.time() - 1.0
    await sleep_until(past)  # a deadline gone by: it returns at the next pass of the loop
    assert loop.time() - deadline < 1.0


async def test_sleepers_for_one_deadline_wake_in_the_same_pass_of_the_loop() -> None:
    """What puts polls of one interval, commits and paho's housekeeping in one wake-up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    woke: list[int] = []
    passes = 0

    def count_passes() -> None:  # a callback re-armed at every pass: counts them
        nonlocal passes
        passes += 1
        if len(woke) < 3:
            loop.call_soon(count_passes)

    async def sleeper() -> None:
        await sleep_until(deadline)
        woke.append(passes)

    loop.call_soon(count_passes)
    await asyncio.gather(*(sleeper() for _ in range(3)))
    assert len(set(woke)) == 1, woke


def _timers(loop: asyncio.AbstractEventLoop) -> int:
    """Live timers in the event loop's heap (asyncio internals: ``_scheduled``)."""
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


async def test_many_sleepers_for_one_grid_point_share_one_timer_and_all_wake_in_one_pass() -> None:
    """The device tasks of one interval: a thousand sleepers, one timer; points of the grid reached
    by different sums of a 0.1 s interval (unequal in the float's last bits) count as one."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    start = math.floor(loop.time() / 0.1 + 1) * 0.1 + 1.0  # far enough for 1,000 tasks to start on a loaded machine
    grid = [start, (start - 0.3) + 0.1 + 0.1 + 0.1, (start - 0.7) + 0.7]
    assert len(set(grid)) > 1  # the float sums differ: they must still share
    before = _timers(loop)
    woke: list[float] = []

    async def sleeper(at: float) -> None:
        await deadlines.sleep_until(at)
        woke.append(loop.time())

    tasks = [asyncio.create_task(sleeper(grid[i % 3])) for i in range(1000)]
    await asyncio.sleep(0)
    assert deadlines.waiting() == 1
    assert _timers(loop) - before == 1
    await asyncio.gather(*tasks)
    assert len(woke) == 1000 and min(woke) >= min(grid)
    assert deadlines.waiting() == 0


async def test_a_cancelled_sleeper_leaves_the_others_asleep_until_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    deadline = loop.time() + 0.1
    woke: list[str] = []

    async def sleeper(name: str) -> None:
        await deadlines.sleep_until(deadline)
        woke.append(name)

    first, second = asyncio.create_task(sleeper("first")), asyncio.create_task(sleeper("second"))
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert woke == [] and not second.done()  # the shared timer was not cancelled with it
    await second
    assert woke == ["second"] and loop.time() >= deadline


async def test_different_deadlines_keep_their_own_timers_and_order() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    now = loop.time()
    woke: list[int] = []

    async def sleeper(k: int) -> None:
        await deadlines.sleep_until(now + 0.3 * (3 - k))
        woke.append(k)

    await asyncio.gather(*(sleeper(k) for k in range(3)))
    assert woke == [2, 1, 0]
    await deadlines.sleep_until(now - 1.0)  # a deadline gone by returns at the next pass, no timer
    assert deadlines.waiting() == 0


def test_a_deadline_left_pending_by_a_closed_loop_does_not_hold_up_the_next_loop() -> None:
    """A scheduler outliving its event loop (a loop closed mid-sleep): the next loop's sleepers for the
    same instant get a timer of their own instead of joining one that will never fire."""
    deadlines = Deadlines()
    at = time.monotonic() + 1.5  # the event loop's clock is the monotonic clock; far enough for a loaded machine

    async def leave_a_sleeper() -> None:
        asyncio.get_running_loop().create_task(deadlines.sleep_until(at))
        await asyncio.sleep(0)  # asyncio.run cancels it at the end; its timer never fires

    asyncio.run(leave_a_sleeper())
    assert deadlines.waiting() == 1

    async def sleep_to_it() -> float:
        await asyncio.wait_for(deadlines.sleep_until(at), 5.0)
        return asyncio.get_running_loop().time()

    assert asyncio.run(sleep_to_it()) >= at
