"""The modbus config model: transports, point layouts, byte order defaults, shared-port checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus.config import ModbusConfig, Point
from drivers.modbus.connection import (
    RtuOverTcpConnection,
    SerialConnection,
    TcpConnection,
    check_shared_ports,
    parse_gap,
)
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo, DeviceProblem

POINTS = [{"name": "v", "address": 0}]


def config(connection: dict[str, Any], **entry: Any) -> ModbusConfig:
    return ModbusConfig.model_validate({"connection": connection, "points": entry.pop("points", POINTS), **entry})


def serial(port: str = "/dev/ttyUSB0", **settings: Any) -> dict[str, Any]:
    return {"transport": "rtu", "serial_port": port, **settings}


def errors_of(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        ModbusConfig.model_validate(data)
    return [(e["loc"], str((e.get("ctx") or {}).get("error", e["msg"]))) for e in caught.value.errors()]


def test_transport_picks_the_model() -> None:
    assert isinstance(config({"host": "10.0.0.5"}).connection, TcpConnection)  # tcp by default
    rtu = config(serial(baudrate=19200, parity="E", stopbits=1, unit_id=7, timeout="200ms")).connection
    assert isinstance(rtu, SerialConnection)
    assert (rtu.baudrate, rtu.parity, rtu.bytesize, rtu.unit_id, rtu.timeout) == (19200, "E", 8, 7, 0.2)
    ascii_ = config({"transport": "ascii", "serial_port": "/dev/ttyS1", "bytesize": 7, "parity": "E"}).connection
    assert isinstance(ascii_, SerialConnection) and ascii_.bytesize == 7
    bridge = config({"transport": "rtu-over-tcp", "host": "10.0.0.9", "port": 4001, "unit_id": 3}).connection
    assert isinstance(bridge, RtuOverTcpConnection)


def test_serial_defaults() -> None:
    conn = config(serial()).connection
    assert isinstance(conn, SerialConnection)
    assert (conn.baudrate, conn.parity, conn.stopbits, conn.bytesize, conn.unit_id, conn.timeout) == (
        9600, "N", 1, 8, 1, 0.5)
    assert conn.gap == pytest.approx(3.5 * 10 / 9600)  # 3.5 characters of 10 bits
    assert config(serial(baudrate=9600, parity="E", stopbits=2)).connection.gap == pytest.approx(3.5 * 12 / 9600)
    assert config(serial(baudrate=115200)).connection.gap == 0.00175
    assert config(serial(frame_gap="0ms")).connection.gap == 0.0
    assert config(serial(frame_gap="20ms")).connection.gap == pytest.approx(0.02)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), ("0ms", 0.0), ("0", 0.0), ("5ms", 0.005), (0.01, 0.01)])
def test_frame_gap_may_be_zero(value: Any, seconds: float) -> None:
    assert parse_gap(value) == pytest.approx(seconds)


@pytest.mark.parametrize(("connection", "message"), [
    (serial(unit_id=0), "unit id 0 is not usable on a serial line (1 to 247; 0 is broadcast)"),
    (serial(unit_id=248), "unit id 248 is not usable on a serial line"),
    (serial(bytesize=7), "Modbus RTU needs bytesize 8"),
    (serial(parity="X"), "Input should be 'N', 'E' or 'O'"),
    (serial(stopbits=3), "Input should be 1 or 2"),
    (serial(frame_gap="-1ms"), "is not a duration"),
    ({"transport": "rtu-over-tcp", "host": "h"}, "Field required"),
    ({"transport": "serial", "serial_port": "/dev/x"}, "does not match any of the expected tags"),
])
def test_bad_connections(connection: dict[str, Any], message: str) -> None:
    found = errors_of({"connection": connection, "points": POINTS})
    assert any(message in text for _, text in found), found


def test_bus_keys() -> None:
    assert config({"host": "h"}).connection.bus_key is None
    assert config(serial("/dev/ttyUSB1")).connection.bus_key == "serial:/dev/ttyUSB1"
    bridge = config({"transport": "rtu-over-tcp", "host": "h", "port": 4001}).connection
    assert bridge.bus_key == "rtu-over-tcp:h:4001"
    driver = ModbusDriver(config(serial("/dev/ttyUSB1")), DeviceInfo(name="d", interval=1.0))
    assert driver.bus == "serial:/dev/ttyUSB1"
    assert ModbusDriver(config({"host": "h"}), DeviceInfo(name="d", interval=1.0)).bus is None


def test_device_byte_order_is_the_points_default() -> None:
    points = [{"name": "a", "address": 0, "type": "float32"},
              {"name": "b", "address": 2, "type": "float32", "byte_order": "ABCD"}]
    c = config({"host": "h"}, byte_order="CDAB", points=points)
    assert [p.byte_order for p in c.points] == ["CDAB", "ABCD"]
    assert [p.byte_order for p in config({"host": "h"}, points=points).points] == ["ABCD", "ABCD"]
    # An invalid device byte order is reported once, at the device, not again at every point.
    found = errors_of({"connection": {"host": "h"}, "byte_order": "XYZW", "points": points})
    assert [loc for loc, _ in found] == [("byte_order",)]


def test_entry_is_not_changed_by_validation() -> None:
    entry = {"connection": {"host": "h"}, "byte_order": "CDAB", "points": [{"name": "a", "address": 0}]}
    ModbusConfig.model_validate(entry)
    assert entry == {"connection": {"host": "h"}, "byte_order": "CDAB", "points": [{"name": "a", "address": 0}]}


@pytest.mark.parametrize(("point", "message"), [
    ({"table": "coil", "type": "bool", "bit": 2}, "bit selects a bit of a holding or input register, not of a coil"),
    ({"type": "uint16", "bit": 2}, "bit needs type bool, not 'uint16'"),
    ({"type": "bool", "bit": 16}, "less than or equal to 15"),
    ({"type": "int16", "byte": "low"}, "byte is for int8 and uint8 points, not 'int16'"),
    ({"type": "string"}, "a string point needs count (its length in registers)"),
    ({"type": "uint32", "count": 4}, "count is for string points; a uint32 takes 2 registers"),
    ({"type": "uint16", "encoding": "latin-1"}, "encoding is for string points"),
    ({"type": "string", "count": 2, "scale": 2}, "scale and offset do not apply to string points"),
    ({"type": "bool", "offset": 1}, "scale and offset do not apply to bool points"),
    ({"type": "int16", "invalid_values": [0x10000]}, "invalid value 65536 does not fit a int16"),
    ({"type": "int8", "invalid_values": [-129]}, "invalid value -129 does not fit a int8"),
    ({"type": "uint16", "invalid_values": [1.5]}, "invalid value 1.5 does not fit a uint16"),
    ({"type": "string", "count": 1, "invalid_values": [0]}, "invalid_values do not apply to string points"),
    ({"type": "float32", "value_map": {0: "x"}}, "value_map is for integer and bool points, not 'float32'"),
    ({"type": "uint16", "value_map": {0: "x"}, "scale": 0.1}, "value_map replaces scale and offset"),
    ({"type": "string", "count": 126}, "less than or equal to 125"),
    ({"address": 65535, "type": "string", "count": 2}, "address 65535 + 2 registers runs past 65535"),
])
def test_bad_points(point: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Point.model_validate({"name": "p", "address": 0, **point})
    assert message in str(caught.value)


def test_every_point_has_its_span_in_count() -> None:
    # The config loader's overlap check reads ``count`` as the span of every point.
    assert Point(name="a", address=0, type="float64").count == 4
    assert Point(name="b", address=0, table="coil", type="bool").count == 1
    assert Point(name="c", address=0, type="int8").count == 1
    assert Point(name="d", address=0, type="string", count=8).count == 8


def test_value_map_keys_may_be_text() -> None:
    # gateway.yaml keys reach the model as text: "0", "0x10", "-1"
    point = Point.model_validate({"name": "p", "address": 0, "type": "int16",
                                  "value_map": {"0": "off", "0x10": "on", "-1": "fault"}})
    assert point.value_map == {0: "off", 16: "on", -1: "fault"}
    with pytest.raises(ValidationError, match="valid integer"):
        Point.model_validate({"name": "p", "address": 0, "value_map": {"one": "x"}})


def test_value_map_keys_from_yaml_booleans() -> None:
    point = Point(name="p", address=0, type="bool", value_map={True: "on", False: "off"})  # type: ignore[dict-item]
    assert point.value_map == {1: "on", 0: "off"}


def named(*entries: tuple[str, dict[str, Any]]) -> list[tuple[str, ModbusConfig]]:
    return [(name, config(conn)) for name, conn in entries]


def test_devices_on_one_port_must_agree() -> None:
    devices = named(
        ("meter-1", serial(baudrate=9600, unit_id=1)),
        ("meter-2", serial(baudrate=19200, unit_id=2)),
        ("meter-3", serial(baudrate=9600, parity="E", stopbits=2, unit_id=3)),
        ("meter-4", serial(baudrate=9600, unit_id=4, timeout="1s")),  # timeout and unit are per device
        ("other", serial("/dev/ttyUSB1", baudrate=19200)),
        ("tcp", {"host": "10.0.0.5"}),
    )
    assert check_shared_ports(devices) == [
        ("meter-2", "devices 'meter-2' and 'meter-1' both use /dev/ttyUSB0 with different settings "
                    "(baudrate 19200 vs 9600)"),
        ("meter-3", "devices 'meter-3' and 'meter-1' both use /dev/ttyUSB0 with different settings "
                    "(parity E vs N, stopbits 2 vs 1)"),
    ]
    assert ModbusDriver.check_devices(devices) == [DeviceProblem(*found) for found in check_shared_ports(devices)]


def test_shared_port_mismatch_of_framing_and_gap() -> None:
    devices = named(
        ("a", serial(frame_gap="5ms")),
        ("b", {"transport": "ascii", "serial_port": "/dev/ttyUSB0", "frame_gap": "5ms"}),
        ("c", serial(frame_gap="10ms")),
        ("c2", serial()),
        ("d", {"transport": "rtu-over-tcp", "host": "gw", "port": 4001}),
        ("e", {"transport": "rtu-over-tcp", "host": "gw", "port": 4001, "frame_gap": "20ms"}),
        ("f", {"transport": "rtu-over-tcp", "host": "gw", "port": 4002, "frame_gap": "20ms"}),
    )
    assert check_shared_ports(devices) == [
        ("b", "devices 'b' and 'a' both use /dev/ttyUSB0 with different settings (transport ascii vs rtu)"),
        ("c", "devices 'c' and 'a' both use /dev/ttyUSB0 with different settings (frame_gap 10ms vs 5ms)"),
        ("c2", "devices 'c2' and 'a' both use /dev/ttyUSB0 with different settings (frame_gap auto vs 5ms)"),
        ("e", "devices 'e' and 'd' both use gw:4001 with different settings (frame_gap 20ms vs 0ms)"),
    ]


def test_agreeing_devices_pass() -> None:
    devices = named(*((f"m{u}", serial(baudrate=19200, parity="E", unit_id=u)) for u in range(1, 6)))
    assert check_shared_ports(devices) == []
