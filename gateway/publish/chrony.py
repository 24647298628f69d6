"""Ask chronyd whether the clock is synchronized, over its monitoring port (UDP 127.0.0.1:323).

Inside the service's sandbox ``ProtectClock=`` forbids adjtimex, but chronyd answers monitoring
requests from localhost without any privilege, the way ``chronyc tracking`` asks. One request,
REQ_TRACKING of chrony's command protocol (version 6); every field is in network byte order:

request (104 bytes): version 6, packet type 1 (request), 2 reserved bytes, command 33 (u16),
    attempt (u16), sequence (u32), 2 x u32 reserved; then zero padding up to the reply's length
    (chronyd ignores shorter requests, against traffic amplification).
reply (104 bytes): version, packet type 2 (reply), 2 reserved, command (u16), reply type 5 (u16),
    status 0 = success (u16), 3 x u16 reserved, sequence echoed (u32), 2 x u32 reserved; then the
    tracking report: reference id (u32), the reference's address (20 bytes), stratum (u16), leap
    status (u16: 0 normal, 1 insert second, 2 delete second, 3 unsynchronised), and figures we do
    not need.

chronyd is synchronized when its leap status is not "unsynchronised" and it has a reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct

PORT = 323  # chronyd's default cmdport
TIMEOUT = 0.5  # seconds; chronyd on the same board answers in well under a millisecond

PROTOCOL_VERSION = 6
REQUEST, REPLY = 1, 2
REQ_TRACKING, RPY_TRACKING = 33, 5
STATUS_SUCCESS = 0
LEAP_UNSYNCHRONISED = 3

HEADER = struct.Struct("!BBxxHHI8x")  # version, type, command, attempt, sequence (20 bytes)
REPLY_HEADER = struct.Struct("!BBxxHHH6xI8x")  # version, type, command, reply, status, sequence (28 bytes)
TRACKING = struct.Struct("!I20xHH")  # reference id, (address), stratum, leap status
PACKET_LENGTH = 104  # a tracking reply: header + report up to its end; the request is padded to it


def tracking_request(sequence: int) -> bytes:
    """A REQ_TRACKING request with ``sequence``, padded to the length of its reply."""
    head = HEADER.pack(PROTOCOL_VERSION, REQUEST, REQ_TRACKING, 0, sequence)
    return head.ljust(PACKET_LENGTH, b"\0")


def synced_from_reply(reply: bytes, sequence: int) -> bool | None:
    """True/False from chronyd's tracking reply to ``sequence``; None if it is not one."""
    if len(reply) < PACKET_LENGTH:
        return None
    version, kind, command, reply_type, status, echoed = REPLY_HEADER.unpack_from(reply)
    if (version, kind, command, reply_type, status, echoed) != (
            PROTOCOL_VERSION, REPLY, REQ_TRACKING, RPY_TRACKING, STATUS_SUCCESS, sequence):
        return None
    ref_id, _stratum, leap = TRACKING.unpack_from(reply, REPLY_HEADER.size)
    return leap != LEAP_UNSYNCHRONISED and ref_id != 0


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, sequence: int) -> None:
        self.sequence = sequence
        self.answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        state = synced_from_reply(data, self.sequence)
        if state is not None and not self.answer.done():  # a stray datagram is not the answer
            self.answer.set_result(state)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: nothing listens
        if not self.answer.done():
            self.answer.set_result(None)


async def tracking_synced(port: int = PORT, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> bool | None:
    """Whether chronyd on ``host:port`` says the clock is synchronized; None when no chronyd answers."""
    loop = asyncio.get_running_loop()
    sequence = random.getrandbits(32)
    try:
        transport, exchange = await loop.create_datagram_endpoint(
            lambda: _Exchange(sequence), remote_addr=(host, port))
    except OSError:
        return None
    try:
        transport.sendto(tracking_request(sequence))
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(exchange.answer, timeout)
        return None
    finally:
        transport.close()
