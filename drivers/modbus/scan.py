"""Finding units on a line, for ``gateway scan``: which unit ids answer with given settings.

A ``Prober`` opens one link with one set of settings (a serial port at a baud rate and parity,
or a TCP / RTU-over-TCP server) and asks each unit id for holding register 0. Any answer counts,
an exception response included: it proves a unit with that id is there. Silence (a timeout) means
nobody; so do exceptions 10/11, a TCP gateway saying the unit behind it did not answer. An answer
that fails its CRC is reported too (as garbled): something answered, but the settings, the wiring
or two units with one id spoil it.

The serial port is opened exclusively, like the daemon's: a port another process holds (the
running gateway) cannot be scanned, and ``portlock.lock_holder`` says who holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from drivers.modbus.bus import Link, LinkError
from drivers.modbus.connection import Connection, SerialConnection
from drivers.modbus.decode import exception_text

_GATEWAY_NO_ANSWER = frozenset({10, 11})
_CONNECTION: TypeAdapter[Any] = TypeAdapter(Connection)


@dataclass(frozen=True, slots=True)
class Answer:
    """A unit that answered: its id and what it said."""

    unit: int
    what: str  # "holding 0 = 0x0000", "exception 2 (illegal data address)", "garbled answer (CRC error)"


class Prober:
    """One link with one set of settings; ``probe`` asks one unit id at a time.

    ``connection`` is a connection mapping as in a config (``transport``, ``serial_port`` or
    ``host``/``port``, ``baudrate``, ``parity``, ..., ``timeout``); its ``unit_id`` is ignored.
    Raises pydantic's ValidationError for settings a config would reject.
    """

    def __init__(self, connection: Mapping[str, Any]) -> None:
        self.connection = _CONNECTION.validate_python(dict(connection))
        self._link = Link(self.connection, name="scan")

    @property
    def settings(self) -> str:
        """The settings as a technician writes them: ``9600 8N1``, ``tcp 10.0.0.5:502``."""
        conn = self.connection
        if isinstance(conn, SerialConnection):
            framing = f"{conn.baudrate} {conn.bytesize}{conn.parity}{conn.stopbits}"
            return framing if conn.transport == "rtu" else f"{framing} ascii"
        return f"{conn.transport} {conn.host}:{conn.port}"

    async def open(self) -> None:
        """Open the port or connection; raises LinkError.

        Its ``kind`` tells a line that cannot be scanned at all (``gone``, ``busy``: held by
        another process, ``denied``) from settings this port cannot take (``connect``).
        """
        await self._link.open(self.connection.timeout)

    async def probe(self, unit: int) -> Answer | None:
        """Ask ``unit`` for holding register 0; its answer, or None when nobody answered.

        Raises LinkError when the port or connection itself fails (gone, cannot be opened).
        """
        try:
            response = await self._link.read("holding", 0, 1, unit=unit, timeout=self.connection.timeout)
        except LinkError as exc:
            if exc.kind == "bad_frame":
                check = "LRC" if self.connection.transport == "ascii" else "CRC"
                return Answer(unit, f"garbled answer ({check} error)")
            if exc.kind in ("timeout", "lost"):
                return None  # "lost": a TCP device may drop the connection for an unknown unit id
            raise
        if response.isError():
            if response.exception_code in _GATEWAY_NO_ANSWER:
                return None
            return Answer(unit, exception_text(response.exception_code))
        return Answer(unit, f"holding 0 = 0x{response.registers[0]:04X}")

    def close(self) -> None:
        """Close the port or connection."""
        self._link.close()
