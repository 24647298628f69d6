"""Config model of the modbus driver: points (register layouts) and the device entry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from drivers.modbus.connection import Connection, RtuOverTcpConnection, SerialConnection, TcpConnection
from gateway.driver import DeviceProblem
from gateway.fields import Name

__all__ = [
    "ByteOrder",
    "Connection",
    "ModbusConfig",
    "Point",
    "PointType",
    "RtuOverTcpConnection",
    "SerialConnection",
    "Table",
    "TcpConnection",
]

Table = Literal["holding", "input", "coil", "discrete"]
# New types are listed after the original nine so messages listing the choices keep their start.
PointType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool",
    "int8", "uint8", "float16", "string",
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
MapValue = str | bool | int | float


def _int_key(value: Any) -> Any:
    # The config loader hands mapping keys over as text ("0", "0x10"); profiles as numbers.
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            return value  # let the model report it
    return value


MapKey = Annotated[int, BeforeValidator(_int_key)]

# Registers each type occupies (a string: its ``count``).
REGISTER_COUNT: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1, "int8": 1, "uint8": 1, "float16": 1,
}
# Width in bits of the integer types (for invalid_values).
INT_BITS: dict[str, int] = {
    "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64,
}
BIT_TABLES = ("coil", "discrete")
WRITABLE_TABLES = ("holding", "coil")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Strict):
    """One value of a device: where it sits and how its registers become a value."""

    name: Name
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: PointType = "uint16"
    byte_order: ByteOrder = "ABCD"
    byte: Literal["high", "low"] | None = None  # int8/uint8: which byte of the register (default high)
    bit: int | None = Field(default=None, ge=0, le=15)  # bool: one bit of a register, 0 = least significant
    count: int | None = Field(default=None, ge=1, le=125)  # registers (or bits) the point occupies
    encoding: Literal["ascii", "latin-1"] | None = None  # string only; default ascii
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    invalid_values: tuple[int | float, ...] = ()  # raw "no data" sentinels
    value_map: dict[MapKey, MapValue] | None = None  # raw value -> reported value
    unit: str | None = None
    writable: bool = False  # holding registers and coils only; see encode.py
    min: float | None = None  # writes: the lowest value accepted, in engineering units
    max: float | None = None  # writes: the highest
    every: int = Field(default=1, ge=1)  # read on every Nth poll of the device only (polls 0, N, 2N, ...)

    @model_validator(mode="before")
    @classmethod
    def _default_count(cls, data: Any) -> Any:
        # Every point carries its span in ``count`` (a string gives it; other types have one).
        if isinstance(data, dict) and data.get("count") is None and data.get("type") != "string":
            bits = data.get("table") in BIT_TABLES
            data = {**data, "count": 1 if bits else REGISTER_COUNT.get(str(data.get("type", "uint16")), 1)}
        return data

    @model_validator(mode="after")
    def _check_layout(self) -> Point:
        for check in (_check_table, _check_shape, _check_span, _check_conversion, _check_writable):
            problem = check(self)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def span(self) -> int:
        """Registers (or bits) the point occupies."""
        return self.count or 1


def _check_table(p: Point) -> str | None:
    if p.table in BIT_TABLES:
        if p.type != "bool":
            return f"a point in table {p.table!r} must have type bool, not {p.type!r}"
        if p.bit is not None:
            return f"bit selects a bit of a holding or input register, not of a {p.table}"
    return None


def _check_shape(p: Point) -> str | None:
    if p.bit is not None and p.type != "bool":
        return f"bit needs type bool, not {p.type!r}"
    if p.byte is not None and p.type not in ("int8", "uint8"):
        return f"byte is for int8 and uint8 points, not {p.type!r}"
    if p.encoding is not None and p.type != "string":
        return f"encoding is for string points, not {p.type!r}"
    if p.type == "string":
        return None if p.count is not None else "a string point needs count (its length in registers)"
    natural = 1 if p.table in BIT_TABLES else REGISTER_COUNT[p.type]
    if p.count != natural:
        return f"count is for string points; a {p.type} takes {natural} register{'s' if natural > 1 else ''}"
    return None


def _check_span(p: Point) -> str | None:
    if p.address + p.span - 1 > 65535:
        return f"address {p.address} + {p.span} registers runs past 65535"
    return None


def _check_conversion(p: Point) -> str | None:
    scaled = p.scale != 1 or p.offset != 0
    if scaled and p.type in ("bool", "string"):
        return f"scale and offset do not apply to {p.type} points"
    if p.invalid_values:
        problem = _check_sentinels(p)
        if problem:
            return problem
    if p.value_map is not None:
        if p.type not in INT_BITS and p.type != "bool":
            return f"value_map is for integer and bool points, not {p.type!r}"
        if scaled:
            return "value_map replaces scale and offset; give one or the other"
    return None


def _check_sentinels(p: Point) -> str | None:
    if p.type in ("bool", "string"):
        return f"invalid_values do not apply to {p.type} points"
    bits = INT_BITS.get(p.type)
    if bits is None:
        return None  # floats: any number
    for value in p.invalid_values:
        if not isinstance(value, int) or not -(2 ** (bits - 1)) <= value < 2**bits:
            return f"invalid value {value!r} does not fit a {p.type}"
    return None


def _check_writable(p: Point) -> str | None:
    if p.writable:
        if p.table not in WRITABLE_TABLES:
            return f"writable: a point in table {p.table!r} cannot be written (only holding registers and coils)"
        if p.bit is not None:
            return "writable: a bit of a register cannot be written alone (the other 15 bits would be overwritten)"
    limited = p.min is not None or p.max is not None
    if not limited:
        return None
    if not p.writable:
        return "min and max limit writes; they need writable: true"
    if p.type in ("bool", "string") or p.value_map is not None:
        what = "value_map" if p.value_map is not None else p.type
        return f"min and max do not apply to {what} points"
    if p.min is not None and p.max is not None and p.min > p.max:
        return f"min {p.min:g} is greater than max {p.max:g}"
    return None


class ModbusConfig(_Strict):
    """A modbus device entry (the keys other than name, driver, interval, enabled).

    ``profile`` names a register map in ``config/profiles/<name>.yaml`` (or
    ``/etc/gateway/profiles``): its points, ``byte_order`` and request limits are taken as if
    written here, and the entry's own points add to them or, by name, override their keys.
    """

    profile: Name | None = None
    connection: Connection
    byte_order: ByteOrder = "ABCD"  # the default of every point that sets none
    points: list[Point] = Field(min_length=1)
    # Request planning: points of one table at most max_gap unused addresses apart are read in one
    # request; max_registers / max_bits cap one request (the protocol allows 125 and 2000; some
    # devices accept less).
    max_gap: int = Field(default=16, ge=0, le=65535)
    max_registers: int = Field(default=125, ge=4, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    # Writes use FC6/FC5 for one register/coil; some devices implement only FC16/FC15.
    write_multiple: bool = False

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any, info: ValidationInfo) -> Any:
        """Merge the profile, default the transport, hand the device byte order to its points."""
        if not isinstance(data, dict):
            return data
        from drivers.modbus.profiles import apply_profile  # here: profiles imports this module

        data = dict(data)  # never change the caller's entry: the loader reports against it
        if data.get("profile") is not None:
            context = info.context if isinstance(info.context, dict) else {}
            data = apply_profile(data, context.get("profile_dirs"))
        connection = data.get("connection")
        if isinstance(connection, dict) and "transport" not in connection:
            data["connection"] = {"transport": "tcp", **connection}
        return inherit_byte_order(data)

    @model_validator(mode="after")
    def _unique_points(self) -> ModbusConfig:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"duplicate point name {point.name!r}")
            seen.add(point.name)
        if all(point.every > 1 for point in self.points):
            # Some polls would read nothing; a slower device interval says the same plainly.
            raise ValueError("every point has every > 1: give at least one point every: 1 "
                             "(or raise the device's interval instead)")
        return self


def inherit_byte_order(data: dict[str, Any]) -> dict[str, Any]:
    """Give every point mapping without a ``byte_order`` the entry's (when that one is valid)."""
    order = data.get("byte_order", "ABCD")
    points = data.get("points")
    if order not in get_args(ByteOrder) or not isinstance(points, list):
        return data
    data["points"] = [
        {**p, "byte_order": order} if isinstance(p, dict) and "byte_order" not in p else p for p in points
    ]
    return data


def overlapping_points(device: str, points: Sequence[Point]) -> list[DeviceProblem]:
    """Points of ``device`` addressing the same register or bit of the same table.

    Each overlap is reported at the point written later, naming the earlier one (whose line the
    config loader adds): ``point 'level' (holding 11) overlaps point 'temp' (holding 10-11)``.
    Bits of one register (``bit``) may share it with each other and with views of the whole register.
    """
    spans = []
    for k, point in enumerate(points):
        if point.count is None:
            return []  # a string without its count: the model has said so
        table = point.table if point.bit is None else f"{point.table} bit {point.bit}"
        spans.append((table, point.address, point.address + max(point.count, 1) - 1, k, point.name))
    spans.sort()
    problems = []
    widest: tuple[str, int, int, int, str] | None = None  # the span reaching furthest so far
    for span in spans:
        if widest is not None and widest[0] == span[0] and span[1] <= widest[2]:
            later, earlier = (span, widest) if span[3] > widest[3] else (widest, span)
            problems.append(DeviceProblem(
                device,
                f"point {later[4]!r} ({later[0]} {_span(later[1], later[2])}) overlaps point "
                f"{earlier[4]!r} ({earlier[0]} {_span(earlier[1], earlier[2])})",
                at=("points", later[3], "address"),
                see=("points", earlier[3]),
            ))
        if widest is None or widest[0] != span[0] or span[2] > widest[2]:
            widest = span
    return problems


def _span(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"
