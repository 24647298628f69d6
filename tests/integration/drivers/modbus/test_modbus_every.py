"""Slow points (``every: N``): read on every Nth poll only, in their own coalesced plan."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(start_modbus: StartModbus) -> ModbusTestServer:
    return await start_modbus(holding=[(0, 100), (200, 10), (220, 10)])


def config(server: ModbusTestServer, points: list[dict[str, Any]], **device: Any) -> ModbusConfig:
    conn = {"host": "127.0.0.1", "port": server.port, "timeout": 0.3}
    return ModbusConfig(connection=conn, points=points, **device)


async def test_slow_point_is_read_every_third_poll(server: ModbusTestServer) -> None:
    await server.set_registers("holding", 0, [11])
    await server.set_registers("holding", 90, [99])
    driver = ModbusDriver(
        config(server, [{"name": "fast", "address": 0, "unit": "V"},
                        {"name": "slow", "address": 90, "every": 3, "unit": "kWh"}]),
        DeviceInfo(name="meter", interval=1.0),
    )
    await driver.open()
    try:
        server.clear_requests()
        results = [await driver.poll() for _ in range(6)]
    finally:
        await driver.close()

    # Polls 1 and 4 (the 1st and 4th) read everything and name no subset.
    for n in (0, 3):
        assert results[n].points is None
        assert results[n].values == [11, 99]
        assert results[n].errors is None
    for n in (1, 2, 4, 5):
        assert results[n].points is not None
        assert results[n].points.names == ("fast",)
        assert results[n].points.units == ("V",)
        assert results[n].values == [11]
        assert results[n].errors is None
    assert results[1].points is results[2].points  # the subset is built once
    # The slow register cost two requests in six polls; the fast one, six.
    assert server.requests.count(Request(3, 90, 1)) == 2
    assert server.requests.count(Request(3, 0, 1)) == 6
    assert len(server.requests) == 8


async def test_slow_points_coalesce_among_themselves(server: ModbusTestServer) -> None:
    await server.set_registers("holding", 0, [1, 2])
    await server.set_registers("holding", 50, [5, 6])
    driver = ModbusDriver(
        config(server, [{"name": "a", "address": 0}, {"name": "b", "address": 1, "every": 2},
                        {"name": "c", "address": 50, "every": 2}, {"name": "d", "address": 51}]),
        DeviceInfo(name="meter", interval=1.0),
    )
    await driver.open()
    try:
        server.clear_requests()
        full = await driver.poll()
        part = await driver.poll()
        report = await driver.inspect()  # the technician's read: every point, whatever its turn
    finally:
        await driver.close()
    assert full.points is None and full.values == [1, 2, 5, 6]
    assert part.points is not None and part.points.names == ("a", "d")
    assert part.values == [1, 6]
    assert [row["value"] for row in report["points"]] == [1, 2, 5, 6]
    assert server.requests == [
        Request(3, 0, 2), Request(3, 50, 2),  # full: a+b, c+d
        Request(3, 0, 1), Request(3, 51, 1),  # the fast points alone
        Request(3, 0, 2), Request(3, 50, 2),  # inspect
    ]


async def test_hole_split_is_remembered_per_plan(server: ModbusTestServer) -> None:
    await server.set_registers("holding", 205, [11])
    await server.set_registers("holding", 225, [22])
    driver = ModbusDriver(
        config(server, [{"name": "before", "address": 205}, {"name": "slow", "address": 208, "every": 2},
                        {"name": "after", "address": 225}], max_gap=20),
        DeviceInfo(name="meter", interval=1.0),
    )
    await driver.open()
    try:
        server.clear_requests()
        results = [await driver.poll() for _ in range(4)]
    finally:
        await driver.close()
    for n in (0, 2):
        assert results[n].points is None and results[n].values == [11, 0, 22] and results[n].errors is None
    for n in (1, 3):
        assert results[n].points is not None and results[n].points.names == ("before", "after")
        assert results[n].values == [11, 22] and results[n].errors is None
    assert server.requests == [
        Request(3, 205, 21), Request(3, 205, 1), Request(3, 208, 1), Request(3, 225, 1),  # full: split
        Request(3, 205, 21), Request(3, 205, 1), Request(3, 225, 1),  # fast-only plan: its own split
        Request(3, 205, 1), Request(3, 208, 1), Request(3, 225, 1),  # both remembered
        Request(3, 205, 1), Request(3, 225, 1),
    ]
    assert driver.counters["exceptions"] == 2  # each plan hit the hole once, no point failed


def test_every_must_be_at_least_one() -> None:
    conn = {"host": "127.0.0.1", "port": 502}
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModbusConfig(connection=conn, points=[{"name": "v", "address": 0, "every": 0}])
    with pytest.raises(ValidationError, match="at least one point every: 1"):
        ModbusConfig(connection=conn, points=[{"name": "v", "address": 0, "every": 2}])
    assert ModbusConfig(connection=conn, points=[{"name": "v", "address": 0}]).points[0].every == 1
