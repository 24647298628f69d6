"""A stand-in for chronyd's monitoring port: answers tracking requests the way chronyd does.

chronyd listens on UDP 127.0.0.1:323 (its ``cmdport``); this one listens on a free port. It checks a
request as chronyd does (protocol version 6, a request packet, command REQ_TRACKING 33, padded to
the 104 bytes of the reply; anything else gets no answer) and replies with a tracking report:
synchronized (a reference id, stratum 3, leap status normal) or not (reference id 0, stratum 0,
leap status 3, "unsynchronised"), as ``synced`` says at that moment. The layout is written out here
on its own, not taken from gateway.publish.chrony, so a mistake there does not hide in both.
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

from tests.support.ports import free_port

TRACKING_LENGTH = 104


class ChronyResponder:
    """Answers chronyd's tracking requests on 127.0.0.1:``port`` from a thread; a context manager."""

    def __init__(self, *, synced: bool = False, host: str = "127.0.0.1") -> None:
        self.synced = synced
        self.requests = 0  # tracking requests answered
        self.refused = 0  # datagrams that were not a well-formed tracking request
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.05)  # how soon the thread notices close()
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chrony-responder", daemon=True)
        self._thread.start()

    def __enter__(self) -> ChronyResponder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                data, peer = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            reply = self._reply(data)
            if reply is None:
                self.refused += 1
                continue
            self.requests += 1
            self._sock.sendto(reply, peer)

    def _reply(self, data: bytes) -> bytes | None:
        if len(data) != TRACKING_LENGTH:
            return None
        version, kind, command, sequence = struct.unpack_from("!BB2xH2xI", data)
        if (version, kind, command) != (6, 1, 33) or any(data[20:]):
            return None
        if self.synced:
            ref_id, stratum, leap = 0xC0A80001, 3, 0
        else:
            ref_id, stratum, leap = 0, 0, 3
        # version, type 2 (reply), command, reply RPY_TRACKING 5, status 0, sequence echoed
        head = struct.pack("!BB2xHHH6xI8x", 6, 2, 33, 5, 0, sequence)
        address = struct.pack("!I12xH2x", ref_id, 1)  # the reference's IPv4 address, family 1
        report = struct.pack("!I", ref_id) + address + struct.pack("!HH", stratum, leap)
        return (head + report).ljust(TRACKING_LENGTH, b"\0")


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 nothing listens on (a datagram to it is refused: ICMP unreachable)."""
    return free_port(socket.SOCK_DGRAM)
