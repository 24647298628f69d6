"""Connection settings of the modbus driver: one model per transport, and the shared-port check.

``transport`` picks the model: ``tcp`` (Modbus TCP, one connection per device), ``rtu`` and
``ascii`` (a serial port, usually RS-485, shared by every device naming it) and ``rtu-over-tcp``
(RTU frames through a serial device server, shared by every device naming its host and port).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.fields import Duration, parse_duration


def parse_gap(value: object) -> float:
    """Seconds for a pause that may be zero: ``0``, ``"0ms"``, ``"5ms"``, ``0.004``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    if isinstance(value, str) and value.strip().rstrip("ms").strip() in ("0", "0.0"):
        return 0.0
    return parse_duration(value)


Gap = Annotated[float, BeforeValidator(parse_gap)]
"""Seconds, >= 0, accepted like a Duration ("4ms", "0ms", 0.004)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpConnection(_Strict):
    """Modbus TCP: one connection per device."""

    transport: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 1.0

    @property
    def bus_key(self) -> str | None:
        """None: a TCP device has a connection of its own."""
        return None

    @property
    def where(self) -> str:
        """How messages name the connection: ``at 10.0.0.5:502``."""
        return f"at {self.host}:{self.port}"


def _serial_unit(value: int) -> int:
    if not 1 <= value <= 247:
        raise ValueError(f"unit id {value} is not usable on a serial line (1 to 247; 0 is broadcast)")
    return value


class RtuOverTcpConnection(_Strict):
    """RTU frames through a TCP serial device server; shared by every device naming host:port."""

    transport: Literal["rtu-over-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 0.5
    frame_gap: Gap = 0.0

    @field_validator("unit_id")
    @classmethod
    def _serial_unit_id(cls, value: int) -> int:
        return _serial_unit(value)

    @property
    def bus_key(self) -> str:
        """The SharedPool key and scheduler bus: ``rtu-over-tcp:host:port``."""
        return f"rtu-over-tcp:{self.host}:{self.port}"

    @property
    def where(self) -> str:
        return f"at {self.host}:{self.port}"

    def port_settings(self) -> dict[str, Any]:
        """The settings every device on this server must agree on."""
        return {"frame_gap": self.frame_gap}


class SerialConnection(_Strict):
    """Modbus RTU or ASCII on a serial port; shared by every device naming the port."""

    transport: Literal["rtu", "ascii"]
    serial_port: str = Field(min_length=1)
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 0.5
    frame_gap: Gap | None = None  # None: 3.5 character times (RTU), 0 (ASCII)

    @field_validator("unit_id")
    @classmethod
    def _serial_unit_id(cls, value: int) -> int:
        return _serial_unit(value)

    @model_validator(mode="after")
    def _rtu_is_eight_bit(self) -> SerialConnection:
        if self.transport == "rtu" and self.bytesize != 8:
            raise ValueError("Modbus RTU needs bytesize 8 (7 data bits are for transport: ascii)")
        return self

    @property
    def bus_key(self) -> str:
        """The SharedPool key and scheduler bus: ``serial:/dev/ttyUSB0``."""
        return f"serial:{self.serial_port}"

    @property
    def where(self) -> str:
        return f"on {self.serial_port}"

    @property
    def gap(self) -> float:
        """Seconds of silence kept between frames on the line."""
        if self.frame_gap is not None:
            return self.frame_gap
        if self.transport == "ascii":
            return 0.0
        if self.baudrate > 19200:
            return 0.00175  # the fixed value the RTU spec gives for fast lines
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return 3.5 * bits / self.baudrate

    def port_settings(self) -> dict[str, Any]:
        """The settings every device on this port must agree on."""
        return {
            "transport": self.transport,
            "baudrate": self.baudrate,
            "parity": self.parity,
            "stopbits": self.stopbits,
            "bytesize": self.bytesize,
            "frame_gap": self.frame_gap,  # as configured: None (auto) follows the baud rate
        }


Connection = Annotated[
    TcpConnection | RtuOverTcpConnection | SerialConnection, Field(discriminator="transport")
]


def check_shared_ports(devices: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Devices that share a port or server must agree on its settings.

    ``devices`` are (device name, ModbusConfig) pairs, in config order. Returns one (device
    name, message) per device whose settings differ from the first device naming the same
    port, e.g. ``devices 'meter-2' and 'meter-1' both use /dev/ttyUSB0 with different settings
    (baudrate 19200 vs 9600)``.
    """
    first: dict[str, tuple[str, dict[str, Any]]] = {}
    problems: list[tuple[str, str]] = []
    for name, config in devices:
        conn = config.connection
        key = conn.bus_key
        if key is None:
            continue
        settings = conn.port_settings()
        if key not in first:
            first[key] = (name, settings)
            continue
        other, expected = first[key]
        diffs = [
            f"{field} {_show(settings[field])} vs {_show(expected[field])}"
            for field in settings
            if settings[field] != expected[field]
        ]
        if diffs:
            port = key.split(":", 1)[1]
            problems.append(
                (name, f"devices {name!r} and {other!r} both use {port} with different settings ({', '.join(diffs)})")
            )
    return problems


def _show(value: Any) -> str:
    if value is None:
        return "auto"  # frame_gap not set
    if isinstance(value, float):
        return f"{value * 1000:.3g}ms"  # only frame_gap is a float
    return str(value)
