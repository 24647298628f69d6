"""The body every serial driver shares: open the port, feed a parser, answer polls.

A serial driver is this class plus a parser and a config: the subclass builds its points, its
parser (see ``framing``), the record fields each point takes, and, for sensors that must be
asked, the command bytes. Two ways to get values:

- streaming (``query`` is None): the sensor talks on its own; every record goes into a
  ``Collector`` and each poll takes the aggregate of the window since the previous poll. The
  first poll after the port opened waits for the first value (up to ``stale_after``). When no
  point had a value within ``stale_after`` the poll raises DriverError.
- query: each poll writes the command and awaits the next valid record for ``timeout``; no
  answer raises DriverError. The driver never sleeps: it awaits data or a deadline.

A port that vanished (USB adapter unplugged) makes the next poll raise "serial port ... is
gone: ..."; the scheduler then closes the driver and opens it again with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.serialio.collect import Collector
from drivers.serialio.framing import Parser, Record
from drivers.serialio.port import SerialPort
from drivers.serialio.settings import SerialSettings, check_one_device_per_port, default_stale_after
from gateway.driver import DeviceInfo, DeviceProblem, DriverError
from gateway.model import PointSet, PollResult

# The first poll after open waits for data at most this long past the poll interval, so that the
# scheduler's own guard (interval + 30 s) never has to abandon the poll.
FIRST_WAIT_MARGIN = 20.0


class SerialDriver:
    """Base class of the serial drivers (see the module docstring).

    ``counters`` (since construction): the parser's ``frames``, ``replies``, ``bad_checksum``,
    ``bad_frames``, ``garbage_bytes`` (serial_line adds its own), plus ``bytes`` received,
    ``opens`` and ``port_lost``.

    After close, poll raises DriverError (the scheduler opens the driver again).
    """

    Config: ClassVar[type[BaseModel]]
    bus: str | None = None  # a serial sensor owns its port: no shared bus to take turns on

    @staticmethod
    def serial_ports(config: Any) -> set[str]:
        """The serial port this device opens (the loader checks no other driver claims it)."""
        return {config.connection.serial_port}

    def __init__(
        self,
        device: DeviceInfo,
        *,
        connection: SerialSettings,
        parser: Parser,
        points: PointSet,
        select: Sequence[int],
        numeric: Sequence[bool],
        aggregate: str = "last",
        stale_after: float | None = None,
        query: bytes | None = None,
        timeout: float = 1.0,
        setup: Sequence[bytes] = (),
    ) -> None:
        self._device = device
        self._settings = connection
        self._parser = parser
        self.points = points
        self._select = tuple(select)
        self._query = query
        self._timeout = timeout
        self._setup = tuple(setup)
        # A query answers one poll: a point it lacks is missing now, not repeated from before.
        self._stale_after = 0.0 if query else stale_after or default_stale_after(device.interval)
        self._collector = Collector(numeric, aggregate)
        self._arrived = asyncio.Event()
        self._port: SerialPort | None = None
        self._opened_at = 0.0
        self._fresh = False  # a value arrived since the port was opened
        self._own = {"bytes": 0, "opens": 0, "port_lost": 0}
        self._at_open: dict[str, int] = {}

    @classmethod
    def check_devices(cls, devices: Sequence[tuple[str, Any]]) -> list[DeviceProblem]:
        """Config check across devices: two devices cannot share one serial port."""
        return [DeviceProblem(name, message) for name, message in check_one_device_per_port(devices)]

    @property
    def counters(self) -> dict[str, int]:
        """What the parser and the port saw since the driver was made."""
        return {**self._parser.counters, **self._own}

    @property
    def port_name(self) -> str:
        return self._settings.serial_port

    async def open(self) -> None:
        """Open the port (exclusively) and send the sensor's setup commands."""
        await self.close()  # never two ports for one driver
        self._parser.reset()
        self._arrived.clear()
        self._fresh = False
        port = SerialPort(self._settings, self._on_data, self._on_lost)
        await port.open()
        self._port = port
        self._own["opens"] += 1
        self._opened_at = time.monotonic()
        self._at_open = self.counters
        for command in self._setup:
            port.write(command)

    async def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            await port.close()

    async def poll(self) -> PollResult:
        """The aggregate of the values since the last poll (streaming) or one answer (query)."""
        self._check_port()
        if self._query is not None:
            await self._ask(self._query)
        elif not self._fresh:
            await self._first_value()
        now = time.monotonic()
        values, errors = self._collector.take(now, self._stale_after)
        if len(errors) == len(values):
            raise DriverError(self._silence(now))
        return PollResult(values, errors or None)

    # -- internals ------------------------------------------------------------------------------

    def _check_port(self) -> None:
        if self._port is None:
            raise DriverError(f"serial port {self.port_name} is not open")
        if self._port.lost is not None:
            raise DriverError(self._port.gone_message())

    async def _ask(self, command: bytes) -> None:
        assert self._port is not None
        self._collector.clear_window()  # anything unsolicited before the command is not the answer
        self._arrived.clear()
        self._port.write(command)
        try:
            async with asyncio.timeout(self._timeout):
                await self._arrived.wait()
        except TimeoutError:
            self._check_port()
            raise DriverError(
                f"no valid answer on {self.port_name} within {self._timeout:g}s{self._seen()}"
            ) from None
        self._check_port()

    async def _first_value(self) -> None:
        left = self._opened_at + self._stale_after - time.monotonic()
        wait = min(left, self._device.interval + FIRST_WAIT_MARGIN)
        if wait > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        self._check_port()

    def _on_data(self, chunk: bytes) -> None:
        self._own["bytes"] += len(chunk)
        now = time.monotonic()
        for record in self._parser.feed(chunk):
            if self._collector.add(self.values_of(record), now):
                self._fresh = True
                self._arrived.set()

    def _on_lost(self) -> None:
        self._own["port_lost"] += 1
        self._arrived.set()  # wake a waiting poll: it reports the port gone

    def values_of(self, record: Record) -> list[Any]:
        """The point values of one record (the record fields the points selected)."""
        return [record[i] for i in self._select]

    def _silence(self, now: float) -> str:
        since = self._collector.newest if self._fresh and self._collector.newest else self._opened_at
        return f"no valid data on {self.port_name} for {_seconds(now - since)}{self._seen()}"

    def _seen(self) -> str:
        """What arrived since the port was opened: tells a silent line from a wrong baud rate."""
        now = self.counters
        delta = {k: now[k] - self._at_open.get(k, 0) for k in self._parser.counters}
        received = now["bytes"] - self._at_open.get("bytes", 0)
        if not received:
            return " (nothing received since the port was opened)"
        shown = ", ".join([f"{received} bytes"] + [f"{v} {k.replace('_', ' ')}" for k, v in delta.items() if v])
        return f" (since the port was opened: {shown})"


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
