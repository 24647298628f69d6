"""The SDS011 frame parser, commands and config, against the Laser Dust Sensor Control Protocol V1.3."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.sds011.driver import Sds011Config, Sds011Driver
from drivers.sds011.protocol import QUERY, SET_ACTIVE, SET_QUERY, WORK, Sds011Parser, command
from gateway.driver import DeviceInfo

# The protocol document's example: PM2.5 0x04D4 = 1236 -> 123.6, PM10 0x0A3A = 2618 -> 261.8, id A160.
EXAMPLE = bytes.fromhex("aac0d4043a0aa1601dab")


def frame(pm25_tenths: int, pm10_tenths: int, ident: bytes = b"\x12\x34", cmd: int = 0xC0) -> bytes:
    data = pm25_tenths.to_bytes(2, "little") + pm10_tenths.to_bytes(2, "little") + ident
    return bytes([0xAA, cmd]) + data + bytes([sum(data) & 0xFF, 0xAB])


def test_the_documented_example() -> None:
    parser = Sds011Parser()
    assert parser.feed(EXAMPLE) == [(123.6, 261.8, "A160")]
    assert parser.counters["frames"] == 1


@pytest.mark.parametrize("cut", range(1, 10))
def test_split_anywhere(cut: int) -> None:
    parser = Sds011Parser()
    assert parser.feed(EXAMPLE[:cut]) == []
    assert parser.feed(EXAMPLE[cut:]) == [(123.6, 261.8, "A160")]


def test_garbage_and_bad_checksums_are_counted_and_skipped() -> None:
    parser = Sds011Parser()
    bad = bytearray(frame(100, 200))
    bad[8] ^= 0xFF
    garbage = b"\x00\xaa\x01\x02"  # a lone head byte with an unknown command byte
    records = parser.feed(garbage + bytes(bad) + frame(55, 66) + b"\xfe")
    assert records == [(5.5, 6.6, "1234")]
    assert parser.counters["bad_checksum"] == 1
    assert parser.counters["bad_frames"] == 1
    assert parser.counters["garbage_bytes"] == len(garbage) + len(bad) + 1


def test_wrong_tail_is_a_bad_frame() -> None:
    parser = Sds011Parser()
    broken = frame(1, 2)[:-1] + b"\x00"
    assert parser.feed(broken + frame(3, 4)) == [(0.3, 0.4, "1234")]
    assert parser.counters["bad_frames"] == 1


def test_replies_are_not_data() -> None:
    parser = Sds011Parser()
    reply = frame(0x0102, 0x0001, cmd=0xC5)  # "AA C5 02 01 01 00 id id cs AB": query mode set
    assert parser.feed(reply + frame(10, 20)) == [(1.0, 2.0, "1234")]
    assert parser.counters["replies"] == 1


def test_commands_match_the_protocol_document() -> None:
    zeros = "00" * 10  # data bytes 4 to 13
    assert bytes.fromhex("aab404" + "00" * 12 + "ffff02ab") == QUERY
    assert bytes.fromhex("aab4020101" + zeros + "ffff02ab") == SET_QUERY
    assert bytes.fromhex("aab4020100" + zeros + "ffff01ab") == SET_ACTIVE
    assert bytes.fromhex("aab4060101" + zeros + "ffff06ab") == WORK
    assert all(len(c) == 19 for c in (QUERY, SET_QUERY, SET_ACTIVE, WORK))


def test_a_command_to_one_sensor_carries_its_id() -> None:
    cmd = command(4, sensor=0xA160)
    assert cmd[15:17] == b"\xa1\x60" and cmd[17] == (4 + 0xA1 + 0x60) & 0xFF


def test_default_points_and_units() -> None:
    driver = Sds011Driver(Sds011Config(connection={"serial_port": "/dev/ttyUSB0"}), DeviceInfo("dust", 5.0))
    assert driver.points.names == ("pm2_5", "pm10")
    assert driver.points.units == ("µg/m³", "µg/m³")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "passive"}, "mode"),
        ({"points": ["pm1_0"]}, "pm1_0"),
        ({"timeout": "2s"}, "timeout is for mode query"),
        ({"mode": "query", "stale_after": "10s"}, "stale_after is for streaming"),
    ],
)
def test_bad_config(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Sds011Config(**{"connection": {"serial_port": "/dev/x"}, **options})
    assert message in str(caught.value)
