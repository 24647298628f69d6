"""Config pieces shared by the serial drivers: the port settings, aggregation, text escapes.

Every serial driver (``serial_line``, ``pms5003``, ``sds011``) takes the same ``connection``
mapping and the same ``aggregate`` / ``stale_after`` keys, so a technician learns them once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.fields import Duration

Aggregate = Literal["last", "mean", "min", "max"]

# stale_after when the config gives none: this many poll intervals, but never less than the floor.
STALE_INTERVALS = 3
STALE_FLOOR = 30.0


class SerialSettings(BaseModel):
    """How to open the port: the same keys as a Modbus RTU connection, without the Modbus ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serial_port: str = Field(min_length=1)
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    def serial_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``serial.serial_for_url`` (pyserial's own constants are the letters)."""
        return {
            "baudrate": self.baudrate,
            "parity": self.parity,
            "stopbits": self.stopbits,
            "bytesize": self.bytesize,
            "exclusive": True,  # a second process on the line would garble both
        }


def default_stale_after(interval: float) -> float:
    """``stale_after`` when the config gives none: 3 poll intervals, at least 30 s."""
    return max(STALE_INTERVALS * interval, STALE_FLOOR)


_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "\\": "\\", "0": "\0"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt0\\])")


def unescape(text: str) -> str:
    r"""Turn the escapes ``\r``, ``\n``, ``\t``, ``\0``, ``\\`` and ``\xHH`` written literally into characters.

    YAML turns ``"\r\n"`` (double quotes) into CR LF itself, but ``'\r\n'`` or a bare ``\r\n``
    stay four characters; both spellings must mean the same to a technician.
    """

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code[1:], 16)) if code[0] == "x" else _ESCAPES[code]

    return _ESCAPE.sub(one, text)


def _unescaped(value: object) -> object:
    return unescape(value) if isinstance(value, str) else value


Escaped = Annotated[str, BeforeValidator(_unescaped)]
"""A string in which ``\\r``, ``\\n``, ``\\t`` and ``\\xHH`` written literally are control characters."""


class StreamOptions(BaseModel):
    """Keys every serial driver has: the port, and how values between two polls are reduced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: SerialSettings
    aggregate: Aggregate = "last"
    stale_after: Duration | None = None  # None: default_stale_after(interval)


class FrameSensorOptions(StreamOptions):
    """Keys of a binary frame sensor: a reporting ``mode`` (its query mode is ``QUERY_MODE``),
    the answer ``timeout`` of that mode, and which ``points`` to report (subclasses define
    ``mode`` and ``points``)."""

    QUERY_MODE: ClassVar[str] = "query"
    timeout: Duration | None = None  # query mode only; the driver has its default

    @field_validator("points", check_fields=False)
    @classmethod
    def _points(cls, points: tuple[str, ...]) -> tuple[str, ...]:
        if not points:
            raise ValueError("list at least one point")
        check_unique(points)
        return points

    @model_validator(mode="after")
    def _mode_keys(self) -> FrameSensorOptions:
        mode = getattr(self, "mode", None)
        check_mode_keys(self, query=mode == self.QUERY_MODE, query_mode=self.QUERY_MODE)
        return self


def check_one_device_per_port(devices: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """A streaming sensor owns its line: report each device naming a port an earlier one named.

    ``devices`` are (device name, config with ``connection.serial_port``) pairs in config order.
    """
    first: dict[str, str] = {}
    problems = []
    for name, config in devices:
        port = config.connection.serial_port
        if port in first:
            problems.append((name, f"devices {name!r} and {first[port]!r} both use {port}; "
                                   "a serial sensor needs a port of its own"))
        else:
            first[port] = name
    return problems


def check_mode_keys(config: StreamOptions, *, query: bool, query_mode: str) -> None:
    """``timeout`` belongs to the query mode, ``stale_after`` to streaming: reject the other one.

    ``query_mode`` is how the driver names its query mode (``query``, ``passive``). Raises
    ValueError (pydantic turns it into a config error at the device entry).
    """
    if query and config.stale_after is not None:
        raise ValueError(f"stale_after is for streaming; in mode {query_mode} each poll waits `timeout` for the answer")
    if not query and getattr(config, "timeout", None) is not None:
        raise ValueError(f"timeout is for mode {query_mode}; a streaming device uses stale_after")


def check_unique(names: Sequence[str], what: str = "point") -> None:
    """ValueError naming the first repeated name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} name {name!r}")
        seen.add(name)
