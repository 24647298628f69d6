"""The PMS5003/PMS7003 frame parser and config, against byte strings built from the data manual."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.pms5003.driver import Pms5003Config, Pms5003Driver
from drivers.pms5003.protocol import FIELDS, READ_PASSIVE, SET_ACTIVE, SET_PASSIVE, Pms5003Parser
from gateway.driver import DeviceInfo

# A frame captured from a PMS5003 (as published with PyPMS's docs): check code 0x02C5 = 709.
CAPTURED = bytes.fromhex("424d001c0000000800080000000800080" "0d20046002d001e00000000970002c5")
CAPTURED_VALUES = (0, 8, 8, 0, 8, 8, 210, 70, 45, 30, 0, 0)


def frame(values: tuple[int, ...], reserved: int = 0) -> bytes:
    """Build a data frame the way the manual describes it (independently of the parser)."""
    body = b"BM" + (2 * 13 + 2).to_bytes(2, "big")
    body += b"".join(v.to_bytes(2, "big") for v in (*values, reserved))
    return body + (sum(body) % 65536).to_bytes(2, "big")


VALUES = (11, 22, 33, 12, 23, 34, 3000, 900, 200, 40, 5, 1)


def test_the_captured_frame_decodes_to_its_values() -> None:
    parser = Pms5003Parser()
    assert parser.feed(CAPTURED) == [CAPTURED_VALUES]
    assert parser.counters["frames"] == 1 and parser.counters["garbage_bytes"] == 0


def test_fields_follow_the_data_manual_order() -> None:
    record = Pms5003Parser().feed(frame(VALUES))[0]
    assert dict(zip(FIELDS, record, strict=True)) == {
        "pm1_0_cf1": 11, "pm2_5_cf1": 22, "pm10_cf1": 33, "pm1_0": 12, "pm2_5": 23, "pm10": 34,
        "particles_0_3": 3000, "particles_0_5": 900, "particles_1_0": 200, "particles_2_5": 40,
        "particles_5_0": 5, "particles_10": 1,
    }


@pytest.mark.parametrize("cut", range(1, 32))
def test_a_frame_split_anywhere_is_found_once(cut: int) -> None:
    parser = Pms5003Parser()
    data = frame(VALUES)
    assert parser.feed(data[:cut]) == []
    assert parser.feed(data[cut:]) == [VALUES]


def test_byte_by_byte() -> None:
    parser = Pms5003Parser()
    records = [r for b in frame(VALUES) * 3 for r in parser.feed(bytes([b]))]
    assert records == [VALUES] * 3


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    parser = Pms5003Parser()
    garbage = b"\x00\xff\x42junk\x42\x4d\x00\x99"  # includes a lone 0x42 and a header with an impossible length
    records = parser.feed(garbage + frame(VALUES) + b"xyz" + frame(VALUES))
    assert records == [VALUES, VALUES]
    assert parser.counters["bad_frames"] == 1
    assert parser.counters["garbage_bytes"] == len(garbage) + 3


def test_bad_checksum_is_dropped_and_the_next_frame_found() -> None:
    parser = Pms5003Parser()
    broken = bytearray(frame(VALUES))
    broken[10] ^= 0x01
    assert parser.feed(bytes(broken) + frame(VALUES)) == [VALUES]
    assert parser.counters["bad_checksum"] == 1
    assert parser.counters["frames"] == 1


def test_a_truncated_frame_does_not_hide_the_next_one() -> None:
    parser = Pms5003Parser()
    assert parser.feed(frame(VALUES)[:20] + frame(VALUES)) == [VALUES]
    assert parser.counters["bad_checksum"] == 1


def test_mode_change_acknowledgement_is_a_reply_not_data() -> None:
    body = bytes([0x42, 0x4D, 0x00, 0x04, 0xE1, 0x00])
    ack = body + sum(body).to_bytes(2, "big")
    parser = Pms5003Parser()
    assert parser.feed(ack + frame(VALUES)) == [VALUES]
    assert parser.counters["replies"] == 1


def test_reset_forgets_a_partial_frame_but_keeps_counters() -> None:
    parser = Pms5003Parser()
    parser.feed(frame(VALUES) + frame(VALUES)[:10])
    parser.reset()
    assert parser.feed(frame(VALUES)[10:]) == []
    assert parser.feed(frame(VALUES)) == [VALUES]
    assert parser.counters["frames"] == 2


def test_host_commands_match_the_data_manual() -> None:
    assert bytes.fromhex("424de100000170") == SET_PASSIVE
    assert bytes.fromhex("424de100010171") == SET_ACTIVE
    assert bytes.fromhex("424de200000171") == READ_PASSIVE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=40).map(lambda b: b.replace(b"\x42", b"")),
                       st.tuples(*[st.integers(0, 65535)] * 12)), min_size=1, max_size=6),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_any_garbage_and_any_chunking_yield_every_frame(
    items: list[tuple[bytes, tuple[int, ...]]], chunks: list[int]
) -> None:
    stream = b"".join(g + frame(v) for g, v in items)
    parser = Pms5003Parser()
    records, pos, i = [], 0, 0
    while pos < len(stream):
        size = chunks[i % len(chunks)]
        records += parser.feed(stream[pos:pos + size])
        pos, i = pos + size, i + 1
    assert records == [v for _, v in items]
    assert parser.counters["garbage_bytes"] == sum(len(g) for g, _ in items)


# -- config -------------------------------------------------------------------------------------------


def test_defaults_are_the_three_atmospheric_pms_in_active_mode() -> None:
    config = Pms5003Config(connection={"serial_port": "/dev/ttyAMA0"})
    driver = Pms5003Driver(config, DeviceInfo("air", 10.0))
    assert driver.points.names == ("pm1_0", "pm2_5", "pm10")
    assert driver.points.units == ("µg/m³",) * 3
    assert config.mode == "active" and config.aggregate == "last"


def test_particle_counts_have_their_unit() -> None:
    config = Pms5003Config(connection={"serial_port": "/dev/x"}, points=["pm2_5_cf1", "particles_0_3"])
    assert Pms5003Driver(config, DeviceInfo("air", 10.0)).points.units == ("µg/m³", "#/0.1L")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"points": ["pm25"]}, "pm2_5"),
        ({"points": ["pm2_5", "pm2_5"]}, "duplicate point name 'pm2_5'"),
        ({"points": []}, "at least one point"),
        ({"timeout": "1s"}, "timeout is for mode passive"),
        ({"mode": "passive", "stale_after": "1m"}, "stale_after is for streaming"),
        ({"aggregate": "median"}, "median"),
        ({"connection": {"serial_port": "/dev/x", "parity": "X"}}, "parity"),
        ({"port": "/dev/x"}, "port"),
    ],
)
def test_bad_config_is_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Pms5003Config(**{"connection": {"serial_port": "/dev/x"}, **options})
    assert message in str(caught.value)
