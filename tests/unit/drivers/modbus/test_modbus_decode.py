"""Register decoding and request planning of the modbus driver, against known register images."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from drivers.modbus.config import ModbusConfig, Point
from drivers.modbus.decode import (
    NOT_A_NUMBER,
    decode_bits,
    decode_registers,
    exception_text,
    plan_reads,
    split_block,
)
from tests.support.modbus_server import encode_registers

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")




def pt(address: int, type_: str = "uint16", order: str = "ABCD", *, table: str = "holding", **kw: Any) -> Point:
    name = kw.pop("name", f"{table}_{address}_{type_}_{order}")
    return Point(name=name, table=table, address=address, type=type_, byte_order=order, **kw)


def decode(points: list[Point], image: dict[int, int], **plan: Any) -> tuple[list[Any], dict[int, str]]:
    """Plan and decode ``points`` from a sparse register image (missing registers read 0)."""
    values: list[Any] = [None] * len(points)
    errors: dict[int, str] = {}
    for block in plan_reads(points, **plan):
        registers = [image.get(a, 0) for a in range(block.start, block.start + block.count)]
        decode_registers(block, registers, values, errors)
    return values, errors


def decode_one(type_: str, order: str, registers: list[int], **kw: Any) -> tuple[Any, dict[int, str]]:
    values, errors = decode([pt(10, type_, order, **kw)], dict(enumerate(registers, start=10)))
    return values[0], errors


# Known images, written out by hand from the big-endian bytes of each value.
KNOWN = [
    ("float32", 123.456, {"ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
                          "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]}),
    ("int32", -123456789, {"ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4],
                           "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8]}),
    ("uint32", 0x01020304, {"ABCD": [0x0102, 0x0304], "CDAB": [0x0304, 0x0102],
                            "BADC": [0x0201, 0x0403], "DCBA": [0x0403, 0x0201]}),
    ("uint64", 0x0102030405060708, {"ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
                                    "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
                                    "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
                                    "DCBA": [0x0807, 0x0605, 0x0403, 0x0201]}),
    ("int64", -2, {"ABCD": [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
                   "BADC": [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]}),
    ("float64", 1.0, {"ABCD": [0x3FF0, 0, 0, 0], "CDAB": [0, 0, 0, 0x3FF0],
                      "BADC": [0xF03F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF03F]}),
    ("float64", 123.456, {"ABCD": [0x405E, 0xDD2F, 0x1A9F, 0xBE77], "CDAB": [0xBE77, 0x1A9F, 0xDD2F, 0x405E],
                          "BADC": [0x5E40, 0x2FDD, 0x9F1A, 0x77BE], "DCBA": [0x77BE, 0x9F1A, 0x2FDD, 0x5E40]}),
    ("int16", -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    ("uint16", 0x1234, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
]
KNOWN_CASES = [(t, v, o, regs) for t, v, images in KNOWN for o, regs in images.items()]


@pytest.mark.parametrize(("type_", "value", "order", "registers"), KNOWN_CASES)
def test_known_images(type_: str, value: Any, order: str, registers: list[int]) -> None:
    decoded, errors = decode_one(type_, order, registers)
    assert errors == {}
    if type_.startswith("float"):
        assert decoded == pytest.approx(value, rel=1e-6 if type_ == "float32" else 1e-15)
    else:
        assert decoded == value and type(decoded) is int


@pytest.mark.parametrize(("type_", "value", "order", "registers"), KNOWN_CASES)
def test_encoder_agrees_with_known_images(type_: str, value: Any, order: str, registers: list[int]) -> None:
    assert encode_registers(value, type_, order) == registers


SAMPLES = {
    "int16": [0, 1, -1, 32767, -32768], "uint16": [0, 1, 0xABCD, 65535],
    "int32": [0, -1, 2**31 - 1, -(2**31), 0x12345678], "uint32": [0, 2**32 - 1, 0x89ABCDEF],
    "int64": [0, -1, 2**63 - 1, -(2**63), 0x0123456789ABCDEF], "uint64": [0, 2**64 - 1, 0xFEDCBA9876543210],
    "float32": [0.0, -1.5, 3.4e38, 1e-38], "float64": [0.0, -1.5, 1.7976931348623157e308, math.pi],
}


def as_stored(type_: str, value: Any) -> Any:
    """``value`` as the register image holds it (float32 loses precision)."""
    return struct.unpack(">f", struct.pack(">f", value))[0] if type_ == "float32" else value


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", sorted(SAMPLES))
def test_round_trip_every_type_and_order(type_: str, order: str) -> None:
    for value in SAMPLES[type_]:
        decoded, errors = decode_one(type_, order, encode_registers(value, type_, order))
        assert (decoded, errors) == (as_stored(type_, value), {}), (value, order)


@pytest.mark.parametrize(("order", "word_order"), [("ABCD", "big"), ("CDAB", "little")])
@pytest.mark.parametrize("type_", ["int32", "uint32", "int64", "uint64", "float32", "float64"])
def test_word_orders_match_pymodbus(type_: str, order: str, word_order: str) -> None:
    # A third opinion: pymodbus' own converter knows word order (not byte swap).
    from pymodbus.client.mixin import ModbusClientMixin

    datatype = getattr(ModbusClientMixin.DATATYPE, type_.upper())
    value = SAMPLES[type_][-1]
    registers = ModbusClientMixin.convert_to_registers(value, datatype, word_order=word_order)
    assert decode_one(type_, order, registers) == (as_stored(type_, value), {})


def test_mixed_block_is_one_read_and_decodes_every_point() -> None:
    layout = [(0, "uint16", "ABCD", 7), (1, "float32", "CDAB", -2.5), (3, "int64", "DCBA", -(2**40)),
              (9, "uint32", "BADC", 0xDEADBEEF), (12, "float64", "ABCD", 1e100), (16, "int16", "DCBA", -300)]
    points, image = [], {}
    for address, type_, order, value in layout:
        points.append(pt(address, type_, order))
        image.update(enumerate(encode_registers(value, type_, order), start=address))
    assert len(plan_reads(points)) == 1
    values, errors = decode(points, image)
    assert values == [v for *_, v in layout] and errors == {}


def test_overlapping_points_are_decoded_independently() -> None:
    points = [pt(0, "uint32", name="whole"), pt(0, "uint16", name="high"), pt(1, "int16", name="low"),
              pt(1, "uint16", "BADC", name="low_swapped")]
    values, errors = decode(points, {0: 0x0001, 1: 0xFFFE})
    assert values == [0x0001FFFE, 1, -2, 0xFEFF] and errors == {}


def test_scale_and_offset() -> None:
    values, _ = decode([pt(0, "int16", scale=0.1, offset=-5), pt(1, "uint16", scale=2),
                        pt(2, "float32", scale=10, offset=1), pt(4, "uint16")], {0: 1234, 1: 21, 2: 0x3FC0, 3: 0, 4: 9})
    assert values[0] == pytest.approx(118.4)
    assert values[1] == 42.0
    assert values[2] == pytest.approx(16.0)  # 1.5 * 10 + 1
    assert values[3] == 9 and type(values[3]) is int


def test_bool_in_a_register_is_nonzero() -> None:
    values, _ = decode([pt(0, "bool"), pt(1, "bool"), pt(2, "bool", "DCBA")], {0: 0, 1: 0x8000, 2: 1})
    assert values == [False, True, True]


@pytest.mark.parametrize(("type_", "value"), [("float32", math.nan), ("float32", math.inf),
                                              ("float64", -math.inf), ("float64", math.nan)])
def test_nan_and_infinity_are_errors_not_numbers(type_: str, value: float) -> None:
    points = [pt(0, type_, "CDAB"), pt(4, "uint16"), pt(5, type_, scale=2)]
    image = {4: 5}
    for address in (0, 5):
        image.update(enumerate(encode_registers(value, type_, "CDAB" if address == 0 else "ABCD"), start=address))
    values, errors = decode(points, image)
    assert values == [None, 5, None]
    assert errors == {0: NOT_A_NUMBER, 2: NOT_A_NUMBER}


def test_short_response_fails_the_block() -> None:
    points = [pt(0), pt(1)]
    (block,) = plan_reads(points)
    values: list[Any] = [None, None]
    errors: dict[int, str] = {}
    decode_registers(block, [1], values, errors)
    assert values == [None, None] and set(errors) == {0, 1} and "expected 2" in errors[0]


def test_bits_decode_from_coil_block() -> None:
    points = [pt(3, "bool", table="coil"), pt(0, "bool", table="coil"), pt(17, "bool", table="coil")]
    (block,) = plan_reads(points)
    assert (block.start, block.count) == (0, 18)
    values: list[Any] = [None] * 3
    bits = [False] * 24
    bits[3] = bits[17] = True
    decode_bits(block, bits, values, {})
    assert values == [True, False, True]


def spans(blocks: list[Any]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_plan_coalesces_across_small_gaps_only() -> None:
    points = [pt(0), pt(1, "float32"), pt(3 + 16), pt(20 + 17), pt(100, "float64")]
    assert spans(plan_reads(points)) == [("holding", 0, 20), ("holding", 37, 1), ("holding", 100, 4)]
    assert spans(plan_reads(points, max_gap=0)) == [("holding", 0, 3), ("holding", 19, 1),
                                                    ("holding", 37, 1), ("holding", 100, 4)]
    assert spans(plan_reads(points, max_gap=100)) == [("holding", 0, 104)]


def test_plan_respects_request_limits() -> None:
    assert spans(plan_reads([pt(0), pt(124)], max_gap=200)) == [("holding", 0, 125)]
    assert spans(plan_reads([pt(0), pt(124, "float32")], max_gap=200)) == [("holding", 0, 1), ("holding", 124, 2)]
    run = [pt(a) for a in range(300)]
    assert spans(plan_reads(run)) == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    assert spans(plan_reads(run[:10], max_registers=4)) == [("holding", 0, 4), ("holding", 4, 4), ("holding", 8, 2)]
    bits = [pt(a, "bool", table="discrete") for a in (0, 1999, 2000)]
    assert spans(plan_reads(bits, max_gap=3000)) == [("discrete", 0, 2000), ("discrete", 2000, 1)]
    assert spans(plan_reads(bits, max_gap=3000, max_bits=100)) == [("discrete", 0, 1), ("discrete", 1999, 2)]


def test_plan_keeps_tables_apart_and_indices_in_config_order() -> None:
    points = [pt(5, table="input"), pt(1, "bool", table="coil"), pt(4), pt(5), pt(0, "bool", table="discrete"),
              pt(4, table="input")]
    blocks = plan_reads(points)
    assert spans(blocks) == [("holding", 4, 2), ("input", 4, 2), ("coil", 1, 1), ("discrete", 0, 1)]
    assert [sorted(b.indices) for b in blocks] == [[2, 3], [0, 5], [1], [4]]


def test_split_block_reads_each_point_alone() -> None:
    points = [pt(0, "float32", "CDAB"), pt(2), pt(10, "int64")]
    (block,) = plan_reads(points)
    parts = split_block(points, block)
    assert spans(parts) == [("holding", 0, 2), ("holding", 2, 1), ("holding", 10, 4)]
    values: list[Any] = [None] * 3
    decode_registers(parts[0], encode_registers(2.5, "float32", "CDAB"), values, {})
    assert values[0] == 2.5


def test_config_defaults_and_limits() -> None:
    config = ModbusConfig(connection={"host": "10.0.0.5"}, points=[{"name": "a", "address": 0}])
    assert (config.max_gap, config.max_registers, config.max_bits) == (16, 125, 2000)
    with pytest.raises(ValueError, match="max_registers"):
        ModbusConfig(connection={"host": "h"}, points=[{"name": "a", "address": 0}], max_registers=126)


def test_exception_text() -> None:
    assert exception_text(2) == "exception 2 (illegal data address)"
    assert exception_text(99) == "exception 99"
