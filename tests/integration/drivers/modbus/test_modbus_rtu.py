"""The modbus driver on a shared serial line: a socat pty pair and a pymodbus serial server.

Several units answer on one line (one ModbusSerialServer, several unit ids); their drivers share
one connection through a SharedPool, as the daemon's devices do.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo, DriverError, SharedPool
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus, encode_registers
from tests.support.pool import in_use
from tests.support.serial_pty import SerialPty

pytestmark = pytest.mark.integration

TIMEOUT = 0.2
UNITS = (1, 2, 3)

MakeDriver = Callable[..., Awaitable[ModbusDriver]]


@pytest.fixture
async def bus(pty: SerialPty, start_modbus: StartModbus) -> ModbusTestServer:
    return await start_modbus(units=UNITS, transport="rtu", serial_port=str(pty.a),
                              holding=[(0, 100), (200, 10), (220, 10)])


@pytest.fixture
async def pool() -> AsyncIterator[SharedPool]:
    shared = SharedPool()
    yield shared


@pytest.fixture
async def make_driver(pty: SerialPty, pool: SharedPool) -> AsyncIterator[MakeDriver]:
    drivers: list[ModbusDriver] = []

    async def make(unit: int, points: list[dict[str, Any]], *, transport: str = "rtu", **options: Any) -> ModbusDriver:
        connection = {"transport": transport, "serial_port": str(pty.b), "unit_id": unit, "timeout": TIMEOUT,
                      **options.pop("connection", {})}
        config = ModbusConfig.model_validate({"connection": connection, "points": points, **options})
        driver = ModbusDriver(config, DeviceInfo(name=f"unit-{unit}", interval=1.0, shared=pool))
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()
    assert not any(in_use(pool, d.bus or "") for d in drivers), "a driver kept its share of the line"


async def test_units_share_one_connection(bus: ModbusTestServer, make_driver: MakeDriver, pool: SharedPool,
                                          pty: SerialPty) -> None:
    for unit in UNITS:
        await bus.set_registers("holding", 10, [*encode_registers(unit * 1.5, "float32", "CDAB"), unit],
                                unit=unit)
    points = [{"name": "f", "address": 10, "type": "float32", "byte_order": "CDAB"}, {"name": "n", "address": 12}]
    drivers = [await make_driver(unit, points) for unit in UNITS]
    results = [await d.poll() for d in drivers]

    assert [r.values for r in results] == [[1.5, 1], [3.0, 2], [4.5, 3]]
    assert {d.bus for d in drivers} == {f"serial:{pty.b}"}
    assert bus.requests == [Request(3, 10, 3, unit) for unit in UNITS]
    for driver in drivers:  # three shares of the one connection: the line is in use until the last leaves
        assert in_use(pool, f"serial:{pty.b}")
        await driver.close()
    assert not in_use(pool, f"serial:{pty.b}")


async def test_coalescing_over_rtu(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    points = [{"name": f"p{a}", "address": a} for a in (0, 5, 30, 60, 61)]
    spread = await make_driver(1, points)
    wide = await make_driver(2, points, max_gap=30)

    await spread.poll()
    await wide.poll()
    await wide.poll()

    assert bus.requests_of(1) == [Request(3, 0, 6, 1), Request(3, 30, 1, 1), Request(3, 60, 2, 1)]
    assert bus.requests_of(2) == [Request(3, 0, 62, 2)] * 2
    assert (wide.counters["polls"], wide.counters["requests"]) == (2, 2)


async def test_hole_in_the_map_over_rtu(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    await bus.set_registers("holding", 205, [11], unit=3)
    await bus.set_registers("holding", 225, [22], unit=3)
    driver = await make_driver(3, [{"name": "before", "address": 205}, {"name": "in_hole", "address": 212},
                                   {"name": "after", "address": 225}])
    first, second = await driver.poll(), await driver.poll()

    hole = "exception 2 (illegal data address)"
    assert first.values == second.values == [11, None, 22]
    assert first.errors == second.errors == {1: hole}
    assert bus.requests[0] == Request(3, 205, 21, 3)
    assert len(bus.requests) == 1 + 3 + 3
    assert driver.counters["exceptions"] == 1 + 1 + 1


async def test_dead_unit_costs_one_short_timeout(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    live = await make_driver(1, [{"name": "v", "address": 0}])
    dead = await make_driver(2, [{"name": "v", "address": 0}, {"name": "w", "address": 50}])
    bus.mute(unit=2)

    started = time.monotonic()
    with pytest.raises(DriverError, match=r"no response from unit 2 on .*ttyB \(timeout 0\.2s\)"):
        await dead.poll()
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 0.3  # one request, no retries
    assert len(bus.requests_of(2)) == 1
    assert dead.counters["timeouts"] == 1

    assert (await live.poll()).values == [0]  # the line is free again at once
    bus.mute(False, unit=2)
    assert (await dead.poll()).values == [0, 0]


async def test_each_unit_keeps_its_own_timeout_on_a_shared_line(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    quick = await make_driver(1, [{"name": "v", "address": 0}], connection={"timeout": "100ms"})
    patient = await make_driver(2, [{"name": "v", "address": 0}], connection={"timeout": "400ms"})
    bus.mute()
    for driver, timeout in ((quick, 0.1), (patient, 0.4), (quick, 0.1)):
        started = time.monotonic()
        with pytest.raises(DriverError, match=rf"\(timeout {timeout}s\)"):
            await driver.poll()
        elapsed = time.monotonic() - started
        assert timeout * 0.9 <= elapsed < timeout + 0.15
        assert driver.counters["last_poll_seconds"] == pytest.approx(elapsed, abs=0.02)
    assert (quick.counters["polls"], quick.counters["timeouts"]) == (2, 2)


async def test_bad_crc_is_counted_apart_from_timeouts(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    driver = await make_driver(1, [{"name": "v", "address": 0}])
    await bus.set_registers("holding", 0, [7], unit=1)
    bus.corrupt(1)

    with pytest.raises(DriverError, match=r"bad answer from unit 1 on .*\(CRC error"):
        await driver.poll()
    assert (await driver.poll()).values == [7]
    assert driver.counters["crc_errors"] == 1
    assert driver.counters["timeouts"] == 0


async def test_frame_gap_spaces_requests(bus: ModbusTestServer, make_driver: MakeDriver) -> None:
    gap = 0.05
    a = await make_driver(1, [{"name": "v", "address": 0}], connection={"frame_gap": "50ms"})
    b = await make_driver(2, [{"name": "v", "address": 0}], connection={"frame_gap": "50ms"})
    await a.poll()  # the first frame on a fresh line needs no gap
    started = time.monotonic()
    for driver in (b, a, b):
        await driver.poll()
    assert time.monotonic() - started >= 3 * gap * 0.95


async def test_port_vanishes_and_comes_back(bus: ModbusTestServer, make_driver: MakeDriver, pty: SerialPty,
                                            pool: SharedPool) -> None:
    first = await make_driver(1, [{"name": "v", "address": 0}])
    second = await make_driver(2, [{"name": "v", "address": 0}])
    await bus.set_registers("holding", 0, [5], unit=1)
    assert (await first.poll()).values == [5]
    await second.open()

    await bus.stop()
    pty.stop()  # the adapter is unplugged: the port disappears
    for driver in (first, second, first):
        started = time.monotonic()
        with pytest.raises(DriverError, match=rf"serial port {pty.b} is gone"):
            await driver.poll()
        assert time.monotonic() - started < TIMEOUT  # no waiting on a port that is not there
    assert first.counters["disconnects"] == 2

    pty.start()  # plugged back in: same name, a new device node
    await bus.start()
    assert (await first.poll()).values == [5]
    assert (await second.poll()).values == [0]
    for driver in (first, second):  # both kept their share through the port's absence
        assert in_use(pool, f"serial:{pty.b}")
        await driver.close()
    assert not in_use(pool, f"serial:{pty.b}")


async def test_missing_port_is_named(make_driver: MakeDriver, tmp_path: Path) -> None:
    driver = await make_driver(1, [{"name": "v", "address": 0}],
                               connection={"serial_port": str(tmp_path / "ttyUSB9")})
    with pytest.raises(DriverError, match=r"serial port .*ttyUSB9 does not exist"):
        await driver.open()


async def test_ascii_transport(pty: SerialPty, make_driver: MakeDriver) -> None:
    server = ModbusTestServer(units=(4,), transport="ascii", serial_port=str(pty.a))
    await server.start()
    try:
        await server.set_registers("input", 3, encode_registers(-2.25, "float32", "ABCD"), unit=4)
        driver = await make_driver(4, [{"name": "t", "table": "input", "address": 3, "type": "float32"}],
                                   transport="ascii")  # a pty takes 8N1 only
        assert (await driver.poll()).values == [-2.25]
        server.corrupt(1)
        with pytest.raises(DriverError, match=r"\(LRC error"):
            await driver.poll()
        assert driver.counters["crc_errors"] == 1
        assert (await driver.poll()).values == [-2.25]
    finally:
        await server.stop()


async def test_rtu_over_tcp_shares_one_connection(pool: SharedPool) -> None:
    server = ModbusTestServer(units=(1, 2), transport="rtu-over-tcp")
    await server.start()
    drivers: list[ModbusDriver] = []
    try:
        for unit in (1, 2):
            await server.set_registers("holding", 0, [unit * 10, unit * 10 + 1], unit=unit)
            config = ModbusConfig.model_validate({
                "connection": {"transport": "rtu-over-tcp", "host": "127.0.0.1", "port": server.port,
                               "unit_id": unit, "timeout": TIMEOUT},
                "points": [{"name": "a", "address": 0}, {"name": "b", "address": 1}],
            })
            drivers.append(ModbusDriver(config, DeviceInfo(name=f"u{unit}", interval=1.0, shared=pool)))
        assert [(await d.poll()).values for d in drivers] == [[10, 11], [20, 21]]
        assert drivers[0].bus == drivers[1].bus == f"rtu-over-tcp:127.0.0.1:{server.port}"
        assert server.requests == [Request(3, 0, 2, 1), Request(3, 0, 2, 2)]
        for driver in drivers:  # two shares of the one connection
            assert in_use(pool, drivers[0].bus)
            await driver.close()
        assert not in_use(pool, drivers[0].bus)
    finally:
        for driver in drivers:
            await driver.close()
        await server.stop()
