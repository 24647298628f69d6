"""The one way tests wait: check a condition until it holds, and fail after a deadline.

Nothing in the tests sleeps a guessed time. ``wait_until`` blocks (plain tests, helper threads);
``wait_until_async`` is the same for asyncio tests and keeps the event loop running between
checks. Both return what the predicate returned (its first true value), so a wait can hand on
what it found. ``what`` names the condition in the failure; a callable ``what`` is called only
then, for details worth computing once (the last status, a log).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Describe = str | Callable[[], str]


class _Deadline:
    """Judges each check: True once the condition holds, AssertionError once the time is up."""

    def __init__(self, timeout: float, what: Describe) -> None:
        self.timeout = timeout
        self.what = what
        self.end = time.monotonic() + timeout

    def met(self, result: object) -> bool:
        if result:
            return True
        if time.monotonic() > self.end:
            what = self.what() if callable(self.what) else self.what
            raise AssertionError(f"timed out after {self.timeout} s waiting for {what}")
        return False


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: Describe = "the condition", *,
               every: float = 0.05) -> T:
    """Call ``predicate`` every ``every`` s until it returns something true, and return that;
    AssertionError naming ``what`` after ``timeout`` s. An exception of ``predicate`` propagates
    (raise one to give up early, e.g. when the process waited for has died)."""
    deadline = _Deadline(timeout, what)
    while not deadline.met(result := predicate()):
        time.sleep(every)
    return result


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], timeout: float = 5.0,
                           what: Describe = "the condition", *, every: float = 0.01) -> T:
    """``wait_until`` for asyncio tests: the event loop runs between checks, and ``predicate``
    may be a coroutine function (each check is then awaited)."""
    deadline = _Deadline(timeout, what)
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if deadline.met(result):
            return result  # type: ignore[return-value]
        await asyncio.sleep(every)
