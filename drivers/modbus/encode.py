"""Write encoding for the modbus driver: pure functions, no pymodbus, nothing on the wire.

``plan_write(point, value)`` checks a value against everything the config says about the point
and returns the request that writes it, or raises ``WriteRefused`` with the reason. Every check
runs here, before the driver touches the line, so a refused write sends nothing.

The value is the engineering value a reading would report: the raw value written is
``(value - offset) / scale``, range-checked for the point's type and encoded in its byte order
(the inverse of ``decode.py``). Values may come as text (from the command line): numbers are
parsed, ``true``/``false``/``on``/``off``/``1``/``0`` are booleans, and a ``value_map`` point takes
one of its labels (or a raw key).

``int8``/``uint8`` points are half a register: the driver reads the register and writes it back
with one byte replaced (``merge_byte``). That read-modify-write is not atomic on the device: if the
device itself changes the other byte between the two requests, that change is lost. A ``bit`` of
a register is never written (refused by the config): status words with live bits are common, and
a read-modify-write would overwrite them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from drivers.modbus.config import INT_BITS, Point
from gateway.driver import WriteRefused

# struct code of each register type (bool: written as a uint16 0/1 when it is a whole register)
_CODE = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float16": "e", "float32": "f", "float64": "d", "bool": "H", "int8": "b", "uint8": "B",
}
_TRUE = frozenset({"true", "on", "1", "yes"})
_FALSE = frozenset({"false", "off", "0", "no"})


@dataclass(frozen=True, slots=True)
class WritePlan:
    """One write request: ``function`` 5, 6, 15 or 16 at ``address``.

    ``registers`` (holding) or ``bits`` (coil) are the payload; ``merge_byte`` is ``"high"`` or
    ``"low"`` for an int8/uint8 point, whose register must be read and merged first (the payload
    then holds the byte alone). ``raw`` is the value before encoding, for messages.
    """

    function: int
    table: str
    address: int
    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()
    raw: Any = None
    merge_byte: str | None = None

    def describe(self) -> str:
        """What goes on the wire: ``holding 10 <- 00D7 (FC6)``."""
        if self.bits:
            payload = " ".join("1" if b else "0" for b in self.bits)
        else:
            payload = " ".join(f"{r:04X}" for r in self.registers)
            if self.merge_byte:
                payload = f"{self.merge_byte} byte {self.registers[0]:02X} (read-modify-write)"
        return f"{self.table} {self.address} <- {payload} (FC{self.function})"


def plan_write(point: Point, value: Any, *, multiple: bool = False) -> WritePlan:
    """The request writing ``value`` to ``point``; raises WriteRefused saying why it cannot.

    ``multiple``: use FC16/FC15 even for one register or coil (devices without FC6/FC5).
    """
    name = point.name
    if not point.writable:
        raise WriteRefused(f"point {name!r} is not writable (it needs writable: true in the config)")
    if point.table not in ("holding", "coil") or point.bit is not None:
        raise WriteRefused(f"point {name!r} cannot be written ({point.table}{' bit' if point.bit is not None else ''})")
    if point.value_map is not None:
        raw: Any = _unmap(point, value)
    elif point.type == "bool":
        raw = _as_bool(name, value)
    elif point.type == "string":
        return _string_plan(point, value, multiple)
    else:
        raw = _raw_number(point, _as_number(name, value))
    if point.table == "coil":
        function = 15 if multiple else 5
        return WritePlan(function, "coil", point.address, bits=(bool(raw),), raw=raw)
    registers = encode_registers(point, raw)
    function = 16 if multiple or len(registers) > 1 else 6
    merge = (point.byte or "high") if point.type in ("int8", "uint8") else None
    return WritePlan(function, "holding", point.address, registers=registers, raw=raw, merge_byte=merge)


def encode_registers(point: Point, raw: Any) -> tuple[int, ...]:
    """The registers holding ``raw`` (already range-checked) in the point's type and byte order.

    The inverse of decoding: the big-endian bytes are cut into registers, their order reversed
    for CDAB/DCBA and the two bytes of each swapped for BADC/DCBA. An int8/uint8 gives its one
    byte as the only "register" (to be merged by ``merge_byte``).
    """
    if point.type in ("int8", "uint8"):
        return (struct.pack(">" + _CODE[point.type], raw)[0],)
    data = struct.pack(">" + _CODE[point.type], int(raw) if point.type == "bool" else raw)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if point.byte_order in ("CDAB", "DCBA"):
        words.reverse()
    if point.byte_order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return tuple(int.from_bytes(w, "big") for w in words)


def merge_byte(register: int, byte: int, which: str) -> int:
    """``register`` with its ``which`` ("high" or "low") byte replaced by ``byte``."""
    if which == "low":
        return (register & 0xFF00) | (byte & 0xFF)
    return (register & 0x00FF) | ((byte & 0xFF) << 8)


def _as_number(name: str, value: Any) -> float | int:
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 0)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise WriteRefused(f"point {name!r} takes a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"point {name!r} takes a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused(f"point {name!r} takes a finite number, not {value!r}")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise WriteRefused(f"point {name!r} takes true or false (or 1, 0, on, off), not {value!r}")


def _unmap(point: Point, value: Any) -> Any:
    """The raw key of a value_map point's label (or the raw key itself)."""
    assert point.value_map is not None
    for key, label in point.value_map.items():
        if label == value and type(label) is type(value):
            return _checked_key(point, key)
        if isinstance(value, str) and isinstance(label, str | bool | int | float) and str(label) == value.strip():
            return _checked_key(point, key)
    try:
        number = _as_number(point.name, value)
    except WriteRefused:
        number = None
    if isinstance(number, int) and number in point.value_map:
        return _checked_key(point, number)
    labels = ", ".join(str(v) for v in point.value_map.values())
    raise WriteRefused(f"point {point.name!r} takes one of: {labels} (not {value!r})")


def _checked_key(point: Point, key: int) -> Any:
    if point.type == "bool":
        return bool(key)
    _check_int_range(point, key, f"value_map key {key}")
    _check_sentinel(point, key)
    return key


def _raw_number(point: Point, value: float | int) -> float | int:
    """Engineering value -> raw value: min/max first, then the type's range."""
    if point.min is not None and value < point.min:
        raise WriteRefused(f"{value:g} is below the minimum {point.min:g} of point {point.name!r}")
    if point.max is not None and value > point.max:
        raise WriteRefused(f"{value:g} is above the maximum {point.max:g} of point {point.name!r}")
    scaled = point.scale != 1 or point.offset != 0
    raw: float | int = (value - point.offset) / point.scale if scaled else value
    if point.type.startswith("float"):
        raw = float(raw)
        try:
            struct.pack(">" + _CODE[point.type], raw)
        except (OverflowError, struct.error):
            raise WriteRefused(f"{value:g} does not fit a {point.type} (point {point.name!r})") from None
        _check_sentinel(point, raw)
        return raw
    nearest = round(raw)
    if not math.isclose(raw, nearest, rel_tol=1e-9, abs_tol=1e-6):
        if not scaled:
            raise WriteRefused(f"point {point.name!r} ({point.type}) takes a whole number, not {value:g}")
        step = abs(point.scale)
        low, high = math.floor(raw) * point.scale + point.offset, math.ceil(raw) * point.scale + point.offset
        raise WriteRefused(
            f"{value:g} is not a multiple of the scale {step:g} of point {point.name!r} "
            f"(nearest: {min(low, high):g} or {max(low, high):g})"
        )
    _check_int_range(point, nearest, f"{value:g}")
    _check_sentinel(point, nearest)
    return nearest


def _check_int_range(point: Point, raw: int, shown: str) -> None:
    bits = INT_BITS.get(point.type, 16)
    signed = point.type.startswith("int")
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if not low <= raw <= high:
        detail = f" (raw {raw})" if str(raw) != shown else ""
        raise WriteRefused(f"{shown}{detail} does not fit a {point.type} ({low}..{high}) (point {point.name!r})")


def _check_sentinel(point: Point, raw: float | int) -> None:
    if point.invalid_values and any(raw == v or _as_pattern(point, v) == raw for v in point.invalid_values):
        raise WriteRefused(f"raw value {raw:g} of point {point.name!r} is one of its invalid_values (no data)")


def _as_pattern(point: Point, sentinel: float | int) -> float | int:
    """A sentinel as the raw value of the point's type: 0xFFFF is -1 for an int16, -1 is 65535 for a uint16."""
    bits = INT_BITS.get(point.type)
    if bits is None or not isinstance(sentinel, int):
        return sentinel
    value = sentinel & ((1 << bits) - 1)
    signed = point.type.startswith("int")
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


def _string_plan(point: Point, value: Any, multiple: bool) -> WritePlan:
    if not isinstance(value, str):
        raise WriteRefused(f"point {point.name!r} takes text, not {value!r}")
    encoding = point.encoding or "ascii"
    try:
        data = value.encode(encoding)
    except UnicodeEncodeError:
        raise WriteRefused(f"{value!r} is not {encoding} text (point {point.name!r})") from None
    size = 2 * point.span
    if len(data) > size:
        raise WriteRefused(f"{value!r} is {len(data)} characters; point {point.name!r} holds {size}")
    data = data.ljust(size, b"\x00")
    if point.byte_order in ("BADC", "DCBA"):
        data = b"".join(data[i : i + 2][::-1] for i in range(0, size, 2))
    registers = tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, size, 2))
    function = 16 if multiple or len(registers) > 1 else 6
    return WritePlan(function, "holding", point.address, registers=registers, raw=value)
