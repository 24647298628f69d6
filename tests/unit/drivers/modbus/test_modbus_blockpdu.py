"""Register answers kept as bytes (blockpdu) and decoded per block (decode_register_bytes)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import DecodePDU

from drivers.modbus.blockpdu import HoldingRegisters, InputRegisters
from drivers.modbus.config import Point
from drivers.modbus.decode import decode_register_bytes, decode_registers, plan_reads


def _decoder() -> DecodePDU:
    decoder = DecodePDU(False)  # the client side, as the driver's link registers them
    decoder.register(HoldingRegisters)
    decoder.register(InputRegisters)
    return decoder


@pytest.mark.parametrize(("function", "cls"), [(3, HoldingRegisters), (4, InputRegisters)])
def test_register_answer_keeps_the_bytes_on_the_wire(function: int, cls: type) -> None:
    data = struct.pack(">3H", 0x1234, 0xFFFF, 0)
    pdu = _decoder().decode(bytes([function, len(data)]) + data)
    assert isinstance(pdu, cls)
    assert pdu.function_code == function and not pdu.isError()
    assert pdu.raw == data
    assert pdu.registers == [0x1234, 0xFFFF, 0]
    assert "1234 ffff 0000" in str(pdu)


def test_registers_can_be_set_like_pymodbus_ones() -> None:
    pdu = HoldingRegisters(registers=[1, 2])
    assert pdu.raw == b"\x00\x01\x00\x02"
    assert pdu.registers == [1, 2] and pdu.count == 2
    assert HoldingRegisters().registers == []


def test_a_byte_count_past_the_frame_is_refused() -> None:
    with pytest.raises(ModbusIOException):
        HoldingRegisters().decode(bytes([10, 0, 1]))
    assert _decoder().decode(bytes([3, 10, 0, 1])) is None  # pymodbus' decoder reports it as undecodable


def test_odd_byte_count_keeps_whole_registers_only() -> None:
    pdu = HoldingRegisters()
    pdu.decode(bytes([3, 0, 5, 7]))
    assert pdu.registers == [5]


def _points(specs: list[dict[str, Any]]) -> list[Point]:
    return [Point(name=f"p{i}", **spec) for i, spec in enumerate(specs)]


def _both(points: list[Point], registers: list[int]) -> tuple[list[Any], list[Any], dict[int, str]]:
    """Decode ``registers`` (a block from 0) from ints and from bytes; both must agree."""
    (block,) = plan_reads(points)
    from_ints: list[Any] = [None] * len(points)
    from_bytes: list[Any] = [None] * len(points)
    errors: dict[int, str] = {}
    decode_registers(block, registers, from_ints, {})
    decode_register_bytes(block, struct.pack(f">{len(registers)}H", *registers), from_bytes, errors)
    return from_ints, from_bytes, errors


def test_a_block_of_plain_integers_lands_in_one_slice() -> None:
    points = _points([{"address": a, "type": "uint16"} for a in range(100)])
    (block,) = plan_reads(points)
    assert len(block.lanes) == 1 and block.lanes[0].plain == slice(0, 100)
    registers = [(a * 613) & 0xFFFF for a in range(100)]
    from_ints, from_bytes, errors = _both(points, registers)
    assert from_bytes == from_ints == registers and not errors
    assert all(type(v) is int for v in from_bytes)


def test_mixed_lanes_decode_point_by_point() -> None:
    # a scaled point, a signed one and a point listed out of address order: no single slice
    points = _points([
        {"address": 2, "type": "uint16"},
        {"address": 0, "type": "int16"},
        {"address": 1, "type": "uint16", "scale": 0.5},
        {"address": 3, "type": "float32", "byte_order": "CDAB"},
        {"address": 5, "type": "uint32", "byte_order": "BADC"},
    ])
    (block,) = plan_reads(points)
    assert [lane.plain for lane in block.lanes] == [None, None, slice(4, 5)]  # ABCD, CDAB, BADC
    registers = [0xFFFF, 7, 9, *struct.unpack(">2H", struct.pack(">f", 2.5))[::-1], 0x3412, 0x7856]
    from_ints, from_bytes, errors = _both(points, registers)
    assert from_bytes == from_ints == [9, -1, 3.5, 2.5, 0x12345678]
    assert not errors


def test_consecutive_plain_points_in_a_byte_swapped_order_use_the_slice_too() -> None:
    points = _points([{"address": a, "type": "uint16", "byte_order": "DCBA"} for a in range(4)])
    (block,) = plan_reads(points)
    assert block.lanes[0].plain == slice(0, 4)
    from_ints, from_bytes, _ = _both(points, [0x0102, 0x0304, 0, 0xFF00])
    assert from_bytes == from_ints == [0x0201, 0x0403, 0, 0x00FF]


@pytest.mark.parametrize("data", [b"", b"\x00\x01", b"\x00\x01\x00", b"\x00" * 10])
def test_bytes_of_the_wrong_length_fail_the_block(data: bytes) -> None:
    points = _points([{"address": a} for a in range(4)])
    (block,) = plan_reads(points)
    values: list[Any] = [None] * 4
    errors: dict[int, str] = {}
    decode_register_bytes(block, data, values, errors)
    assert values == [None] * 4
    assert set(errors) == {0, 1, 2, 3}
    assert all("bad response" in e and "expected 4" in e for e in errors.values())
