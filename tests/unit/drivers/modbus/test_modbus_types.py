"""The register layouts beyond plain numbers, against known register images.

int8/uint8 (high or low byte), float16, string, bool from one bit, invalid_values sentinels and
value maps: each case is a register image written out by hand and the value (or error) it must
give. Where a vendor document gives a worked example it is used and named.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from drivers.modbus.config import Point
from drivers.modbus.decode import decode_bits, decode_registers, plan_reads


def decode(points: list[Point], image: dict[int, int]) -> tuple[list[Any], dict[int, str]]:
    """Plan and decode ``points`` from a sparse register image (missing registers read 0)."""
    values: list[Any] = [None] * len(points)
    errors: dict[int, str] = {}
    for block in plan_reads(points):
        registers = [image.get(a, 0) for a in range(block.start, block.start + block.count)]
        decode_registers(block, registers, values, errors)
    return values, errors


def one(registers: list[int], **point: Any) -> tuple[Any, str | None]:
    """Decode one point at address 10 from ``registers``: (value, error or None)."""
    values, errors = decode([Point(name="p", address=10, **point)], dict(enumerate(registers, start=10)))
    return values[0], errors.get(0)


# (point keys, registers, expected value)
CASES: list[tuple[dict[str, Any], list[int], Any]] = [
    # int8 / uint8: the high byte is the first on the wire
    ({"type": "int8"}, [0xFE01], -2),
    ({"type": "int8", "byte": "high"}, [0x7F80], 127),
    ({"type": "int8", "byte": "low"}, [0x7F80], -128),
    ({"type": "uint8"}, [0xFE01], 254),
    ({"type": "uint8", "byte": "low"}, [0xFE01], 1),
    ({"type": "uint8", "byte": "low", "scale": 0.5}, [0x00C8], 100.0),
    # float16 (IEEE 754 half precision)
    ({"type": "float16"}, [0x3C00], 1.0),
    ({"type": "float16"}, [0xC000], -2.0),
    ({"type": "float16"}, [0x7BFF], 65504.0),
    ({"type": "float16"}, [0x0001], 2.0**-24),
    ({"type": "float16", "byte_order": "BADC"}, [0x003C], 1.0),
    ({"type": "float16", "scale": 10, "offset": 1}, [0x3800], 6.0),
    # strings: two characters a register, first character in the high byte
    ({"type": "string", "count": 4}, [0x5344, 0x4D31, 0x3230, 0x0000], "SDM120"),
    ({"type": "string", "count": 3}, [0x4142, 0x4320, 0x2020], "ABC"),
    ({"type": "string", "count": 3}, [0x4142, 0x0043, 0x4445], "AB"),  # text ends at the first NUL
    ({"type": "string", "count": 2}, [0x2041, 0x2042], " A B"),  # leading spaces are content
    ({"type": "string", "count": 2, "byte_order": "BADC"}, [0x4241, 0x0043], "ABC"),
    ({"type": "string", "count": 2, "byte_order": "CDAB"}, [0x4142, 0x4344], "ABCD"),  # no word swap for text
    ({"type": "string", "count": 1, "encoding": "latin-1"}, [0xB5C4], "\u00b5\u00c4"),
    ({"type": "string", "count": 2}, [0, 0], ""),
    # bool from one bit of a register (bit 0 = least significant)
    ({"type": "bool", "bit": 0}, [0x0001], True),
    ({"type": "bool", "bit": 1}, [0x0001], False),
    ({"type": "bool", "bit": 15}, [0x8000], True),
    ({"type": "bool", "bit": 8}, [0x0100], True),
    ({"type": "bool", "bit": 8, "byte_order": "BADC"}, [0x0001], True),
    ({"type": "bool", "bit": 3, "table": "input"}, [0xFFF7], False),
    # XY-MD02 protocol description, worked examples: 0x0131 = 30.5 degC, 0xFF33 = -20.5 degC,
    # 0x0222 = 54.6 %RH
    ({"type": "int16", "scale": 0.1}, [0x0131], pytest.approx(30.5)),
    ({"type": "int16", "scale": 0.1}, [0xFF33], pytest.approx(-20.5)),
    ({"type": "uint16", "scale": 0.1}, [0x0222], pytest.approx(54.6)),
    # invalid_values that do not match: the value passes (scaled after the comparison)
    ({"type": "int16", "invalid_values": [0x7FFF], "scale": 0.1}, [0x7FFE], pytest.approx(3276.6)),
    ({"type": "float32", "invalid_values": [-9999]}, [0x4148, 0x0000], 12.5),
    # value maps
    ({"type": "uint16", "value_map": {0: "closed", 1: "open"}}, [1], "open"),
    ({"type": "int16", "value_map": {-1: "fault", 0: "ok"}}, [0xFFFF], "fault"),
    ({"type": "bool", "bit": 2, "value_map": {0: "off", 1: "on"}}, [0x0004], "on"),
    ({"type": "bool", "value_map": {0: "dry", 1: "wet"}}, [0x0100], "wet"),
    ({"type": "uint8", "byte": "low", "value_map": {3: "three"}}, [0xFF03], "three"),
    ({"type": "uint16", "invalid_values": [0xFFFF], "value_map": {2: "two"}}, [2], "two"),
]


@pytest.mark.parametrize(("point", "registers", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_known_images(point: dict[str, Any], registers: list[int], expected: Any) -> None:
    value, error = one(registers, **point)
    assert error is None
    assert value == expected
    if isinstance(expected, str | bool):
        assert type(value) is type(expected)


# (point keys, registers, expected error)
ERRORS: list[tuple[dict[str, Any], list[int], str]] = [
    ({"type": "int16", "invalid_values": [0x7FFF]}, [0x7FFF], "invalid value 0x7FFF (no data)"),
    ({"type": "int16", "invalid_values": [0x7FFF], "scale": 0.1}, [0x7FFF], "invalid value 0x7FFF (no data)"),
    ({"type": "int16", "invalid_values": [0xFFFF]}, [0xFFFF], "invalid value 0xFFFF (no data)"),
    ({"type": "int16", "invalid_values": [-1]}, [0xFFFF], "invalid value 0xFFFF (no data)"),
    ({"type": "uint16", "invalid_values": [-1]}, [0xFFFF], "invalid value 0xFFFF (no data)"),
    ({"type": "uint16", "invalid_values": [0x8000, 0xFFFF]}, [0x8000], "invalid value 0x8000 (no data)"),
    ({"type": "int32", "invalid_values": [0x7FFFFFFF]}, [0x7FFF, 0xFFFF], "invalid value 0x7FFFFFFF (no data)"),
    ({"type": "uint32", "invalid_values": [0xFFFFFFFF], "byte_order": "CDAB"}, [0xFFFF, 0xFFFF],
     "invalid value 0xFFFFFFFF (no data)"),
    ({"type": "int8", "invalid_values": [0x7F]}, [0x7F00], "invalid value 0x7F (no data)"),
    ({"type": "float32", "invalid_values": [-9999]}, [0xC61C, 0x3C00], "invalid value -9999 (no data)"),
    ({"type": "float32", "invalid_values": [1.5]}, [0x3FC0, 0x0000], "invalid value 1.5 (no data)"),
    ({"type": "float16", "invalid_values": [-1]}, [0x7E00], "not a number"),
    ({"type": "uint16", "value_map": {0: "closed", 1: "open"}}, [7], "unmapped value 7"),
    ({"type": "bool", "bit": 0, "value_map": {1: "on"}}, [0], "unmapped value 0"),
    ({"type": "string", "count": 1}, [0x41FF], "not ascii text: 41 ff"),
]


@pytest.mark.parametrize(("point", "registers", "error"), ERRORS, ids=[e[2] for e in ERRORS])
def test_known_errors(point: dict[str, Any], registers: list[int], error: str) -> None:
    assert one(registers, **point) == (None, error)


def test_new_types_coalesce_into_one_read() -> None:
    points = [
        Point(name="name", address=0, type="string", count=3),
        Point(name="status_lo", address=3, type="uint8", byte="low"),
        Point(name="status_hi", address=3, type="int8"),
        Point(name="door", address=4, type="bool", bit=0),
        Point(name="alarm", address=4, type="bool", bit=9),
        Point(name="half", address=5, type="float16"),
        Point(name="level", address=6, type="int16", invalid_values=[0x7FFF], scale=0.01),
        Point(name="mode", address=7, type="uint16", value_map={0: "auto", 1: "manual"}),
    ]
    image = {0: 0x4D45, 1: 0x5445, 2: 0x5200, 3: 0xFF05, 4: 0x0201, 5: 0x4100, 6: 0x7FFF, 7: 1}
    (block,) = plan_reads(points)
    assert (block.start, block.count) == (0, 8)
    values, errors = decode(points, image)
    assert values == ["METER", 5, -1, True, True, 2.5, None, "manual"]
    assert errors == {6: "invalid value 0x7FFF (no data)"}


def test_coil_with_value_map() -> None:
    points = [Point(name="valve", table="coil", address=2, type="bool", value_map={0: "closed", 1: "open"}),
              Point(name="pump", table="coil", address=3, type="bool"),
              Point(name="odd", table="coil", address=4, type="bool", value_map={1: "on"})]
    (block,) = plan_reads(points)
    values: list[Any] = [None] * 3
    errors: dict[int, str] = {}
    decode_bits(block, [True, True, False, False, False, False, False, False], values, errors)
    assert values == ["open", True, None]
    assert errors == {2: "unmapped value 0"}


def test_string_counts_its_registers_in_the_plan() -> None:
    points = [Point(name="serial", address=100, type="string", count=10), Point(name="next", address=110)]
    (block,) = plan_reads(points)
    assert (block.start, block.count) == (100, 11)
    assert points[0].count == 10 and points[1].count == 1


def test_float16_nan_is_not_a_number() -> None:
    assert one([0x7E00], type="float16") == (None, "not a number")
    assert one([0x7C00], type="float16", scale=2) == (None, "not a number")
    value, _ = one([0x3555], type="float16")
    assert math.isclose(value, 0.333251953125)
