"""Timers of the event loop used on hot paths: ``sleep_until``, ``Deadlines`` and ``SharedTimeout``.

``sleep_until(deadline)``: a sleep due at exactly ``deadline`` of the loop's (monotonic) clock, so
tasks waiting for the same instant (polls on one grid, commits, paho's housekeeping on whole
seconds) are woken in one pass of the loop.

``Deadlines``: ``sleep_until`` for many tasks sleeping until the same instants (the device tasks of
one interval, on its grid): one timer per deadline, not one per task. Each asyncio timer is an object
in the event loop's heap, pushed and popped with Python-level comparisons (about 20 for 1,000
timers); with a thousand one-point devices that was a large share of a poll.

``SharedTimeout``: ``asyncio.timeout(limit)`` for many waits of one limit, with one timer. Each
``asyncio.timeout`` schedules a timer and cancels it when the block ends early, and a cancelled
timer stays in the event loop's heap until it would have fired. A wait that is nearly always short
but must have a long limit (a poll guarded for 30 s, done ten times a second; a PUBACK awaited for
10 s, per message) then fills the heap with hundreds of dead timers, and every timer the loop
schedules pays for them. Here the blocks sharing a limit share a single timer: it is set when none
is pending, and when it fires it cancels the blocks past their limit and is set again for the
oldest one still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType


async def sleep_until(deadline: float) -> None:
    """Sleep until the event loop's clock (the monotonic clock) reads ``deadline``.

    Unlike ``asyncio.sleep(deadline - now)`` the timer is due at exactly ``deadline``: tasks
    waiting for the same deadline are woken in one pass of the loop.
    """
    loop = asyncio.get_running_loop()
    if deadline <= loop.time():
        await asyncio.sleep(0)
        return
    woken = loop.create_future()
    handle = loop.call_at(deadline, _wake, woken)
    try:
        await woken
    finally:
        handle.cancel()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Deadlines:
    """``await deadlines.sleep_until(t)``: as ``sleep_until``, with one timer for all the tasks
    waiting for the same ``t`` (to the microsecond: a grid's points reached by different sums of
    its interval differ in the last bits of the float).

    Each waiter has its own future (cancelling one task cancels only its own wait); a cancelled
    waiter's future stays in the list until its deadline, which then skips it.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}  # by deadline in µs

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the event loop's clock reads ``deadline``."""
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            await asyncio.sleep(0)
            return
        key = round(deadline * 1e6)
        waiters = self._waiting.get(key)
        if waiters is None or waiters[0].get_loop() is not loop:  # (an entry left by a loop closed before it fired)
            waiters = self._waiting[key] = []
            loop.call_at(deadline, self._fire, key, waiters)
        woken = loop.create_future()
        waiters.append(woken)
        await woken

    def waiting(self) -> int:
        """Deadlines with a timer pending (each one timer, however many wait for it)."""
        return len(self._waiting)

    def _fire(self, key: int, waiters: list[asyncio.Future[None]]) -> None:
        if self._waiting.get(key) is waiters:
            del self._waiting[key]
        for woken in waiters:
            if not woken.done():
                woken.set_result(None)


class SharedTimeout:
    """``async with guard:`` raises TimeoutError when the block outlives ``limit`` seconds.

    As with ``asyncio.timeout``: the block's task is cancelled at the limit and the CancelledError
    becomes TimeoutError when the guard's cancel was the only one; a cancel from elsewhere (a stop)
    stays a CancelledError; a cancel the block swallowed is taken back. One block per task at a
    time. ``close()`` drops the pending timer. ``on_expire(task)``, if given, is called right after
    the guard cancelled a block's task (to follow up on a block that ignores the cancel).
    """

    __slots__ = ("_expired", "_on_expire", "_running", "_timer", "limit")

    def __init__(self, limit: float, on_expire: Callable[[asyncio.Task[object]], None] | None = None) -> None:
        self.limit = limit
        self._on_expire = on_expire
        self._running: dict[asyncio.Task[object], tuple[float, int]] = {}  # task: (start, cancelling), oldest first
        # Made at the first expiry: a device's guard rarely fires, and an empty set is 216 bytes.
        self._expired: set[asyncio.Task[object]] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("SharedTimeout must be used inside a task")
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._running[task] = (start, task.cancelling())
        if self._timer is None:
            self._timer = loop.call_at(start + self.limit, self._fire)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        _, cancelling = self._running.pop(task)
        if self._expired is not None and task in self._expired:
            self._expired.discard(task)
            if task.uncancel() <= cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def close(self) -> None:
        """Cancel the pending timer (a block entered later sets a new one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, (start, _) in self._running.items():
            if start + self.limit > now:  # the oldest block still within its limit
                self._timer = loop.call_at(start + self.limit, self._fire)
                return
            if self._expired is None:
                self._expired = set()
            if task not in self._expired:
                self._expired.add(task)
                task.cancel()
                if self._on_expire is not None:
                    self._on_expire(task)
