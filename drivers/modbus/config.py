"""Config model of the modbus driver."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.fields import Duration, Name

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

# Registers each type occupies.
REGISTER_COUNT: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpConnection(_Strict):
    transport: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 1.0


class Point(_Strict):
    name: Name
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: PointType = "uint16"
    byte_order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @model_validator(mode="after")
    def _check_layout(self) -> Point:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"a point in table {self.table!r} must have type bool, not {self.type!r}")
        if self.address + REGISTER_COUNT[self.type] - 1 > 65535:
            raise ValueError(f"address {self.address} + {REGISTER_COUNT[self.type]} registers runs past 65535")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits) the point occupies."""
        return 1 if self.table in ("coil", "discrete") else REGISTER_COUNT[self.type]


class ModbusConfig(_Strict):
    connection: TcpConnection
    points: list[Point] = Field(min_length=1)
    # Request planning: points of one table at most max_gap unused addresses apart are read in one
    # request; max_registers / max_bits cap one request (the protocol allows 125 and 2000; some
    # devices accept less).
    max_gap: int = Field(default=16, ge=0, le=65535)
    max_registers: int = Field(default=125, ge=4, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)

    @model_validator(mode="after")
    def _unique_points(self) -> ModbusConfig:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"duplicate point name {point.name!r}")
            seen.add(point.name)
        return self
