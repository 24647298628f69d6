"""Per-point conversions that plain scaling cannot express: bits, strings, sentinels, value maps.

``make_converter(point)`` returns None for a point the block decoder handles with its fast
paths (a number, maybe scaled; a bool that is "register not 0"), else a function from the raw
unpacked value to the reported one. That function raises ``PointValueError`` (its text is the
point's error) when the raw value means "no data" or has no mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from math import isfinite
from typing import Any

from drivers.modbus.config import INT_BITS, Point

NOT_A_NUMBER = "not a number"

Convert = Callable[[Any], Any]


class PointValueError(ValueError):
    """The raw value of a point is not a measurement; the message is the point's error."""


def make_converter(point: Point) -> Convert | None:
    """The conversion of ``point`` from its raw value, or None when no special one is needed."""
    if point.type == "string":
        return _string(point.encoding or "ascii")
    steps: list[Convert] = []
    if point.bit is not None:
        steps.append(_bit(point.bit))
    elif point.type == "bool" and point.value_map is not None:
        steps.append(bool)  # a register bool is "not 0"; a coil's bit is a bool already
    if point.invalid_values:
        steps.append(_sentinels(point))
    if point.value_map is not None:
        steps.append(_mapping(point.value_map))
    elif steps and point.type.startswith("float"):
        steps.append(_finite(point.scale, point.offset))
    elif steps and (point.scale != 1 or point.offset != 0):
        steps.append(_scaled(point.scale, point.offset))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else _chain(steps)


def _chain(steps: list[Convert]) -> Convert:
    def convert(raw: Any) -> Any:
        for step in steps:
            raw = step(raw)
        return raw

    return convert


def _bit(bit: int) -> Convert:
    mask = 1 << bit

    def convert(raw: int) -> bool:
        return raw & mask != 0

    return convert


def _string(encoding: str) -> Convert:
    def convert(raw: bytes) -> str:
        # A device pads with NULs or spaces; text after a NUL is leftover, not content.
        text = raw.split(b"\x00", 1)[0].rstrip(b" ")
        try:
            return text.decode(encoding)
        except UnicodeDecodeError:
            raise PointValueError(f"not {encoding} text: {raw.hex(' ')}") from None

    return convert


def _sentinels(point: Point) -> Convert:
    bits = INT_BITS.get(point.type)
    if bits is None:  # a float type: compare numbers
        floats = frozenset(float(v) for v in point.invalid_values)

        def check_float(raw: float) -> float:
            if raw in floats:
                raise PointValueError(f"invalid value {raw:g} (no data)")
            return raw

        return check_float
    signed = not point.type.startswith("u")
    # A sentinel may be written as the register pattern (0xFFFF) or as the signed value (-1).
    raws = frozenset(_as_raw(v, bits, signed) for v in point.invalid_values)
    mask, digits = (1 << bits) - 1, bits // 4

    def check(raw: int) -> int:
        if raw in raws:
            raise PointValueError(f"invalid value 0x{raw & mask:0{digits}X} (no data)")
        return raw

    return check


def _as_raw(value: int | float, bits: int, signed: bool) -> int:
    value = int(value) & ((1 << bits) - 1)
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


def _mapping(value_map: dict[int, Any]) -> Convert:
    table = dict(value_map)

    def convert(raw: int | bool) -> Any:
        try:
            return table[int(raw)]
        except KeyError:
            raise PointValueError(f"unmapped value {int(raw)}") from None

    return convert


def _finite(scale: float, offset: float) -> Convert:
    identity = scale == 1 and offset == 0

    def convert(raw: float) -> float:
        value = raw if identity else raw * scale + offset
        if not isfinite(value):  # NaN or inf as sent, or a huge float that overflows its scale
            raise PointValueError(NOT_A_NUMBER)
        return value

    return convert


def _scaled(scale: float, offset: float) -> Convert:
    def convert(raw: int) -> float:
        return raw * scale + offset

    return convert
