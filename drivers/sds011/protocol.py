"""The Nova Fitness SDS011 serial protocol (9600 8N1), from its Laser Dust Sensor Control Protocol V1.3.

Sensor to host, 10 bytes::

    0xAA | 0xC0 | PM2.5 low, high | PM10 low, high | id (2 bytes) | checksum | 0xAB

PM values are tenths of µg/m³ (little-endian); the checksum is the low byte of the sum of the
six data bytes. Replies to commands have the same shape with 0xC5 instead of 0xC0.

Host to sensor, 19 bytes: ``0xAA 0xB4``, 15 data bytes (the first is the command, the last two
the sensor id, 0xFFFF for any), the low byte of the sum of the 15 data bytes, ``0xAB``.
Commands used here: 2 = data reporting mode (set: active or query), 4 = query data,
6 = sleep / work. The reporting mode survives a power cycle.
"""

from __future__ import annotations

from typing import ClassVar

from drivers.serialio.framing import FrameParser, Record, sum8

HEAD, TAIL = 0xAA, 0xAB
DATA, REPLY, COMMAND = 0xC0, 0xC5, 0xB4
FRAME_SIZE = 10
ANY_SENSOR = 0xFFFF

FIELDS = ("pm2_5", "pm10", "sensor_id")
UNITS = {"pm2_5": "µg/m³", "pm10": "µg/m³", "sensor_id": None}
DEFAULT_POINTS = ("pm2_5", "pm10")


def command(cmd: int, *args: int, sensor: int = ANY_SENSOR) -> bytes:
    """A 19-byte host command: command byte, up to 12 argument bytes, the sensor id, checksum."""
    data = bytes([cmd, *args]).ljust(13, b"\0") + sensor.to_bytes(2, "big")
    return bytes([HEAD, COMMAND]) + data + bytes([sum8(data), TAIL])


SET_ACTIVE = command(2, 1, 0)  # set reporting mode: active
SET_QUERY = command(2, 1, 1)  # set reporting mode: query
QUERY = command(4)  # query data: the sensor answers with a data frame
WORK = command(6, 1, 1)  # set work (leave sleep)


class Sds011Parser(FrameParser):
    """SDS011 frames to records ``(pm2_5, pm10, sensor_id)``: µg/m³ as floats, the id as 4 hex digits."""

    HEADER: ClassVar[bytes] = bytes([HEAD])
    FIELDS: ClassVar[tuple[str, ...]] = FIELDS

    def frame_size(self, head: bytes) -> int | None:
        if len(head) < 2:
            return None
        return FRAME_SIZE if head[1] in (DATA, REPLY) else -1

    def checksum_ok(self, frame: bytes) -> bool:
        return sum8(frame[2:8]) == frame[8]

    def decode(self, frame: bytes) -> Record | None:
        if frame[9] != TAIL:
            raise ValueError("no tail byte")
        if frame[1] == REPLY:
            return None
        pm25 = int.from_bytes(frame[2:4], "little") / 10
        pm10 = int.from_bytes(frame[4:6], "little") / 10
        return (pm25, pm10, frame[6:8].hex().upper())
