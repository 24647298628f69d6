"""One device's poll loop: deadline scheduling on the monotonic clock, backoff, health, the guard, restart.

A DeviceTask polls one driver on the grid of its interval, hands each poll on as a Batch and keeps
the device's health for the status. It takes its bus turn through the lock the scheduler
(gateway.poll.scheduler) gives it; the scheduler owns the tasks, the bus locks and the polls left
behind because they ignored cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.settings import DeviceSpec
from gateway.driver import DeviceInfo, Driver, DriverError, SharedPool
from gateway.model import Batch, PointSet, PollResult
from gateway.poll.report import ReportFilter
from gateway.timers import Deadlines, SharedTimeout

log = logging.getLogger("gateway.poll.scheduler")  # one log name for the scheduler and its device tasks

MAX_BACKOFF = 60.0  # seconds between attempts at a dead device, at most
POLL_GUARD = 30.0  # a poll still running after interval + this is abandoned as hung
CANCEL_GRACE = 1.0  # a poll still running this long after its cancel ignores cancellation: stuck
STUCK_REASON = "poll hung and ignored cancellation; device stuck"


@dataclass(slots=True)
class DeviceHealth:
    """What the status reports of one device."""

    state: str = "starting"  # starting | ok | error
    last_error: str | None = None
    last_read_ts: int | None = None
    polls: int = 0
    errors: int = 0
    overruns: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "last_error": self.last_error,
            "last_read_ts": self.last_read_ts,
            "polls": self.polls,
            "errors": self.errors,
            "overruns": self.overruns,
        }


def next_deadline(deadline: float, interval: float, now: float) -> tuple[float, int]:
    """Advance ``deadline`` by one interval; if that is already past, skip the missed slots.

    Returns the new deadline and how many polls were skipped (overruns). Polls never queue up
    behind a slow one, and the grid stays anchored to the start (no drift).
    """
    deadline += interval
    if now <= deadline:
        return deadline, 0
    missed = math.floor((now - deadline) / interval) + 1
    return deadline + missed * interval, missed


def aligned(t: float, interval: float) -> float:
    """The point of the ``interval`` grid (multiples of it on the monotonic clock) nearest to ``t``."""
    return math.floor(t / interval + 0.5) * interval


def backoff_delay(interval: float, failures: int, cap: float = MAX_BACKOFF) -> float:
    """Delay before the next attempt at a failing device: the interval, doubling, capped."""
    return min(max(cap, interval), interval * (2 ** min(failures - 1, 30)))


class DeviceTask:
    """Polls one device forever, hands each poll to ``sink`` as a Batch, tracks health.

    Nothing ends the loop silently: a failure past the driver (stamping, the report filter, the
    sink) is a device error like a failed poll, and a loop that dies anyway is reported and started
    again after the usual backoff. A poll that ignores the guard's cancel is left behind: it gives
    its bus turn up and the device is reported stuck until that poll ends.
    """

    def __init__(
        self,
        spec: DeviceSpec,
        driver_cls: type[Driver],
        *,
        sink: Callable[[Batch], None],
        on_change: Callable[[], None],
        bus_lock: asyncio.Lock | None = None,
        shared: SharedPool | None = None,
        data_dir: Path | None = None,
        congested: Callable[[], bool] | None = None,
        relief: Callable[[], Awaitable[None]] | None = None,
        stamp: Callable[[], tuple[int, str] | None] | None = None,
        left_behind: set[asyncio.Task[None]] | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        """``left_behind``: where polls that ignored the stop's cancel stay referenced until they end.

        The event loop holds tasks only weakly, and one blocked on a future nobody else holds would
        be collected mid-await: give a set that outlives this task, as the scheduler does.
        ``deadlines``: the timers shared with the other devices (one per grid point), as the scheduler gives.
        """
        self._sleep_until = (deadlines or Deadlines()).sleep_until
        self.spec = spec
        self._left_behind: set[asyncio.Task[None]] = set() if left_behind is None else left_behind
        self._relief = relief
        self._stamp = stamp or (lambda: None)
        self.health = DeviceHealth()
        info = DeviceInfo(name=spec.name, interval=spec.interval, shared=shared or SharedPool(), data_dir=data_dir)
        self.driver: Driver = driver_cls(spec.options, info)
        self._filter = _report_filter(spec, self.driver.points)
        self._congested = congested or (lambda: False)
        self._sink = sink
        self._on_change = on_change
        self.bus_lock = bus_lock
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._stopping = False
        self._deaths = 0  # the loop's deaths since its last good poll: the restart's backoff
        self._restart: asyncio.TimerHandle | None = None
        self._logged_fault: str | None = None  # the fault last logged, so a repeat is only counted
        self._holding: asyncio.Lock | None = None  # the bus lock while this device's poll has its turn
        self._poll_no = 0
        self._in_poll = 0  # the number of the poll running now, 0 between polls
        self._stuck = False  # a poll ignored the guard's cancel and still runs
        # a poll this long has hung
        self._guard = SharedTimeout(spec.interval + POLL_GUARD, on_expire=self._guard_fired)

    @property
    def bus(self) -> str | None:
        return self.driver.bus

    def start(self) -> None:
        if self._task is None:
            self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        if self._stopping:
            return
        self._task = asyncio.create_task(self._run(), name=f"poll:{self.spec.name}")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Cancel the poll loop and close the driver; a poll that ignores the cancel is left behind."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        task, self._task = self._task, None
        abandoned = False
        if task is not None:
            task.cancel()
            abandoned = not await self._ends_within(task)
            if abandoned:
                log.error("device %s: a poll ignored cancellation; left behind at stop", self.spec.name)
                self._release_bus()  # the stuck poll never gets to
            elif not task.cancelled() and task.exception() is not None:  # reported when it died
                log.debug("device %s: poll loop had died: %r", self.spec.name, task.exception())
        self._guard.close()
        if abandoned:  # closing may be what unblocks the stuck poll, but must not hang the stop either
            await self._ends_within(asyncio.create_task(self._close()))
        else:
            await self._close()

    @property
    def alive(self) -> bool:
        """True while the poll loop runs (used by the watchdog); False from its death to its restart."""
        return self._task is not None and not self._task.done()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The loop ended without a stop: report it (status, one log line) and restart it after a backoff."""
        if self._stopping or task is not self._task:
            return
        exc = None if task.cancelled() else task.exception()
        reason = "poll loop ended: " + ("cancelled" if task.cancelled() else _describe(exc) if exc else "returned")
        self._deaths += 1
        delay = backoff_delay(self.spec.interval, self._deaths)
        self._restart = asyncio.get_running_loop().call_later(delay, self._spawn)
        self._fault(reason, f"; restarting it in {delay:.3g} s", exc)

    async def _run(self) -> None:
        interval = self.spec.interval
        failures = 0
        # The first poll is now; the next ones on the interval's grid of the monotonic clock, so
        # devices with the same interval poll in one wake-up of the event loop (the nearest grid
        # point stands for this first poll).
        deadline = aligned(time.monotonic(), interval)
        while True:
            if self._congested():  # the pipeline is past its capacity: skip this poll, count it
                self.health.overruns += 1
                if self._relief is not None:  # wait for the pipeline to move, not every interval
                    await self._relief()
                deadline, missed = next_deadline(deadline, interval, time.monotonic())
                self.health.overruns += missed
                await self._sleep_until(deadline)
                continue
            ok = await self._poll_once()
            now = time.monotonic()
            if ok:
                if failures:  # back from a backoff: onto the grid again
                    deadline = aligned(deadline, interval)
                failures = 0
                deadline, missed = next_deadline(deadline, interval, now)
                self.health.overruns += missed
            else:
                failures += 1
                deadline = now + backoff_delay(interval, failures)
            await self._sleep_until(deadline)

    async def _poll_once(self) -> bool:
        try:
            result = await self._locked_poll()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any driver failure is a device failure, never a dead loop
            if self._stopping:  # the poll swallowed the stop's cancel: end as stopped
                raise asyncio.CancelledError from exc
            self._unstick()
            await self._failed(exc)
            return False
        if self._stopping:
            raise asyncio.CancelledError
        if self._stuck:  # given up on: its answer is too late to stamp as a reading
            self._unstick()
            return False
        try:
            self._deliver(result)
        except Exception as exc:  # a bug past the driver: counted and reported, polling goes on
            self._fault(f"handling the poll failed: {_describe(exc)}", "", exc)
            return False
        if self.health.state != "ok":
            if self.health.state == "error":
                log.warning("device %s is back", self.spec.name)
            self.health.state = "ok"
            self.health.last_error = None
            self._deaths = 0
            self._logged_fault = None
            self._on_change()
        return True

    def _deliver(self, result: PollResult) -> None:
        """Stamp one poll, filter it (report by exception) and hand it to the sink."""
        ts = int(time.time() * 1000)
        self.health.polls += 1
        self.health.last_read_ts = ts
        points = result.points or self.driver.points
        if self._filter is None:
            self._sink(Batch(self.spec.name, ts, points, result.values, result.errors, self._stamp()))
        elif picked := self._filter.apply(points, result.values, result.errors, time.monotonic()):
            self._sink(Batch(self.spec.name, ts, *picked, self._stamp()))

    async def _locked_poll(self) -> PollResult:
        """The guarded poll, in this device's turn on its bus (a stuck poll gives its turn up)."""
        lock = self.bus_lock
        if lock is not None:
            await lock.acquire()
            self._holding = lock
        self._poll_no += 1
        self._in_poll = self._poll_no
        try:
            return await self._guarded_poll()
        finally:
            self._in_poll = 0
            self._release_bus()

    def _release_bus(self) -> None:
        lock, self._holding = self._holding, None
        if lock is not None:
            lock.release()

    async def _guarded_poll(self) -> PollResult:
        """Open (once) and poll the driver; TimeoutError when the poll outlives interval + POLL_GUARD.

        The guard is one timer for all the polls of the device (gateway.timers): a per-poll
        asyncio.timeout would leave a cancelled timer in the event loop's heap for the 30 s of the
        guard, ten times a second at a 100 ms interval.
        """
        async with self._guard:
            if not self._opened:
                await self.driver.open()
                self._opened = True
            return await self.driver.poll()

    def _guard_fired(self, task: asyncio.Task[object]) -> None:
        """The guard cancelled the running poll: look again once the poll had time to end."""
        asyncio.get_running_loop().call_later(CANCEL_GRACE, self._check_stuck, self._in_poll)

    def _check_stuck(self, poll_no: int) -> None:
        """The poll the guard cancelled still runs: it ignores cancellation. Free the bus, report it."""
        if self._stopping or not poll_no or self._in_poll != poll_no:
            return
        self._stuck = True
        self._release_bus()  # the other devices on the bus go on; this one waits for its poll to end
        self._fault(STUCK_REASON, "; its bus is freed for the others", None)

    def _unstick(self) -> None:
        if self._stuck:
            self._stuck = False
            log.warning("device %s: the stuck poll has ended; polling resumes", self.spec.name)

    def _fault(self, reason: str, detail: str, exc: BaseException | None) -> None:
        """Report the device in error for a fault of the gateway's own (not the device's answer).

        Logged once (with the traceback, if any), counted every time.
        """
        self.health.errors += 1
        if reason != self._logged_fault:
            self._logged_fault = reason
            log.error("device %s: %s%s", self.spec.name, reason, detail, exc_info=exc)
        if self._set_error(reason):
            self._on_change()

    async def _failed(self, exc: BaseException) -> None:
        reason = _describe(exc)
        self.health.errors += 1
        if self.health.state != "error":
            log.warning("device %s lost: %s", self.spec.name, reason)
        changed = self._set_error(reason)
        await self._close()
        if changed:
            self._on_change()

    def _set_error(self, reason: str) -> bool:
        """Put the device in error for ``reason``; True if that changed its state or reason."""
        changed = self.health.state != "error" or self.health.last_error != reason
        self.health.state = "error"
        self.health.last_error = reason
        return changed

    async def _ends_within(self, task: asyncio.Task[None]) -> bool:
        """Wait up to CANCEL_GRACE for ``task``; one that does not end is kept in ``left_behind``."""
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
        if task.done():
            return True
        self._left_behind.add(task)
        task.add_done_callback(self._left_behind.discard)
        return False

    async def _close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        try:
            await self.driver.close()
        except Exception as exc:
            log.debug("device %s: close failed: %s", self.spec.name, exc)


def _report_filter(spec: DeviceSpec, points: PointSet) -> ReportFilter | None:
    if not spec.reports_by_exception:
        return None
    band = spec.deadband
    bands = band if isinstance(band, dict) else dict.fromkeys(points.names, band or 0.0)
    return ReportFilter(points, deadband=bands, heartbeat=spec.heartbeat)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DriverError):
        return str(exc) or "no response"
    if isinstance(exc, TimeoutError):
        return "poll hung and was abandoned"
    return f"{type(exc).__name__}: {exc}"
