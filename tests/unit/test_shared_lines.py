"""A shared line has one owner (gateway.driver.SharedPool): its connection and its turns.

The scheduler's polls and the daemon's tool requests take the same turn, whatever the driver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.simulated.driver import SimulatedConfig
from gateway.config.settings import DeviceSpec
from gateway.daemon.tools import run_tool_command
from gateway.driver import DeviceInfo, Inspection, SharedPool
from gateway.model import PointSet, PollResult
from gateway.poll.scheduler import Scheduler

LINE = "serial:/dev/ttyLINE"


class _LineDriver:
    """A device on LINE that counts the reads a technician asks for."""

    Config = SimulatedConfig
    bus: str | None = LINE

    def __init__(self, config: object, device: DeviceInfo) -> None:
        self.points = PointSet(("x",), (None,))
        self.reads = 0

    async def open(self) -> None:
        return None

    async def poll(self) -> PollResult:
        return PollResult([1])

    async def inspect(self, *, points: Any = None, trace: bool = False) -> Inspection:
        self.reads += 1
        return Inspection(points=[], error=None, trace=[])

    async def close(self) -> None:
        return None


class _OwnLineDriver(_LineDriver):
    bus = None


def _spec(name: str) -> DeviceSpec:
    options = SimulatedConfig.model_validate({"points": [{"name": "x", "signal": "counter"}]})
    return DeviceSpec(name=name, driver="simulated", interval=1.0, enabled=True, options=options)


def test_a_line_has_one_turn_for_the_pools_life() -> None:
    pool = SharedPool()
    turn = pool.turn(LINE)
    assert pool.turn(LINE) is turn
    assert pool.turn("serial:/dev/ttyOTHER") is not turn
    pool.acquire(LINE, object)
    pool.release(LINE)  # the line's last user left: its connection goes, its turn stays
    assert pool.turn(LINE) is turn


def test_devices_on_one_line_poll_in_the_pools_turn() -> None:
    sched = Scheduler(sink=lambda batch: None, on_change=lambda: None)
    first = sched.build(_spec("first"), _LineDriver)  # type: ignore[arg-type]
    second = sched.build(_spec("second"), _LineDriver)  # type: ignore[arg-type]
    alone = sched.build(_spec("alone"), _OwnLineDriver)  # type: ignore[arg-type]
    assert first.bus_lock is second.bus_lock is sched.shared.turn(LINE)
    assert alone.bus_lock is None


async def test_a_tool_request_through_the_daemon_waits_for_the_lines_turn() -> None:
    sched = Scheduler(sink=lambda batch: None, on_change=lambda: None)
    task = sched.build(_spec("meter"), _LineDriver)  # type: ignore[arg-type]
    driver: Any = task.driver
    turn = sched.shared.turn(LINE)
    await turn.acquire()  # a neighbour's poll has the line
    request = asyncio.create_task(run_tool_command({"meter": task}, {"cmd": "read", "device": "meter"}))
    for _ in range(20):  # the request runs as far as it can without the line
        await asyncio.sleep(0)
    assert (request.done(), driver.reads) == (False, 0)
    turn.release()
    assert (await asyncio.wait_for(request, 5))["ok"]
    assert driver.reads == 1
