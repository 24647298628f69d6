"""The scheduler: owns the device tasks (gateway.poll.device), the bus locks, build/swap/remove.

Each device has its own task, started and stopped alone (a reload restarts only what changed).
Devices that share a physical bus (the driver's ``bus`` key) take turns through one lock per bus,
so one request is on the line at a time (the turn is ``gateway.driver.SharedPool``'s: see there).
Time belongs to the scheduler: drivers never sleep. The tasks sleep through one ``Deadlines``: the
devices of one interval, on its grid, wait for one timer per grid point, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.config.settings import DeviceSpec
from gateway.driver import Driver, SharedPool
from gateway.model import Batch
from gateway.poll.device import DeviceTask
from gateway.timers import Deadlines


class Scheduler:
    """Owns the device tasks; each can be started and stopped alone."""

    def __init__(
        self,
        *,
        sink: Callable[[Batch], None],
        on_change: Callable[[], None],
        data_dir: Path | None = None,
        congested: Callable[[], bool] | None = None,
        relief: Callable[[], Awaitable[None]] | None = None,
        stamp: Callable[[], tuple[int, str] | None] | None = None,
    ) -> None:
        self._sink = sink
        self._data_dir = data_dir
        self._congested = congested
        self._relief = relief
        self._stamp = stamp
        self._on_change = on_change
        self.tasks: dict[str, DeviceTask] = {}
        self.shared = SharedPool()
        self.deadlines = Deadlines()  # the device tasks' wake-ups: one timer per grid point
        # Polls that ignored a stop's cancel, referenced here until they end: their device task
        # may be dropped (a reload removed it) while they still run.
        self._left_behind: set[asyncio.Task[None]] = set()

    def add(self, spec: DeviceSpec, driver_cls: type[Driver]) -> DeviceTask:
        """Create and start the task of one device."""
        task = self.build(spec, driver_cls)
        self.tasks[spec.name] = task
        task.start()
        return task

    def build(self, spec: DeviceSpec, driver_cls: type[Driver]) -> DeviceTask:
        """The task of one device, not started: constructs the driver (which may raise).

        Nothing runs yet and nothing needs undoing if it is dropped: a driver opens its
        connection only when polled.
        """
        task = DeviceTask(
            spec, driver_cls, sink=self._sink, on_change=self._on_change, shared=self.shared,
            data_dir=self._data_dir, congested=self._congested, relief=self._relief, stamp=self._stamp,
            left_behind=self._left_behind, deadlines=self.deadlines,
        )
        if task.bus is not None:
            task.bus_lock = self.shared.turn(task.bus)
        return task

    async def swap(self, remove: list[str], start: list[DeviceTask]) -> None:
        """Stop the devices named in ``remove``, then start the tasks in ``start`` (from ``build``).

        The leaving tasks are out of ``tasks`` (status, watchdog) while they stop; a swap cut short
        (shutdown) puts them back, so ``stop_all`` finishes stopping them.
        """
        leaving = [self.tasks.pop(name) for name in remove if name in self.tasks]
        try:
            await asyncio.gather(*(task.stop() for task in leaving))
        except asyncio.CancelledError:
            for task in leaving:
                self.tasks.setdefault(task.spec.name, task)
            raise
        for task in start:
            self.tasks[task.spec.name] = task
            task.start()

    async def remove(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            await task.stop()

    async def stop_all(self) -> None:
        await asyncio.gather(*(t.stop() for t in self.tasks.values()))
        self.tasks.clear()

    def all_alive(self) -> bool:
        return all(task.alive for task in self.tasks.values())
