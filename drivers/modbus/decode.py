"""Request planning and register decoding for the modbus driver: pure functions, no pymodbus.

The planner turns a device's points into as few read requests (blocks) as it can; everything a
block needs for decoding (struct formats, target indices, conversions) is computed once, at
construction, so a poll only unpacks.

Byte orders name where the bytes of a value sit on the wire, ``A`` being the most significant
byte. They combine two independent choices, for 1-, 2- and 4-register values alike:

========  ============================  ==================================
name      register (word) order         bytes within each register
========  ============================  ==================================
ABCD      most significant first        most significant first (big-endian)
CDAB      least significant first       most significant first
BADC      most significant first        least significant first
DCBA      least significant first       least significant first (little-endian)
========  ============================  ==================================

So a 64-bit value with big-endian bytes ``A B C D E F G H`` arrives as registers
``AB CD EF GH`` (ABCD), ``GH EF CD AB`` (CDAB), ``BA DC FE HG`` (BADC), ``HG FE DC BA`` (DCBA);
a 16-bit value ``A B`` as ``AB`` (ABCD, CDAB) or ``BA`` (BADC, DCBA).

Decoding uses that symmetry: a block's registers are taken as big-endian bytes (the answer's data
bytes as they came off the wire; see ``blockpdu.py``) and, if some point needs it, once more with
the bytes of every register swapped. Each of the four orders is then a plain big- or little-endian
``struct`` unpack of one of those two buffers, one unpack per lane for the whole block; a lane of
plain integers in point order lands in the values with one slice assignment.

The other layouts fit the same unpack: ``int8``/``uint8`` are one byte of a register (``bx`` or
``xb`` in the big-endian buffer), ``float16`` is ``e``, a ``string`` of N registers is ``2Ns``
(from the swapped buffer for BADC/DCBA). What a plain scale cannot express (a ``bit``, text,
``invalid_values``, ``value_map``) is a per-point function from ``convert.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from math import isfinite
from typing import Any

from drivers.modbus.config import BIT_TABLES as _BIT_TABLES
from drivers.modbus.config import Point
from drivers.modbus.convert import NOT_A_NUMBER, Convert, PointValueError, make_converter

MAX_REGISTERS = 125  # per read request, by the protocol
MAX_BITS = 2000
BIT_TABLES = frozenset(_BIT_TABLES)
TABLE_ORDER = ("holding", "input", "coil", "discrete")

ILLEGAL_ADDRESS = 2
__all__ = [
    "ILLEGAL_ADDRESS", "NOT_A_NUMBER", "Block", "Lane", "decode_bits", "decode_register_bytes", "decode_registers",
    "exception_text", "fail_block", "make_block", "plan_reads", "split_block",
]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

# struct code of each type (a bool in a register is read as uint16 and compared with 0)
_CODE = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float32": "f", "float64": "d", "bool": "H", "float16": "e", "int8": "b", "uint8": "B",
}
# byte_order -> (unpack the byte-swapped buffer, unpack little-endian)
_ORDER = {"ABCD": (False, False), "CDAB": (True, True), "BADC": (True, False), "DCBA": (False, True)}

# conversion after unpacking (CUSTOM: the point's own function, see convert.py)
PLAIN, SCALED, FLOAT, FLOAT_SCALED, BOOL, CUSTOM = range(6)

Target = tuple[int, int, float, float, Convert | None]  # point index, conversion, scale, offset, custom


@dataclass(frozen=True, slots=True)
class Lane:
    """One ``struct`` unpack over a block: points of one byte-order class that do not overlap."""

    swapped: bool  # unpack the byte-swapped buffer
    unpack: Callable[[bytes], tuple[Any, ...]]
    targets: tuple[Target, ...]
    # When every target is a plain integer and their indices run consecutively: where the whole
    # unpack lands in the values, in one slice assignment.
    plain: slice | None = None


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``.

    ``indices`` are the points it serves, by position in the device's point list. Register blocks
    carry their ``lanes``; bit blocks carry ``bits``: (point index, offset from start, custom
    conversion or None).
    """

    table: str
    start: int
    count: int
    indices: tuple[int, ...]
    lanes: tuple[Lane, ...] = ()
    bits: tuple[tuple[int, int, Convert | None], ...] = ()
    pack_be: Callable[..., bytes] | None = None  # registers (ints) -> big-endian bytes
    swapped: bool = False  # some lane unpacks the byte-swapped buffer

    @property
    def is_bits(self) -> bool:
        """True for coil and discrete-input blocks."""
        return self.table in BIT_TABLES


def exception_text(code: int) -> str:
    """A Modbus exception code as an error message: ``exception 2 (illegal data address)``."""
    name = EXCEPTION_NAMES.get(code)
    return f"exception {code} ({name})" if name else f"exception {code}"


def plan_reads(
    points: Sequence[Point],
    *,
    max_gap: int = 16,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
    only: Collection[int] | None = None,
) -> list[Block]:
    """Group points per table, sorted by address, into as few blocks as the limits allow.

    Two neighbours share a block when at most ``max_gap`` unused addresses lie between them and
    the block stays within ``max_registers`` (register tables) or ``max_bits`` (bit tables).
    Blocks come out in table order (holding, input, coil, discrete), then by address.
    ``only``: plan just these point indices (the blocks still index the whole ``points``).
    """
    blocks: list[Block] = []
    for table in TABLE_ORDER:
        indices = sorted(
            (i for i, p in enumerate(points) if p.table == table and (only is None or i in only)),
            key=lambda i: (points[i].address, points[i].span),
        )
        if not indices:
            continue
        limit = max_bits if table in BIT_TABLES else max_registers
        group: list[int] = []
        start = end = 0
        for i in indices:
            address, stop = points[i].address, points[i].address + points[i].span
            if group and address - end <= max_gap and max(end, stop) - start <= limit:
                group.append(i)
                end = max(end, stop)
                continue
            if group:
                blocks.append(make_block(points, table, group))
            group, start, end = [i], address, stop
        blocks.append(make_block(points, table, group))
    return blocks


def split_block(points: Sequence[Point], block: Block) -> list[Block]:
    """One block per point of ``block``: used when a coalesced read hits an address the device lacks."""
    return [make_block(points, block.table, [i]) for i in block.indices]


def make_block(points: Sequence[Point], table: str, indices: Sequence[int]) -> Block:
    """Build the block reading ``indices`` (points of ``table``), with its decoding precomputed."""
    start = min(points[i].address for i in indices)
    count = max(points[i].address + points[i].span for i in indices) - start
    if table in BIT_TABLES:
        bits = tuple((i, points[i].address - start, make_converter(points[i])) for i in indices)
        return Block(table, start, count, tuple(indices), bits=bits)
    lanes = _build_lanes(points, indices, start)
    return Block(
        table,
        start,
        count,
        tuple(indices),
        lanes=lanes,
        pack_be=struct.Struct(f">{count}H").pack,
        swapped=any(lane.swapped for lane in lanes),
    )


def _build_lanes(points: Sequence[Point], indices: Sequence[int], start: int) -> tuple[Lane, ...]:
    """Partition a register block's points into lanes: one per byte-order class, more on overlap."""
    # per lane under construction: [swapped, little, cursor (register), format parts, targets]
    building: list[list[Any]] = []
    for i in sorted(indices, key=lambda i: points[i].address):
        point = points[i]
        swapped, little, code = _layout(point)
        lane = next(
            (b for b in building if b[0] == swapped and b[1] == little and b[2] <= point.address),
            None,
        )
        if lane is None:
            lane = [swapped, little, start, [], []]
            building.append(lane)
        if point.address > lane[2]:
            lane[3].append(f"{2 * (point.address - lane[2])}x")
        lane[3].append(code)
        lane[4].append((i, *_conversion(point)))
        lane[2] = point.address + point.span
    return tuple(
        Lane(swapped, struct.Struct(("<" if little else ">") + "".join(parts)).unpack_from, tuple(targets),
             _plain_slice(targets))
        for swapped, little, _, parts, targets in building
    )


def _plain_slice(targets: Sequence[Target]) -> slice | None:
    """The slice of the values a lane fills when all its targets are plain integers in index order."""
    first = targets[0][0]
    for k, (index, conversion, _scale, _offset, _custom) in enumerate(targets):
        if conversion != PLAIN or index != first + k:
            return None
    return slice(first, first + len(targets))


def _layout(point: Point) -> tuple[bool, bool, str]:
    """How a point unpacks: (from the byte-swapped buffer, little-endian, struct format)."""
    if point.type in ("int8", "uint8"):
        code = _CODE[point.type]
        return False, False, f"x{code}" if point.byte == "low" else f"{code}x"
    if point.type == "string":
        # Only the byte swap applies to text: BADC/DCBA devices swap the two characters of a register.
        return point.byte_order in ("BADC", "DCBA"), False, f"{2 * point.span}s"
    swapped, little = _ORDER[point.byte_order]
    return swapped, little, _CODE[point.type]


def _conversion(point: Point) -> tuple[int, float, float, Convert | None]:
    custom = make_converter(point)
    if custom is not None:
        return CUSTOM, point.scale, point.offset, custom
    if point.type == "bool":
        return BOOL, 1.0, 0.0, None
    identity = point.scale == 1 and point.offset == 0
    if point.type.startswith("float"):
        return (FLOAT if identity else FLOAT_SCALED), point.scale, point.offset, None
    return (PLAIN if identity else SCALED), point.scale, point.offset, None


def decode_registers(
    block: Block, registers: Sequence[int], values: list[Any], errors: dict[int, str]
) -> None:
    """Decode a register block's response into ``values`` (by point index); problems go to ``errors``.

    Ints stay ints unless scaled; a NaN or infinite float becomes None with "not a number";
    a point's own conversion (bit, string, sentinels, value map) may fail it with its message.
    """
    if len(registers) != block.count:
        fail_block(block, f"bad response ({len(registers)} registers, expected {block.count})", errors)
        return
    assert block.pack_be is not None  # every register block has one
    decode_register_bytes(block, block.pack_be(*registers), values, errors)


def decode_register_bytes(block: Block, data: bytes, values: list[Any], errors: dict[int, str]) -> None:
    """Like ``decode_registers``, from the registers as big-endian bytes (the answer's data on the wire)."""
    if len(data) != 2 * block.count:
        fail_block(block, f"bad response ({len(data) // 2} registers, expected {block.count})", errors)
        return
    swapped = _swap_bytes(data) if block.swapped else b""
    for lane in block.lanes:
        raw = lane.unpack(swapped if lane.swapped else data)
        if lane.plain is not None:
            values[lane.plain] = raw
            continue
        for (index, conversion, scale, offset, custom), value in zip(lane.targets, raw, strict=True):
            if conversion == PLAIN:
                values[index] = value
            elif conversion == SCALED:
                values[index] = value * scale + offset
            elif conversion == BOOL:
                values[index] = value != 0
            elif conversion == CUSTOM:
                _convert(custom, value, index, values, errors)  # type: ignore[arg-type]
            elif not isfinite(value):
                errors[index] = NOT_A_NUMBER
            elif conversion == FLOAT:
                values[index] = value
            elif isfinite(scaled := value * scale + offset):
                values[index] = scaled
            else:  # a float64 near its largest, scaled up
                errors[index] = NOT_A_NUMBER


def _swap_bytes(data: bytes) -> bytes:
    """``data`` with the two bytes of every register swapped (four slice copies, no per-register work)."""
    out = bytearray(len(data))
    out[0::2] = data[1::2]
    out[1::2] = data[0::2]
    return bytes(out)


def decode_bits(block: Block, bits: Sequence[bool], values: list[Any], errors: dict[int, str]) -> None:
    """Decode a coil or discrete-input block's response (bits, padded to a multiple of 8)."""
    if len(bits) < block.count:
        fail_block(block, f"bad response ({len(bits)} bits, expected {block.count})", errors)
        return
    for index, offset, custom in block.bits:
        if custom is None:
            values[index] = bool(bits[offset])
        else:
            _convert(custom, bool(bits[offset]), index, values, errors)


def _convert(custom: Convert, raw: Any, index: int, values: list[Any], errors: dict[int, str]) -> None:
    try:
        values[index] = custom(raw)
    except PointValueError as exc:
        errors[index] = str(exc)


def fail_block(block: Block, reason: str, errors: dict[int, str]) -> None:
    """Give every point of ``block`` the error ``reason``."""
    for index in block.indices:
        errors[index] = reason
