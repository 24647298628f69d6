"""The Plantower PMS5003 / PMS7003 serial protocol (9600 8N1), from the Plantower data manuals.

Data frame, 32 bytes, all numbers big-endian::

    0x42 0x4D | length (2 bytes) = 2*13+2 = 28 | 13 data words | check code (2 bytes)

The check code is the 16-bit sum of every byte before it. Data words 1-3 are PM1.0, PM2.5 and
PM10 in µg/m³ "CF=1, standard particle"; 4-6 the same under atmospheric environment; 7-12 the
number of particles above 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm in 0.1 L of air; 13 is reserved
(PMS7003: version and error code).

Host commands, 7 bytes: ``0x42 0x4D CMD DATAH DATAL`` and the 16-bit sum of those five bytes.
``0xE1`` changes the mode (data 0: passive, 1: active), ``0xE2`` asks for one frame in passive
mode, ``0xE4`` sleeps (0) or wakes (1). The sensor acknowledges a mode change with an 8-byte
frame of length 4 (``0x42 0x4D 0x00 0x04 CMD DATA`` + check code), counted as a reply.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from drivers.serialio.framing import FrameParser, Record, sum16

HEADER = b"\x42\x4d"
DATA_LENGTH = 28  # 13 words + check code
REPLY_LENGTH = 4  # an acknowledgement: command, data, check code

FIELDS = (
    "pm1_0_cf1", "pm2_5_cf1", "pm10_cf1",
    "pm1_0", "pm2_5", "pm10",
    "particles_0_3", "particles_0_5", "particles_1_0", "particles_2_5", "particles_5_0", "particles_10",
)
UNITS = {name: ("µg/m³" if name.startswith("pm") else "#/0.1L") for name in FIELDS}
DEFAULT_POINTS = ("pm1_0", "pm2_5", "pm10")

_WORDS = struct.Struct(">13H")


def command(cmd: int, data: int = 0) -> bytes:
    """A host command frame: header, command, 16-bit data, 16-bit sum."""
    body = HEADER + bytes([cmd]) + data.to_bytes(2, "big")
    return body + sum16(body).to_bytes(2, "big")


SET_PASSIVE = command(0xE1, 0)
SET_ACTIVE = command(0xE1, 1)
READ_PASSIVE = command(0xE2)
WAKE = command(0xE4, 1)


class Pms5003Parser(FrameParser):
    """PMS5003/PMS7003 frames to records of the 12 values in ``FIELDS`` order (integers)."""

    HEADER: ClassVar[bytes] = HEADER
    FIELDS: ClassVar[tuple[str, ...]] = FIELDS

    def frame_size(self, head: bytes) -> int | None:
        if len(head) < 4:
            return None
        length = int.from_bytes(head[2:4], "big")
        return 4 + length if length in (DATA_LENGTH, REPLY_LENGTH) else -1

    def checksum_ok(self, frame: bytes) -> bool:
        return sum16(frame[:-2]) == int.from_bytes(frame[-2:], "big")

    def decode(self, frame: bytes) -> Record | None:
        if len(frame) != 4 + DATA_LENGTH:
            return None  # an acknowledgement
        return _WORDS.unpack_from(frame, 4)[:12]
