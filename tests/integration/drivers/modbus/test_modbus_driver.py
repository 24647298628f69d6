"""The modbus driver against a real pymodbus ModbusTcpServer on 127.0.0.1."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo, DriverError
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus, encode_registers

pytestmark = pytest.mark.integration

TIMEOUT = 0.3
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
SAMPLES = {
    "int16": -12345, "uint16": 54321, "int32": -123456789, "uint32": 0xDEADBEEF,
    "int64": -(2**60) + 7, "uint64": 0xFEDCBA9876543210, "float32": 123.456, "float64": -9.87654321e-200,
}
SIZE = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4}

MakeDriver = Callable[..., Awaitable[ModbusDriver]]


@pytest.fixture
async def server(start_modbus: StartModbus) -> ModbusTestServer:
    return await start_modbus(holding=[(0, 100), (200, 10), (220, 10)])


@pytest.fixture
async def make_driver(server: ModbusTestServer) -> AsyncIterator[MakeDriver]:
    drivers: list[ModbusDriver] = []

    async def make(points: list[dict[str, Any]], *, open_: bool = True, **device: Any) -> ModbusDriver:
        config = ModbusConfig(
            connection={"host": "127.0.0.1", "port": server.port, "timeout": TIMEOUT}, points=points, **device
        )
        driver = ModbusDriver(config, DeviceInfo(name="meter", interval=1.0))
        drivers.append(driver)
        if open_:
            await driver.open()
        return driver

    yield make
    for driver in drivers:
        await driver.close()


def float32(value: float) -> float:
    """``value`` rounded to what a float32 register pair holds."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


async def test_every_type_and_order_end_to_end(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    points, expected, address = [], [], 0
    for order in ORDERS:
        for type_, value in SAMPLES.items():
            await server.set_registers("holding", address, encode_registers(value, type_, order))
            points.append({"name": f"{type_}_{order}", "address": address, "type": type_, "byte_order": order})
            expected.append(float32(value) if type_ == "float32" else value)
            address += SIZE[type_]
    await server.set_registers("input", 10, [*encode_registers(-0.5, "float32", "CDAB"), 7])
    await server.set_bits("coil", 3, [True, False, True])
    await server.set_bits("discrete", 40, [True])
    points += [
        {"name": "in_f", "table": "input", "address": 10, "type": "float32", "byte_order": "CDAB"},
        {"name": "in_flag", "table": "input", "address": 12, "type": "bool"},
        {"name": "coil3", "table": "coil", "address": 3, "type": "bool"},
        {"name": "coil4", "table": "coil", "address": 4, "type": "bool"},
        {"name": "coil5", "table": "coil", "address": 5, "type": "bool"},
        {"name": "di40", "table": "discrete", "address": 40, "type": "bool"},
    ]
    expected += [-0.5, True, True, False, True, True]
    driver = await make_driver(points)
    server.clear_requests()

    result = await driver.poll()

    assert result.errors is None
    assert result.values == expected
    # One request per table: 80 holding registers in one read, the rest likewise coalesced.
    assert server.requests == [Request(3, 0, 80), Request(4, 10, 3), Request(1, 3, 3), Request(2, 40, 1)]


async def test_scale_offset_and_not_a_number(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    await server.set_registers("holding", 0, [1234, *encode_registers(math.nan, "float32", "ABCD")])
    await server.set_registers("holding", 3, encode_registers(math.inf, "float64", "DCBA"))
    driver = await make_driver([
        {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "offset": -100, "unit": "degC"},
        {"name": "nan", "address": 1, "type": "float32"},
        {"name": "inf", "address": 3, "type": "float64", "byte_order": "DCBA"},
    ])
    result = await driver.poll()
    assert result.values[0] == pytest.approx(23.4)
    assert result.values[1:] == [None, None]
    assert result.errors == {1: "not a number", 2: "not a number"}
    assert driver.points.units == ("degC", None, None)


async def test_coalescing_counted_at_the_server(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    points = [{"name": f"p{a}", "address": a} for a in (0, 5, 30, 60, 61)]
    spread = await make_driver(points)  # gaps 24 and 29 exceed max_gap 16: three reads
    wide = await make_driver(points, max_gap=30)  # one read
    server.clear_requests()

    await spread.poll()
    assert server.requests == [Request(3, 0, 6), Request(3, 30, 1), Request(3, 60, 2)]
    server.clear_requests()
    await wide.poll()
    await wide.poll()
    assert server.requests == [Request(3, 0, 62)] * 2
    counters = dict(wide.counters)
    assert 0 < counters.pop("last_poll_seconds") < 1
    assert counters == {"polls": 2, "requests": 2, "timeouts": 0, "crc_errors": 0, "exceptions": 0, "disconnects": 0}


async def test_hole_in_the_map_fails_only_its_points(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    # The server serves holding 200..209 and 220..229: 210..219 is a hole.
    await server.set_registers("holding", 205, [11])
    await server.set_registers("holding", 225, [22])
    driver = await make_driver([
        {"name": "before", "address": 205},
        {"name": "in_hole", "address": 212},
        {"name": "across_edge", "address": 209, "type": "uint32"},
        {"name": "after", "address": 225},
    ])
    server.clear_requests()

    first = await driver.poll()
    second = await driver.poll()

    hole = "exception 2 (illegal data address)"
    for result in (first, second):
        assert result.values == [11, None, None, 22]
        assert result.errors == {1: hole, 2: hole}
    # Poll 1: the coalesced read fails and is split; poll 2 reads point by point straight away.
    assert server.requests[0] == Request(3, 205, 21)
    assert len(server.requests) == 1 + 4 + 4
    assert len(driver.blocks) == 4
    assert driver.counters["exceptions"] == 1 + 2 + 2


async def test_stopped_server_fails_fast_and_revives(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    await server.set_registers("holding", 0, [42])
    driver = await make_driver([{"name": "v", "address": 0}])
    assert (await driver.poll()).values == [42]

    await server.stop()
    for _ in range(3):  # the first poll may find the dropped link; later ones are refused
        started = time.monotonic()
        with pytest.raises(DriverError) as caught:
            await driver.poll()
        assert time.monotonic() - started < TIMEOUT + 0.5
    assert f"cannot connect to 127.0.0.1:{server.port}" in str(caught.value)

    await server.start()  # same port, same values
    assert (await driver.poll()).values == [42]


async def test_silent_device_times_out_then_recovers(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    driver = await make_driver([{"name": "v", "address": 0}, {"name": "w", "address": 50}])
    await driver.poll()
    server.mute()

    started = time.monotonic()
    with pytest.raises(DriverError, match=rf"no response from unit 1 at 127\.0\.0\.1:{server.port} \(timeout 0\.3s\)"):
        await driver.poll()
    elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.5  # one timeout: no retries, no second block
    assert driver.counters["timeouts"] == 1

    server.mute(False)
    await server.set_registers("holding", 50, [9])
    assert (await driver.poll()).values == [0, 9]


async def test_open_against_nothing_raises(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    await server.stop()
    driver = await make_driver([{"name": "v", "address": 0}], open_=False)
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"cannot connect to 127\.0\.0\.1"):
        await driver.open()
    assert time.monotonic() - started < TIMEOUT + 0.5
    await server.start()
    await driver.open()
    assert (await driver.poll()).values == [0]


def test_importing_the_driver_does_not_import_pymodbus() -> None:
    code = "import sys, drivers.modbus.driver; print('pymodbus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_support_encoder_matches_known_images() -> None:
    assert encode_registers(123.456, "float32", "ABCD") == [0x42F6, 0xE979]
    assert encode_registers(123.456, "float32", "CDAB") == [0xE979, 0x42F6]
    assert encode_registers(123.456, "float32", "BADC") == [0xF642, 0x79E9]
    assert encode_registers(0x0102030405060708, "uint64", "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode_registers(0x0102030405060708, "uint64", "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]
