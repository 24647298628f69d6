"""The line under a modbus device: a serial port, a serial device server, or a TCP connection.

A ``Link`` owns one pymodbus client and keeps the connection's frame gap of silence between the
end of one frame and the next request (bus pacing: the scheduler decides when a device polls,
the link only spaces frames on the wire).

Serial (RTU, ASCII) and RTU-over-TCP links are shared by every device naming the same port or
server: drivers get them from the daemon's ``SharedPool`` under the connection's ``bus_key``.
A TCP link belongs to one device. pymodbus is imported when the first client is made.

A link takes no lock: one request at a time is its caller's turn on the line
(``gateway.driver.SharedPool`` says who takes turns, and how), and within one device the
driver's own lock orders a poll, a write and a technician's read.

Writes (FC 5, 6, 15, 16) keep the same gap as reads. A ``FrameTrace`` attached as
``tracer`` records every frame sent and received (pymodbus' ``trace_packet`` hook) with each
request's outcome, for ``gateway read --trace``.

Serial ports are opened exclusively (pymodbus opens them with pyserial's ``exclusive=True``, an
flock): a port another process holds fails to open, and the message names that process.

Recovery: a link never retries a request (``retries=0``) and runs no background reconnect; the
next request after a failure opens the connection again. A serial port that disappeared (a USB
adapter unplugged) fails fast with "serial port ... is gone", and its client is thrown away, so
the port is opened afresh once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from drivers.modbus.connection import RtuOverTcpConnection, SerialConnection, TcpConnection
from drivers.modbus.decode import exception_text
from drivers.modbus.portlock import lock_holder
from drivers.modbus.trace import FrameTrace
from gateway.driver import DriverError

log = logging.getLogger(__name__)

_READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
_WRITERS = {5: "write_coil", 6: "write_register", 15: "write_coils", 16: "write_registers"}

LinkConnection = TcpConnection | RtuOverTcpConnection | SerialConnection


class LinkError(DriverError):
    """No valid answer. ``kind``: timeout, bad_frame, lost, connect, gone, busy (the serial port is
    locked by another process) or denied (no permission to open it)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Link:
    """One client, frames spaced by ``gap`` seconds; used by one task at a time (the line's turn)."""

    def __init__(self, connection: LinkConnection, *, name: str) -> None:
        self.connection = connection
        self.key = connection.bus_key
        self.where = connection.where  # "on /dev/ttyUSB0", "at 10.0.0.5:502"
        self.gap = _gap(connection)
        self.bad_frames = 0  # frames dropped for a bad CRC/LRC, since the link was made
        self._serial_port = connection.serial_port if isinstance(connection, SerialConnection) else None
        self._name = name
        self._client: Any = None
        self._readers: dict[str, Callable[..., Any]] = {}
        self._writers: dict[int, Callable[..., Any]] = {}
        self._quiet_since = 0.0  # monotonic time the line last went quiet
        self._was_open = False
        self._timeout_errors: tuple[type[BaseException], ...] = ()
        self._link_errors: tuple[type[BaseException], ...] = ()
        self.tracer: FrameTrace | None = None  # set while a technician traces requests

    @property
    def connected(self) -> bool:
        """True while the client holds an open connection or port."""
        return self._client is not None and bool(self._client.connected)

    async def open(self, timeout: float) -> None:
        """Open the connection unless it is open; raises LinkError (kind connect or gone)."""
        await self._open(timeout)

    async def read(self, table: str, start: int, count: int, *, unit: int, timeout: float) -> Any:
        """Send one read request and return the pymodbus response (exception responses included).

        Raises LinkError when no valid answer came: ``timeout``, ``bad_frame`` (the answer failed
        its CRC/LRC), ``lost`` (connection dropped), ``connect`` or ``gone`` (port vanished).
        """
        return await self._exchange(lambda: self._readers[table](start, count=count, device_id=unit), unit, timeout)

    async def write(self, function: int, address: int, payload: Any, *, unit: int, timeout: float) -> Any:
        """Send one write request (FC 5, 6, 15 or 16) and return the response, like ``read``.

        ``payload``: a bool (FC5), an int (FC6), a list of bools (FC15) or of ints (FC16).
        """
        return await self._exchange(
            lambda: self._writers[function](address, payload, device_id=unit), unit, timeout
        )

    async def _exchange(self, send: Callable[[], Any], unit: int, timeout: float) -> Any:
        await self._open(timeout)
        wait = self._quiet_since + self.gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # bus pacing: silence between frames on the wire
        try:
            return await self._request(send, unit, timeout)
        finally:
            self._quiet_since = time.monotonic()

    def close(self) -> None:
        """Close the connection; a later request opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _open(self, timeout: float) -> None:
        if self._port_gone():
            raise LinkError(self._missing_port(), "gone")
        if self._client is None:
            self._client = self._make_client()
        if self._client.connected:
            return
        self._set_timeout(timeout)
        started = time.monotonic()
        try:
            connected = await self._client.connect()
        except Exception as exc:  # pymodbus passes on what it does not expect, e.g. termios.error
            self.close()
            what = self.where.split(" ", 1)[1]
            raise LinkError(f"cannot open {what}: {type(exc).__name__}: {exc}", "connect") from exc
        if connected:
            self._was_open = True
            return
        self.close()
        raise LinkError(*self._connect_failure(time.monotonic() - started, timeout))

    async def _request(self, send: Callable[[], Any], unit: int, timeout: float) -> Any:
        self._set_timeout(timeout)
        tracer = self.tracer
        if tracer is None:
            return await self._request_once(send, unit, timeout)
        tracer.begin()
        note = "no answer"
        try:
            response = await self._request_once(send, unit, timeout)
            note = _outcome(response)
            return response
        except LinkError as exc:
            note = {"bad_frame": "CRC error" if self.connection.transport != "ascii" else "LRC error",
                    "timeout": f"timeout after {timeout:g} s"}.get(exc.kind, str(exc))
            raise
        finally:
            tracer.end(note)

    async def _request_once(self, send: Callable[[], Any], unit: int, timeout: float) -> Any:
        bad_before = self.bad_frames
        try:
            return await send()
        except self._timeout_errors as exc:
            if self._port_gone():
                raise LinkError(self._missing_port(), "gone") from exc
            if self.bad_frames > bad_before:
                check = "LRC" if self.connection.transport == "ascii" else "CRC"
                raise LinkError(
                    f"bad answer from unit {unit} {self.where} ({check} error: check wiring, baud rate, parity)",
                    "bad_frame",
                ) from exc
            if self.key is None:
                self.close()  # TCP: a rebooted device has forgotten this connection
            raise LinkError(f"no response from unit {unit} {self.where} (timeout {timeout}s)", "timeout") from exc
        except self._link_errors as exc:
            self.close()
            if self._port_gone():
                raise LinkError(self._missing_port(), "gone") from exc
            raise LinkError(f"no response from unit {unit} {self.where} (connection lost)", "lost") from exc

    def _port_gone(self) -> bool:
        """True (and the client thrown away) when the serial port's device node has disappeared."""
        # A stat of a /dev node: microseconds, and it spares a timeout on a port that is not there.
        if self._serial_port is None or os.path.exists(self._serial_port):
            return False
        self.close()
        return True

    def _missing_port(self) -> str:
        state = "is gone" if self._was_open else "does not exist"
        return f"serial port {self._serial_port} {state}"

    def _connect_failure(self, elapsed: float, timeout: float) -> tuple[str, str]:
        """Why a connect failed, and the LinkError kind: ``denied``, ``busy`` or ``connect``."""
        port = self._serial_port
        if port is not None:
            if not os.access(port, os.R_OK | os.W_OK):
                return f"no permission to open serial port {port}", "denied"
            holder = lock_holder(port)  # the exclusive lock of another process (the daemon, a tool)
            if holder is not None:
                return f"serial port {port} is in use by {holder.describe()}", "busy"
            return f"cannot open serial port {port} (in use by another program?)", "connect"
        address = self.where.removeprefix("at ")
        # pymodbus reports only False; the time taken tells a refusal from silence.
        if elapsed >= 0.9 * timeout:
            return f"no connection to {address} within {timeout}s", "connect"
        return f"cannot connect to {address} (refused or unreachable)", "connect"

    def _set_timeout(self, timeout: float) -> None:
        # Devices sharing a link may differ in timeout; one request runs at a time, so the
        # client's single timeout is set to the asking device's before each request.
        params = getattr(getattr(self._client, "ctx", None), "comm_params", None)
        if params is not None:
            params.timeout_connect = timeout

    def _count_bad_frame(self) -> None:
        self.bad_frames += 1

    def _make_client(self) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        from drivers.modbus import blockpdu

        # pymodbus logs every failed connect and timeout; the scheduler logs state changes instead.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

        self._timeout_errors = (ModbusIOException, asyncio.TimeoutError)
        self._link_errors = (ConnectionException, OSError)
        client = _new_client(self.connection, self._name, self._trace_packet)
        blockpdu.register(client)  # register answers as bytes: no per-register decoding in pymodbus
        _watch_frames(client, self._count_bad_frame)
        _guard_frames(client, self._count_bad_frame)
        self._readers = {table: getattr(client, method) for table, method in _READERS.items()}
        self._writers = {function: getattr(client, method) for function, method in _WRITERS.items()}
        return client

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus' hook on every packet: a no-op unless a technician is tracing.
        if self.tracer is not None:
            self.tracer.packet(sending, data)
        return data


def _gap(connection: LinkConnection) -> float:
    if isinstance(connection, SerialConnection):
        return connection.gap
    if isinstance(connection, RtuOverTcpConnection):
        return connection.frame_gap
    return 0.0


def _outcome(response: Any) -> str:
    """How a trace notes a response: "" for a valid answer, else the exception it carries."""
    if not response.isError():
        return ""
    return exception_text(response.exception_code)


def _new_client(conn: LinkConnection, name: str, trace_packet: Callable[[bool, bytes], bytes]) -> Any:
    """A pymodbus client for ``conn``: one attempt per request, no background reconnect."""
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    # retries=0: each retry costs a full timeout on a dead unit, and on a shared line that time
    # is taken from the live units; the scheduler's backoff decides when to try a dead unit again.
    # reconnect_delay=0: no background reconnect task racing the scheduler; a request reconnects.
    common: dict[str, Any] = {
        "name": name, "timeout": conn.timeout, "retries": 0, "reconnect_delay": 0, "trace_packet": trace_packet,
    }
    if isinstance(conn, SerialConnection):
        return AsyncModbusSerialClient(
            conn.serial_port,
            framer=FramerType.RTU if conn.transport == "rtu" else FramerType.ASCII,
            baudrate=conn.baudrate,
            bytesize=conn.bytesize,
            parity=conn.parity,
            stopbits=conn.stopbits,
            **common,
        )
    if isinstance(conn, RtuOverTcpConnection):
        return AsyncModbusTcpClient(conn.host, port=conn.port, framer=FramerType.RTU, **common)
    return AsyncModbusTcpClient(conn.host, port=conn.port, **common)


def _guard_frames(client: Any, on_bad: Callable[[], None]) -> None:
    """Make an undecodable answer a dropped frame, not an exception inside asyncio's callback.

    pymodbus raises from its receive callback on an unknown function code, a lying byte count, or
    (ASCII) non-hex text; asyncio then logs a traceback per frame and the request times out anyway.
    Here the bytes are consumed, the frame counted as bad, and the request times out quietly.
    """
    framer = getattr(getattr(client, "ctx", None), "framer", None)
    handle = getattr(framer, "handleFrame", None)
    if handle is None:
        return

    def guarded(data: bytes, *args: Any) -> tuple[int, Any]:
        try:
            return handle(data, *args)
        except Exception as exc:  # any decode failure of what the line carried
            log.debug("link: undecodable frame dropped: %s", exc)
            on_bad()
            return len(data), None

    framer.handleFrame = guarded


def _watch_frames(client: Any, on_bad: Callable[[], None]) -> None:
    """Call ``on_bad`` for every received frame that fails its CRC (RTU) or LRC (ASCII).

    pymodbus drops such a frame silently (the request then times out). Its RTU framer's
    ``decode`` reports a CRC failure as "bytes used, no frame"; the ASCII framer checks LRCs
    through ``check_LRC``. Both are wrapped on this client's own framer instance.
    """
    from pymodbus.framer import FramerAscii, FramerRTU

    framer = getattr(getattr(client, "ctx", None), "framer", None)
    if isinstance(framer, FramerRTU):
        decode = framer.decode

        def counting_decode(data: bytes) -> tuple[int, int, int, bytes]:
            used, dev_id, tid, frame = decode(data)
            if used and not frame:
                on_bad()
            return used, dev_id, tid, frame

        framer.decode = counting_decode  # type: ignore[method-assign]
    elif isinstance(framer, FramerAscii):
        check = framer.check_LRC

        def counting_check(data: bytes, lrc: int) -> bool:
            ok = check(data, lrc)
            if not ok:
                on_bad()
            return ok

        framer.check_LRC = counting_check  # type: ignore[method-assign]
    else:
        log.debug("link %s: no frame check to watch on %s", client, type(framer).__name__)
