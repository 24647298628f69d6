"""The systemd watchdog heartbeat, fed from the event loop only while the gateway is healthy.

With ``WatchdogSec=`` in the unit, systemd kills (SIGABRT) and restarts the service when no
``WATCHDOG=1`` arrives within the period. The heartbeat is a task on the event loop, sent every
half period, so each of these stops it and gets the gateway restarted:

* the event loop hangs (a blocking call, a busy loop): the task never runs;
* a device's poll task or the publisher task has died (a bug let an exception escape): the health
  check names it, one error line says so, and no more heartbeats are sent. (The scheduler restarts
  a dead poll task after its backoff and the heartbeat resumes then: only a loop dead for longer
  than ``WatchdogSec=`` gets the gateway restarted.)

A problem is re-checked every second (not every half period): one missed heartbeat already brings
systemd's deadline within half a period, so a passing state (a reload replacing the publisher) must
be over and the heartbeat resumed at once. It is logged only once it has lasted ``period / 4``.

An idle gateway (no broker, every device failing and backing off) is healthy: its tasks are alive
and its loop runs, so it keeps feeding the watchdog. A broken device is the scheduler's business
(backoff, status), not a reason to restart the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway.daemon.systemd import notify, watchdog_period

if TYPE_CHECKING:
    from gateway.poll.scheduler import Scheduler

log = logging.getLogger(__name__)

HealthCheck = Callable[[], str | None]
"""Returns None when all is well, else a short description of what is wrong."""


class Watchdog:
    """Sends ``WATCHDOG=1`` every ``period / 2`` seconds while ``check()`` returns None.

    ``period`` defaults to what systemd asked for (``WATCHDOG_USEC``); without it ``start()``
    does nothing. ``problem`` is what is wrong right now.
    """

    def __init__(self, check: HealthCheck, *, period: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.period = watchdog_period(environ) if period is None else period
        self.problem: str | None = None
        self._check = check
        self._environ = environ
        self._task: asyncio.Task[None] | None = None
        self._since = 0.0  # monotonic time the current problem was first seen
        self._reported = False  # the current problem has been logged

    @property
    def enabled(self) -> bool:
        """True when systemd expects a heartbeat from this process."""
        return bool(self.period)

    def start(self) -> None:
        """Start the heartbeat task (on the running loop); a no-op without a watchdog."""
        if self.enabled and self._task is None:
            log.debug("watchdog: heartbeat every %.3g s", self.period / 2)
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        """Stop the heartbeat (at shutdown: systemd stops watching once we said STOPPING=1)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        period = self.period or 0.0
        recheck = min(1.0, period / 8)
        while True:
            healthy = self.beat()
            await asyncio.sleep(period / 2 if healthy else recheck)

    def beat(self) -> bool:
        """Check health once; send a heartbeat if healthy. Returns whether the gateway is healthy."""
        try:
            problem = self._check()
        except Exception as exc:  # a broken check must stop the heartbeat, not the watchdog task
            problem = f"the health check failed: {type(exc).__name__}: {exc}"
        if problem is None:
            if self._reported:
                log.warning("watchdog: healthy again, heartbeat resumed")
                notify("STATUS=running", environ=self._environ)
            self.problem, self._reported = None, False
            notify("WATCHDOG=1", environ=self._environ)
            return True
        now = time.monotonic()
        if self.problem is None:
            self._since = now
        self.problem = problem
        if not self._reported and now - self._since >= (self.period or 0.0) / 4:
            log.error("watchdog: %s; heartbeat stopped, systemd will restart the gateway", problem)
            notify(f"STATUS=unhealthy: {problem}", environ=self._environ)
            self._reported = True
        return False


def gateway_problem(scheduler: Scheduler, publisher: asyncio.Task[None] | None) -> str | None:
    """The daemon's health check: every device poll task and the publisher task are running.

    ``publisher`` None means none is running yet (or one is being replaced): not a problem.
    The answer names what died and, when known, the exception that killed it.
    """
    if not scheduler.all_alive():
        dead = sorted(name for name, task in scheduler.tasks.items() if not task.alive)
        if len(dead) == 1:
            return f"the poll task of device {dead[0]} has died{_why(scheduler.tasks[dead[0]])}"
        return f"the poll tasks of devices {', '.join(dead)} have died"
    if publisher is not None and publisher.done():
        return f"the publisher task has ended{_why(publisher)}"
    return None


def _why(task: object) -> str:
    """': ExceptionType: message' for a task (or a DeviceTask's task) that ended by an exception."""
    task = getattr(task, "_task", task)
    if not isinstance(task, asyncio.Task) or not task.done():
        return ""
    if task.cancelled():
        return " (cancelled)"
    exc = task.exception()
    return f": {type(exc).__name__}: {exc}" if exc is not None else ""
