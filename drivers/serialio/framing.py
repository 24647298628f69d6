"""Incremental parsers: bytes in, records out, resynchronising after garbage and broken frames.

A parser is a small pure object: ``feed(chunk)`` returns the records completed by that chunk
(whatever the chunk boundaries: a frame may arrive split over many reads, or many frames in one
read), ``reset()`` forgets a partial frame (after the port was reopened), and ``counters`` counts
what it saw. A record is a tuple of the protocol's fields, in the parser's ``FIELDS`` order.

``FrameParser`` does the work for binary protocols whose frames start with a fixed header; a
sensor protocol subclasses it with its header, its frame length, its checksum and its decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

Record = tuple[Any, ...]

COUNTER_NAMES = ("frames", "replies", "bad_checksum", "bad_frames", "garbage_bytes")
"""frames: valid data frames; replies: valid frames that answer a command (no data);
bad_checksum: frames failing their checksum; bad_frames: a header followed by an impossible
length, tail or content; garbage_bytes: bytes skipped while looking for the next frame."""


class Parser(Protocol):
    """What the serial drivers need of a parser."""

    FIELDS: Sequence[str]
    counters: dict[str, int]

    def feed(self, data: bytes) -> list[Record]: ...
    def reset(self) -> None: ...


class FrameParser:
    """Base of binary frame parsers: finds ``HEADER``, sizes, checks and decodes each frame.

    Subclasses set ``HEADER`` and ``FIELDS`` and implement ``frame_size``, ``checksum_ok`` and
    ``decode``. After a bad frame the parser skips one byte and searches for the header again,
    so a frame that starts inside a broken one is still found.
    """

    HEADER: ClassVar[bytes]
    FIELDS: ClassVar[tuple[str, ...]]
    MAX_BUFFER = 4096  # never hold more than this while waiting for a frame to complete

    def __init__(self) -> None:
        self._buf = bytearray()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    def reset(self) -> None:
        """Forget a partially received frame (the counters stay)."""
        self._buf.clear()

    def frame_size(self, head: bytes) -> int | None:
        """The whole frame's length in bytes, judged from its first bytes (header included).

        None: more bytes are needed to tell; a negative number: no valid frame starts here.
        """
        raise NotImplementedError

    def checksum_ok(self, frame: bytes) -> bool:
        raise NotImplementedError

    def decode(self, frame: bytes) -> Record | None:
        """The record of a valid frame; None for a valid frame that carries no data (a reply).

        May raise ValueError for a frame whose checksum is right but whose content is not.
        """
        raise NotImplementedError

    def feed(self, data: bytes) -> list[Record]:
        """Add ``data``; return the records of every frame it completed, in order."""
        buf = self._buf
        buf += data
        records: list[Record] = []
        while self._sync():
            size = self.frame_size(bytes(buf[:8]))
            if size is not None and size < 0:
                self._skip_bad("bad_frames")
                continue
            if size is None or size > len(buf):
                break  # wait for the rest
            record = self._take(bytes(buf[:size]))
            if record is not None:
                records.append(record)
        if len(buf) > self.MAX_BUFFER:  # a length field that lied: start over
            self._skip(len(buf))
        return records

    def _take(self, frame: bytes) -> Record | None:
        if not self.checksum_ok(frame):
            self._skip_bad("bad_checksum")
            return None
        try:
            record = self.decode(frame)
        except ValueError:
            self._skip_bad("bad_frames")
            return None
        del self._buf[: len(frame)]
        self.counters["frames" if record is not None else "replies"] += 1
        return record

    def _sync(self) -> bool:
        """Drop bytes before the next header; True when the buffer starts with a whole header."""
        buf, header = self._buf, self.HEADER
        start = buf.find(header)
        if start < 0:
            # Keep a tail that may be the start of a header split across reads.
            keep = next((n for n in range(len(header) - 1, 0, -1) if buf.endswith(header[:n])), 0)
            self._skip(len(buf) - keep)
            return False
        self._skip(start)
        return True

    def _skip_bad(self, counter: str) -> None:
        self.counters[counter] += 1
        self._skip(1)  # the rest is searched again: a real frame may start inside this one

    def _skip(self, n: int) -> None:
        if n > 0:
            self.counters["garbage_bytes"] += n
            del self._buf[:n]


def sum16(data: bytes) -> int:
    """The 16-bit sum of ``data`` (Plantower's check code)."""
    return sum(data) & 0xFFFF


def sum8(data: bytes) -> int:
    """The low byte of the sum of ``data`` (Nova Fitness's checksum)."""
    return sum(data) & 0xFF
