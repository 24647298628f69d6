"""Write encoding: what each point accepts, the request it becomes, and every refusal (no wire)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from drivers.modbus.config import ModbusConfig, Point
from drivers.modbus.decode import decode_registers, make_block
from drivers.modbus.encode import encode_registers, merge_byte, plan_write
from gateway.driver import DriverError, WriteRefused


def point(**keys: Any) -> Point:
    return Point.model_validate({"name": "p", "address": 10, "writable": True, **keys})


def registers_of(value: float | int, fmt: str, order: str) -> tuple[int, ...]:
    """Independent of the encoder: big-endian bytes in words, reversed (CDAB, DCBA), swapped (BADC, DCBA)."""
    data = struct.pack(">" + fmt, value)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return tuple(int.from_bytes(w, "big") for w in words)


# --- holding registers: the request, the raw value, the registers -------------------------------------

@pytest.mark.parametrize(
    ("keys", "value", "function", "registers"),
    [
        ({"type": "uint16"}, 1234, 6, (1234,)),
        ({"type": "int16"}, -2, 6, (0xFFFE,)),
        ({"type": "int16", "scale": 0.1}, 21.5, 6, (215,)),
        ({"type": "int16", "scale": 0.1, "offset": -40}, -20, 6, (200,)),
        ({"type": "uint16", "scale": 10}, 1230, 6, (123,)),
        ({"type": "uint16", "byte_order": "BADC"}, 0x1234, 6, (0x3412,)),
        ({"type": "float16"}, 1.5, 6, (0x3E00,)),
        ({"type": "bool"}, True, 6, (1,)),
        ({"type": "float32"}, 123.456, 16, registers_of(123.456, "f", "ABCD")),
        ({"type": "float32", "byte_order": "CDAB"}, 123.456, 16, (0xE979, 0x42F6)),  # the README's example
        ({"type": "float32", "byte_order": "BADC"}, 123.456, 16, (0xF642, 0x79E9)),
        ({"type": "float32", "byte_order": "DCBA"}, 123.456, 16, (0x79E9, 0xF642)),
        ({"type": "uint32", "byte_order": "CDAB"}, 0x01020304, 16, (0x0304, 0x0102)),
        ({"type": "int32", "scale": 0.01}, -1.5, 16, registers_of(-150, "i", "ABCD")),
        ({"type": "uint64", "byte_order": "CDAB"}, 0x0102030405060708, 16, (0x0708, 0x0506, 0x0304, 0x0102)),
        ({"type": "float64", "byte_order": "DCBA"}, -2.25, 16, registers_of(-2.25, "d", "DCBA")),
        ({"type": "string", "count": 3}, "AB", 16, (0x4142, 0, 0)),
        ({"type": "string", "count": 2, "byte_order": "BADC"}, "ABC", 16, (0x4241, 0x0043)),
        ({"type": "string", "count": 1}, "Z", 6, (0x5A00,)),
    ],
)
def test_holding_writes(keys: dict[str, Any], value: Any, function: int, registers: tuple[int, ...]) -> None:
    plan = plan_write(point(**keys), value)
    assert (plan.function, plan.table, plan.address, plan.registers) == (function, "holding", 10, registers)


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize(
    ("kind", "value", "scale"),
    [("int16", -123.4, 0.1), ("uint32", 4_000_000_000, 1), ("int64", -(2**40), 1), ("float32", 0.5, 1),
     ("float64", 1e300, 1), ("float32", 10.25, 0.5), ("int8", -5, 1), ("uint8", 200, 1)],
)
def test_every_encoding_reads_back_through_the_decoder(kind: str, value: float, scale: float, order: str) -> None:
    p = point(type=kind, byte_order=order, scale=scale)
    plan = plan_write(p, value)
    registers = list(plan.registers)
    if plan.merge_byte:
        registers = [merge_byte(0xABCD, registers[0], plan.merge_byte)]
    values: list[Any] = [None]
    decode_registers(make_block([p], "holding", [0]), registers, values, {})
    assert values[0] == pytest.approx(value)


def test_text_from_a_command_line_is_parsed() -> None:
    assert plan_write(point(type="int16", scale=0.1), "21.5").raw == 215
    assert plan_write(point(type="uint16"), "0x10").raw == 16
    assert plan_write(point(type="float32"), " -1e3 ").raw == -1000.0
    assert plan_write(point(type="bool"), "on").registers == (1,)
    assert plan_write(point(type="bool", table="coil"), "false").bits == (False,)


def test_coils_use_fc5_or_fc15() -> None:
    coil = point(type="bool", table="coil")
    assert (plan_write(coil, True).function, plan_write(coil, True).bits) == (5, (True,))
    assert (plan_write(coil, 0).function, plan_write(coil, 0).bits) == (5, (False,))
    assert plan_write(coil, True, multiple=True).function == 15


def test_write_multiple_uses_fc16_for_one_register() -> None:
    assert plan_write(point(type="uint16"), 7, multiple=True).function == 16


def test_value_map_takes_labels_or_raw_keys() -> None:
    p = point(type="uint16", value_map={"0": "auto", "1": "manual", "2": "off"})
    assert plan_write(p, "manual").registers == (1,)
    assert plan_write(p, 2).registers == (2,)
    assert plan_write(p, "2").registers == (2,)
    with pytest.raises(WriteRefused, match=r"takes one of: auto, manual, off \(not 'fast'\)"):
        plan_write(p, "fast")
    with pytest.raises(WriteRefused, match="takes one of"):
        plan_write(p, 7)
    coil = point(type="bool", table="coil", value_map={"0": "closed", "1": "open"})
    assert plan_write(coil, "open").bits == (True,)


def test_int8_is_merged_into_its_register() -> None:
    high, low = point(type="uint8"), point(type="int8", byte="low")
    assert plan_write(high, 0x12).merge_byte == "high"
    assert plan_write(low, -1).merge_byte == "low"
    assert merge_byte(0xABCD, 0x12, "high") == 0x12CD
    assert merge_byte(0xABCD, plan_write(low, -1).registers[0], "low") == 0xABFF
    assert "read-modify-write" in plan_write(high, 1).describe()


def test_describe_says_what_goes_on_the_wire() -> None:
    assert plan_write(point(type="int16", scale=0.1), 21.5).describe() == "holding 10 <- 00D7 (FC6)"
    assert plan_write(point(type="bool", table="coil"), True).describe() == "coil 10 <- 1 (FC5)"
    assert plan_write(point(type="uint32"), 65536).describe() == "holding 10 <- 0001 0000 (FC16)"


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("keys", "value", "reason"),
    [
        ({"writable": False}, 1, "is not writable"),
        ({"type": "int16", "min": 0, "max": 50}, 50.5, "above the maximum 50"),
        ({"type": "int16", "min": 0, "max": 50}, -1, "below the minimum 0"),
        ({"type": "int16"}, 40000, r"40000 does not fit a int16 \(-32768..32767\)"),
        ({"type": "uint16"}, -1, "does not fit a uint16"),
        ({"type": "int16", "scale": 0.1}, 4000, r"4000 \(raw 40000\) does not fit a int16"),
        ({"type": "int16", "scale": 0.1}, 21.55, r"not a multiple of the scale 0.1 .*nearest: 21.5 or 21.6"),
        ({"type": "uint16"}, 1.5, r"takes a whole number, not 1.5"),
        ({"type": "uint8"}, 256, "does not fit a uint8"),
        ({"type": "float16"}, 1e6, "does not fit a float16"),
        ({"type": "float32"}, 1e39, "does not fit a float32"),
        ({"type": "float32"}, float("nan"), "finite number"),
        ({"type": "float32"}, "warm", "takes a number, not 'warm'"),
        ({"type": "uint16"}, True, "takes a number, not True"),
        ({"type": "uint16"}, [1], "takes a number"),
        ({"type": "bool"}, 2, "takes true or false"),
        ({"type": "bool", "table": "coil"}, "maybe", "takes true or false"),
        ({"type": "string", "count": 2}, "ABCDE", "is 5 characters; point 'p' holds 4"),
        ({"type": "string", "count": 2}, 12, "takes text"),
        ({"type": "string", "count": 2}, "é", "is not ascii text"),
        ({"type": "int16", "invalid_values": [0x7FFF]}, 32767, "is one of its invalid_values"),
        ({"type": "int16", "invalid_values": [0xFFFF]}, -1, "is one of its invalid_values"),
        ({"type": "uint16", "invalid_values": [-1]}, 65535, "is one of its invalid_values"),
    ],
)
def test_refused_before_anything_is_sent(keys: dict[str, Any], value: Any, reason: str) -> None:
    with pytest.raises(WriteRefused, match=reason):
        plan_write(point(**keys), value)


def test_a_refusal_is_a_driver_error() -> None:
    assert issubclass(WriteRefused, DriverError)


def test_encode_registers_of_a_whole_register_bool() -> None:
    assert encode_registers(point(type="bool"), False) == (0,)


# --- config --------------------------------------------------------------------------------------------

def config(**point_keys: Any) -> ModbusConfig:
    return ModbusConfig.model_validate(
        {"connection": {"host": "10.0.0.5"}, "points": [{"name": "p", "address": 0, **point_keys}]}
    )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"table": "input", "writable": True}, "a point in table 'input' cannot be written"),
        ({"table": "discrete", "type": "bool", "writable": True}, "a point in table 'discrete' cannot be written"),
        ({"type": "bool", "bit": 3, "writable": True}, "a bit of a register cannot be written alone"),
        ({"max": 5}, "min and max limit writes; they need writable: true"),
        ({"writable": True, "type": "bool", "min": 0}, "min and max do not apply to bool points"),
        ({"writable": True, "value_map": {"0": "a"}, "max": 1}, "min and max do not apply to value_map points"),
        ({"writable": True, "min": 10, "max": 5}, "min 10 is greater than max 5"),
    ],
)
def test_config_errors(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**keys)


def test_config_accepts_writable_points() -> None:
    cfg = ModbusConfig.model_validate({
        "connection": {"host": "10.0.0.5"},
        "write_multiple": True,
        "points": [
            {"name": "setpoint", "address": 0, "type": "int16", "scale": 0.1, "writable": True, "min": 5, "max": 30},
            {"name": "relay", "table": "coil", "address": 0, "type": "bool", "writable": True},
        ],
    })
    assert [p.writable for p in cfg.points] == [True, True]
    assert (cfg.points[0].min, cfg.points[0].max, cfg.write_multiple) == (5, 30, True)
    assert config().points[0].writable is False
