"""A dead unit on a shared RS-485 line, under the real Scheduler: the others keep their rate."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.config.settings import DeviceSpec
from gateway.model import Batch
from gateway.poll.scheduler import Scheduler
from tests.support.modbus_server import ModbusTestServer, StartModbus
from tests.support.pool import in_use
from tests.support.serial_pty import SerialPty
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration

INTERVAL = 0.1
TIMEOUT = 0.05
UNITS = (1, 2, 3)


@pytest.fixture
async def bus(pty: SerialPty, start_modbus: StartModbus) -> ModbusTestServer:
    return await start_modbus(units=UNITS, transport="rtu", serial_port=str(pty.a))


def spec(unit: int, port: Path) -> DeviceSpec:
    config = ModbusConfig.model_validate({
        "connection": {"transport": "rtu", "serial_port": str(port), "unit_id": unit, "timeout": TIMEOUT},
        "points": [{"name": "v", "address": 0}, {"name": "w", "address": 1}],
    })
    return DeviceSpec(name=f"unit-{unit}", driver="modbus", interval=INTERVAL, enabled=True, options=config)


def rate(stamps: list[float], skip: int = 3) -> float:
    """Polls per second over the stamps after the first ``skip``."""
    steady = stamps[skip:]
    return (len(steady) - 1) / (steady[-1] - steady[0])


def attempts_allowed(elapsed: float) -> int:
    """The most attempts at a dead unit the doubling backoff lets start within ``elapsed`` seconds:
    the first at once, the (n+1)th only after the n delays INTERVAL * 1, 2, 4, ... have passed."""
    attempts, waited = 1, INTERVAL
    while waited <= elapsed:
        waited += INTERVAL * 2**attempts
        attempts += 1
    return attempts


@pytest.mark.serial_only  # measures poll rates: tests beside it on two cores slow the loop down
async def test_dead_unit_is_backed_off_while_the_others_keep_their_rate(bus: ModbusTestServer, pty: SerialPty) -> None:
    arrivals: dict[str, list[float]] = defaultdict(list)

    def sink(batch: Batch) -> None:
        arrivals[batch.device].append(time.monotonic())

    for unit in UNITS:
        await bus.set_registers("holding", 0, [unit, unit * 100], unit=unit)
    bus.mute(unit=2)
    scheduler = Scheduler(sink=sink, on_change=lambda: None)
    started = time.monotonic()
    try:
        for unit in UNITS:
            scheduler.add(spec(unit, pty.b), ModbusDriver)
        live = ("unit-1", "unit-3")
        await wait_until_async(lambda: all(len(arrivals[n]) >= 30 for n in live), 10.0, "30 polls of each live unit")

        for name in live:
            assert rate(arrivals[name]) >= 0.75 / INTERVAL, f"{name} slowed down by the dead unit"
        dead = scheduler.tasks["unit-2"]
        counters = dead.driver.counters  # type: ignore[attr-defined]
        # An attempt may be on the line right now (its request already seen by the server, its
        # timeout not yet counted by the driver): compare once every attempt started has ended.
        await wait_until_async(lambda: len(bus.requests_of(2)) == counters["timeouts"] == counters["polls"], 5.0,
                               "one request per attempt at the dead unit, each ended by its timeout")
        attempts = counters["polls"]
        # Doubling backoff (0.1, 0.2, 0.4, 0.8, 1.6 s...): a handful of tries in the ~3 s (more on a
        # slow machine) the live units took, never more than the backoff let start meanwhile.
        assert 2 <= attempts <= attempts_allowed(time.monotonic() - started)
        assert dead.health.state == "error"
        assert dead.health.last_error == f"no response from unit 2 on {pty.b} (timeout {TIMEOUT}s)"
        assert not arrivals["unit-2"]

        bus.mute(False, unit=2)  # it answers again: back to its normal rate
        await wait_until_async(lambda: len(arrivals["unit-2"]) >= 10, 15.0, "unit 2 polling again")
        assert rate(arrivals["unit-2"]) >= 0.75 / INTERVAL
        assert dead.health.state == "ok"
    finally:
        await scheduler.stop_all()
    assert not in_use(scheduler.shared, f"serial:{pty.b}")


async def test_whole_bus_recovers_after_the_port_comes_back(bus: ModbusTestServer, pty: SerialPty) -> None:
    arrivals: dict[str, list[float]] = defaultdict(list)
    scheduler = Scheduler(sink=lambda b: arrivals[b.device].append(time.monotonic()), on_change=lambda: None)
    try:
        for unit in UNITS:
            scheduler.add(spec(unit, pty.b), ModbusDriver)
        names = [f"unit-{u}" for u in UNITS]
        await wait_until_async(lambda: all(arrivals[n] for n in names), 10.0, "a poll of every unit")

        await bus.stop()
        pty.stop()
        gone = f"serial port {pty.b} is gone"
        await wait_until_async(lambda: all(scheduler.tasks[n].health.last_error == gone for n in names), 10.0,
                               "every unit to report the port gone")

        pty.start()
        await bus.start()
        counts = {n: len(arrivals[n]) for n in names}
        await wait_until_async(lambda: all(len(arrivals[n]) > counts[n] for n in names), 15.0, "every unit back")
        assert all(scheduler.tasks[n].health.state == "ok" for n in names)
    finally:
        await scheduler.stop_all()
