"""Writes end to end: the modbus driver against a pymodbus server, over TCP and over an RTU pty line.

What reached the device is checked two ways: the server's request log (function code, address,
count) and the registers read back by a plain pymodbus client, compared with the test support's
own encoder, not the driver's. A refused write must leave the request log empty.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo, DriverError, SharedPool, WriteRefused
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus, encode_registers
from tests.support.pool import in_use
from tests.support.serial_pty import SerialPty

pytestmark = pytest.mark.integration

POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
     "min": 5, "max": 35},
    {"name": "flow", "address": 20, "type": "float32", "byte_order": "CDAB", "writable": True},
    {"name": "total", "address": 30, "type": "uint32", "byte_order": "DCBA", "scale": 0.01, "writable": True},
    {"name": "big", "address": 40, "type": "float64", "byte_order": "BADC", "writable": True},
    {"name": "mode", "address": 50, "type": "uint16", "value_map": {"0": "auto", "1": "manual"}, "writable": True},
    {"name": "hi", "address": 60, "type": "uint8", "writable": True},
    {"name": "lo", "address": 60, "type": "int8", "byte": "low", "writable": True},
    {"name": "tag", "address": 70, "type": "string", "count": 4, "writable": True},
    {"name": "relay", "table": "coil", "address": 5, "type": "bool", "writable": True},
    {"name": "reading", "address": 80, "type": "uint16"},  # not writable
    {"name": "temp", "table": "input", "address": 0, "type": "int16"},
    {"name": "alarm", "address": 81, "type": "bool", "bit": 3},
]

MakeDriver = Callable[..., Awaitable[ModbusDriver]]


@pytest.fixture(autouse=True)
def quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
async def server(start_modbus: StartModbus) -> ModbusTestServer:
    return await start_modbus(holding=[(0, 100)], coil=[(0, 16)])


@pytest.fixture
async def make_driver() -> AsyncIterator[MakeDriver]:
    drivers: list[ModbusDriver] = []

    async def make(connection: dict[str, Any], points: list[dict[str, Any]] = POINTS, **options: Any) -> ModbusDriver:
        config = ModbusConfig.model_validate({"connection": connection, "points": points, **options})
        driver = ModbusDriver(config, DeviceInfo(name="dev", interval=1.0, shared=SharedPool()))
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


async def holding(server: ModbusTestServer, address: int, count: int) -> list[int]:
    """Registers as the device holds them, read by a client of the test's own."""
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        response = await client.read_holding_registers(address, count=count, device_id=1)
        return list(response.registers)
    finally:
        client.close()


def tcp(server: ModbusTestServer) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "timeout": 0.5}


async def test_holding_writes_fc6_fc16_with_scale_and_byte_order(server: ModbusTestServer,
                                                                 make_driver: MakeDriver) -> None:
    driver = await make_driver(tcp(server))
    assert await driver.write("setpoint", 21.5) == "holding 10 <- 00D7 (FC6)"
    await driver.write("flow", -12.75)
    await driver.write("total", 12345.67)
    await driver.write("big", "1e-3")
    await driver.write("mode", "manual")

    assert server.requests == [Request(6, 10, 0), Request(16, 20, 2), Request(16, 30, 2), Request(16, 40, 4),
                               Request(6, 50, 0)]
    assert await holding(server, 10, 1) == [215]
    assert await holding(server, 20, 2) == encode_registers(-12.75, "float32", "CDAB")
    assert await holding(server, 30, 2) == encode_registers(1234567, "uint32", "DCBA")
    assert await holding(server, 40, 4) == encode_registers(1e-3, "float64", "BADC")
    assert await holding(server, 50, 1) == [1]
    result = await driver.poll()
    values = dict(zip(driver.points.names, result.values, strict=True))
    assert (values["setpoint"], values["flow"], values["mode"]) == (21.5, -12.75, "manual")
    assert values["total"] == pytest.approx(12345.67)
    assert driver.counters["writes"] == 5


async def test_coils_fc5_and_fc15(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    single = await make_driver(tcp(server))
    multiple = await make_driver(tcp(server), write_multiple=True)
    await single.write("relay", True)
    assert (await single.inspect(points=["relay"]))["points"][0]["value"] is True
    await multiple.write("relay", "off")
    await multiple.write("setpoint", 20)

    assert server.requests == [Request(5, 5, 0), Request(1, 5, 1), Request(15, 5, 1), Request(16, 10, 1)]
    assert (await single.inspect(points=["relay"]))["points"][0]["value"] is False
    assert await holding(server, 10, 1) == [200]


async def test_int8_keeps_the_other_byte_and_strings_are_padded(server: ModbusTestServer,
                                                                make_driver: MakeDriver) -> None:
    await server.set_registers("holding", 60, [0xABCD])
    driver = await make_driver(tcp(server))
    await driver.write("hi", 0x12)
    await driver.write("lo", -1)
    await driver.write("tag", "OK-1")
    await driver.write("tag", "A")

    assert [r.function_code for r in server.requests] == [3, 6, 3, 6, 16, 16]  # read-modify-write, twice
    assert await holding(server, 60, 1) == [0x12FF]
    assert await holding(server, 70, 4) == [0x4100, 0, 0, 0]


@pytest.mark.parametrize(
    ("point", "value", "reason"),
    [
        ("reading", 1, "point 'reading' is not writable"),
        ("temp", 1, "point 'temp' is not writable"),
        ("alarm", True, "point 'alarm' is not writable"),
        ("setpoint", 35.1, "35.1 is above the maximum 35 of point 'setpoint'"),
        ("setpoint", 4, "4 is below the minimum 5"),
        ("setpoint", "warm", "takes a number, not 'warm'"),
        ("relay", 3, "takes true or false"),
        ("mode", "turbo", "takes one of: auto, manual"),
        ("nosuch", 1, "device 'dev' has no point 'nosuch' \\(writable points: setpoint, flow"),
    ],
)
async def test_refused_writes_send_nothing(server: ModbusTestServer, make_driver: MakeDriver,
                                           point: str, value: Any, reason: str) -> None:
    driver = await make_driver(tcp(server))
    with pytest.raises(WriteRefused, match=reason):
        await driver.write(point, value)
    assert server.requests == []
    assert driver.counters["requests"] == 0


async def test_config_refuses_writable_on_a_read_only_table() -> None:
    with pytest.raises(ValueError, match="a point in table 'input' cannot be written"):
        ModbusConfig.model_validate({"connection": {"host": "h"},
                                     "points": [{"name": "t", "table": "input", "address": 0, "writable": True}]})


async def test_a_write_the_device_rejects_is_a_driver_error(server: ModbusTestServer,
                                                            make_driver: MakeDriver) -> None:
    driver = await make_driver(tcp(server), points=[{"name": "far", "address": 500, "writable": True}])
    with pytest.raises(DriverError, match=r"unit 1 at 127.0.0.1:\d+ refused the write: exception 2") as caught:
        await driver.write("far", 1)
    assert not isinstance(caught.value, WriteRefused)
    assert driver.counters["exceptions"] == 1


async def test_a_silent_unit_times_out(server: ModbusTestServer, make_driver: MakeDriver) -> None:
    driver = await make_driver(tcp(server))
    server.mute(True)
    with pytest.raises(DriverError, match="no response from unit 1"):
        await driver.write("setpoint", 20)
    assert driver.counters["timeouts"] == 1


# --- over an RTU line ----------------------------------------------------------------------------------

async def test_writes_over_rtu_reach_only_their_unit(pty: SerialPty, make_driver: MakeDriver) -> None:
    bus = ModbusTestServer(units=(1, 2), transport="rtu", serial_port=str(pty.a), coil=[(0, 16)])
    await bus.start()
    try:
        pool = SharedPool()
        drivers = []
        for unit in (1, 2):
            config = ModbusConfig.model_validate({
                "connection": {"transport": "rtu", "serial_port": str(pty.b), "unit_id": unit, "timeout": 0.3},
                "points": POINTS,
            })
            drivers.append(ModbusDriver(config, DeviceInfo(name=f"u{unit}", interval=1.0, shared=pool)))
        await drivers[0].write("flow", 1.5)
        await drivers[1].write("relay", True)
        report = await drivers[0].inspect(points=["flow", "relay"])
        for driver in drivers:
            await driver.close()
    finally:
        await bus.stop()
    assert [(r["name"], r["value"], r["raw"]) for r in report["points"]] == [
        ("flow", 1.5, "0000 3FC0"), ("relay", False, "0")]
    assert bus.requests == [Request(16, 20, 2, 1), Request(5, 5, 0, 2), Request(3, 20, 2, 1), Request(1, 5, 1, 1)]
    assert bus.get("holding", 21, unit=1) == 0x3FC0  # a snapshot taken at stop
    assert bus.get("coil", 5, unit=2) is True
    assert not in_use(pool, f"serial:{pty.b}")
