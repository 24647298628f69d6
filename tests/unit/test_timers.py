"""gateway.timers: sleep_until, and SharedTimeout (asyncio.timeout for many blocks of one limit, one timer)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.timers import SharedTimeout, sleep_until


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
