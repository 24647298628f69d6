"""An open serial port on the event loop: bytes in through a callback, bytes out through write().

pyserial-asyncio-fast reads the port from the event loop's own reader callback (no thread, no
busy loop) and hands every chunk to ``on_data`` at once; the parsers are incremental and cheap,
so nothing blocks the loop. The port is opened with ``exclusive=True`` (a second process cannot
open it and garble the line). When the port vanishes (USB adapter unplugged: a read error, the
device file gone) ``lost`` says why; the owner then closes it and opens it again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from drivers.serialio.settings import SerialSettings
from gateway.driver import DriverError

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0  # seconds to wait for the transport to release the port


class SerialPort:
    """One serial port, opened by ``open()`` and released by ``close()``.

    ``on_data(chunk)`` is called on the event loop for every chunk read; ``on_lost()`` once when
    the port fails (not when ``close()`` is called).
    """

    def __init__(
        self,
        settings: SerialSettings,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.name = settings.serial_port
        self._on_data = on_data
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._closed: asyncio.Future[None] | None = None
        self._closing = False
        self.lost: str | None = None  # why the port failed, None while it is fine

    async def open(self) -> None:
        """Open the port; DriverError naming the port and the reason when it cannot be opened."""
        import serial  # lazily: a config without serial devices never loads pyserial
        import serial_asyncio_fast

        loop = asyncio.get_running_loop()
        self.lost = None
        self._closing = False
        self._closed = loop.create_future()
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: _Protocol(self), self.name, **self.settings.serial_kwargs()
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._closed = None
            raise DriverError(f"cannot open serial port {self.name}: {_open_reason(exc)}") from None
        self._transport = transport
        log.debug("serial port %s open", self.name)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (never blocks); DriverError if the port is not usable."""
        if self._transport is None or self._transport.is_closing():
            raise DriverError(self.gone_message() if self.lost else f"serial port {self.name} is not open")
        self._transport.write(data)

    def gone_message(self) -> str:
        """The error a poll reports once the port failed."""
        return f"serial port {self.name} is gone: {self.lost}"

    async def close(self) -> None:
        """Release the port and wait (briefly) until the file descriptor is closed."""
        transport, self._transport = self._transport, None
        closed = self._closed
        if transport is not None and not transport.is_closing():
            self._closing = True
            transport.abort()  # nothing to flush: a command we no longer wait for may be dropped
        if closed is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(closed)
        self._closed = None

    # -- called by the protocol -----------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        self._on_data(data)

    def _lost(self, exc: BaseException | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._closing:
            return
        self.lost = _lost_reason(exc)
        log.debug("serial port %s lost: %s", self.name, self.lost)
        self._on_lost()


class _Protocol(asyncio.Protocol):
    def __init__(self, port: SerialPort) -> None:
        self._port = port

    def data_received(self, data: bytes) -> None:
        self._port._data(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._port._lost(exc)


def _open_reason(exc: BaseException) -> str:
    """Why open failed, in a technician's words (pyserial repeats the port name and errno)."""
    text = _reason(exc)
    if "exclusively lock" in text:
        return "in use by another program"
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        hint = " (is the gateway's user in group dialout?)" if code == errno.EACCES else ""
        return os.strerror(code) + hint
    return text


def _lost_reason(exc: BaseException | None) -> str:
    """Why a port failed while open; pyserial's "readiness to read but returned no data" is a hangup."""
    if exc is None:
        return "closed by the system"
    text = _reason(exc)
    return "device disconnected" if "returned no data" in text else text


def _reason(exc: Any) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
