"""Serial sensors in software: the device end of a socat pty pair, and the sensors' frames.

The frames are built here from the datasheets, independently of the drivers' parsers (the
checksums too), so a test compares the drivers against the documents, not against themselves.

- ``PtyPeer``: the device end of a pty (``SerialPty.a``): ``write(bytes)`` and, on an event
  loop, a handler called with every chunk the driver writes (commands).
- ``pms_frame``, ``sds_frame``, ``sds_reply``, ``nmea``: frames as the sensors send them.
- ``Pms5003Emulator``, ``Sds011Emulator``, ``LineEmulator``: answer the drivers' commands.
- ``Streamer``: a task that keeps sending frames at a fixed pace, as a sensor does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import time
from collections.abc import Callable
from pathlib import Path

# -- frames ---------------------------------------------------------------------------------------


def pms_frame(values: tuple[int, ...] | list[int], reserved: int = 0x9700) -> bytes:
    """A 32-byte PMS5003 frame: 12 values (CF=1 PMs, atmospheric PMs, 6 particle counts) + reserved."""
    assert len(values) == 12
    body = bytes([0x42, 0x4D, 0x00, 28])
    for word in (*values, reserved):
        body += bytes([word >> 8 & 0xFF, word & 0xFF])
    check = 0
    for byte in body:
        check += byte
    return body + bytes([check >> 8 & 0xFF, check & 0xFF])


def pms_ack(command: int, data: int) -> bytes:
    """The 8-byte frame a PMS5003 answers a mode change with."""
    body = bytes([0x42, 0x4D, 0x00, 0x04, command, data])
    check = sum(body)
    return body + bytes([check >> 8 & 0xFF, check & 0xFF])


def sds_frame(pm25: float, pm10: float, sensor_id: bytes = b"\xa1\x60", command: int = 0xC0) -> bytes:
    """A 10-byte SDS011 data frame (PM in µg/m³, sent as tenths, little-endian)."""
    t25, t10 = round(pm25 * 10), round(pm10 * 10)
    data = bytes([t25 % 256, t25 // 256, t10 % 256, t10 // 256]) + sensor_id
    return bytes([0xAA, command]) + data + bytes([sum(data) % 256, 0xAB])


def sds_reply(data: bytes, sensor_id: bytes = b"\xa1\x60") -> bytes:
    """A 10-byte SDS011 reply (0xC5) carrying 4 data bytes."""
    payload = data.ljust(4, b"\0") + sensor_id
    return bytes([0xAA, 0xC5]) + payload + bytes([sum(payload) % 256, 0xAB])


def nmea(body: str) -> str:
    """``$body*hh`` with the XOR checksum of ``body``."""
    check = 0
    for char in body:
        check ^= ord(char)
    return f"${body}*{check:02X}"


# -- the device end of a pty ------------------------------------------------------------------------


class PtyPeer:
    """The device's end of the line: writes frames, hands what the driver sends to ``on_data``."""

    def __init__(self, path: Path, on_data: Callable[[bytes], None] | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.on_data = on_data
        self.received = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> PtyPeer:
        """Start reading on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)
        return self

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        """Write all of ``data`` (waiting for room with a deadline; a pty buffer holds ~4 KB)."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"nobody reads {self.path}") from None
                select.select([], [self.fd], [], left)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:  # the other end is gone
            self._detach()
            return
        self.received += data
        if self.on_data is not None:
            self.on_data(data)

    def _detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None

    def close(self) -> None:
        self._detach()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _CommandBuffer:
    """Collects bytes the driver sent and cuts them into fixed-size commands after a header."""

    def __init__(self, header: bytes, size: int) -> None:
        self.header, self.size = header, size
        self.buf = bytearray()
        self.commands: list[bytes] = []

    def add(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while (start := self.buf.find(self.header)) >= 0 and len(self.buf) - start >= self.size:
            command = bytes(self.buf[start:start + self.size])
            del self.buf[:start + self.size]
            out.append(command)
        self.commands.extend(out)
        return out


class _CommandEmulator:
    """A sensor that answers framed host commands; subclasses handle each complete one."""

    def __init__(self, peer: PtyPeer, header: bytes, length: int) -> None:
        self.peer = peer
        self._commands = _CommandBuffer(header, length)
        peer.on_data = self._on_data

    @property
    def commands(self) -> list[bytes]:
        return self._commands.commands

    def _on_data(self, data: bytes) -> None:
        for cmd in self._commands.add(data):
            self._command(cmd)

    def _command(self, cmd: bytes) -> None:
        raise NotImplementedError


class Pms5003Emulator(_CommandEmulator):
    """Answers PMS5003 host commands: mode change (acknowledged), passive read (one frame)."""

    def __init__(self, peer: PtyPeer, values: list[int]) -> None:
        super().__init__(peer, b"\x42\x4d", 7)
        self.values = values
        self.passive = False

    def _command(self, cmd: bytes) -> None:
        if sum(cmd[:5]) != int.from_bytes(cmd[5:7], "big"):
            return  # a real sensor ignores a command with a bad check code
        if cmd[2] == 0xE1:
            self.passive = cmd[4] == 0
            self.peer.write(pms_ack(0xE1, cmd[4]))
        elif cmd[2] == 0xE2 and self.passive:
            self.peer.write(pms_frame(self.values))


class Sds011Emulator(_CommandEmulator):
    """Answers SDS011 commands: reporting mode and work (a 0xC5 reply), query (a data frame)."""

    def __init__(self, peer: PtyPeer, pm25: float, pm10: float, *, answer_queries: bool = True) -> None:
        super().__init__(peer, b"\xaa\xb4", 19)
        self.pm25, self.pm10 = pm25, pm10
        self.query_mode = False
        self.answer_queries = answer_queries

    def _command(self, cmd: bytes) -> None:
        if sum(cmd[2:17]) % 256 != cmd[17] or cmd[18] != 0xAB:
            return
        kind = cmd[2]
        if kind == 2:  # data reporting mode
            if cmd[3] == 1:
                self.query_mode = cmd[4] == 1
            self.peer.write(sds_reply(bytes([2, cmd[3], cmd[4]])))
        elif kind == 6:  # sleep / work
            self.peer.write(sds_reply(bytes([6, cmd[3], cmd[4]])))
        elif kind == 4 and self.answer_queries:
            self.peer.write(sds_frame(self.pm25, self.pm10))


class LineEmulator:
    """Answers each ``command`` line with ``answer()``."""

    def __init__(self, peer: PtyPeer, command: bytes, answer: Callable[[], bytes]) -> None:
        self.peer = peer
        self.command = command
        self.answer = answer
        self.seen = 0
        self._buf = bytearray()
        peer.on_data = self._on_data

    def _on_data(self, data: bytes) -> None:
        self._buf += data
        while (at := self._buf.find(self.command)) >= 0:
            del self._buf[:at + len(self.command)]
            self.seen += 1
            self.peer.write(self.answer())


class Streamer:
    """Sends ``frame()`` every ``period`` seconds from a task, as a streaming sensor does."""

    def __init__(self, peer: PtyPeer, frame: Callable[[], bytes], period: float) -> None:
        self.peer, self.frame, self.period = peer, frame, period
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Streamer:
        self._task = asyncio.create_task(self._run(), name=f"streamer:{self.peer.path.name}")
        return self

    async def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.peer.write(self.frame())
                self.sent += 1
                await asyncio.sleep(self.period)  # the sensor's own pace, not a wait for a condition

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
