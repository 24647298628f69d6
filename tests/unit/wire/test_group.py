"""The group message (mqtt.batch.devices > 1): decoded and split, it is the devices' own messages."""

from __future__ import annotations

import json
import zlib
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.encoding import decode_telemetry as published_decode
from gateway.encoding import split_devices as published_split
from gateway.model import StoredBatch
from gateway.wire.encoding import decode_telemetry, encode_telemetry, split_devices
from gateway.wire.group import encode_group, encode_part, envelope_bytes
from gateway.wire.packed import ZLIB_FIRST_BYTE

NAMES = ("flow", "level", "t", "a_rather_longer_point_name_over_23_chars")
UNITS = ("m3/h", None, "degC", "x")
FORMATS = [("cbor", False), ("json", False), ("packed", False), ("packed", True)]

values_st = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70),
              st.booleans(), st.none(), st.text(max_size=5)),
    min_size=1, max_size=len(NAMES))
device_st = st.tuples(st.text(min_size=1, max_size=8),
                      st.lists(st.tuples(values_st, st.booleans(), st.booleans()), min_size=1, max_size=3))


def device_batches(device: str, spec: list[tuple[list[Any], bool, bool]]) -> list[StoredBatch]:
    """Batches of one device with seqs counting up (and a gap after each), some failed or unsynced."""
    out, seq = [], 1
    for k, (values, failed, unsynced) in enumerate(spec):
        n = len(values)
        out.append(StoredBatch(row=k + 1, device=device, seq0=seq, ts=1_700_000_000_000 + 1000 * k,
                               names=NAMES[:n], units=UNITS[:n], values=values,
                               errors={0: "timeout"} if failed else None,
                               unsynced=(5, "boot") if unsynced else None))
        seq += n + k
    return out


def group_of(devices: list[tuple[str, list[StoredBatch]]], fmt: str, compress: bool) -> bytes:
    return encode_group("gw1", [encode_part(d, bs, fmt) for d, bs in devices], fmt, compress=compress)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "compress"), FORMATS)
@given(st.lists(device_st, min_size=1, max_size=4))
def test_a_group_decodes_and_splits_into_the_devices_own_messages(
        fmt: str, compress: bool, spec: list[tuple[str, list[tuple[list[Any], bool, bool]]]]) -> None:
    devices = [(name, device_batches(name, batches)) for name, batches in spec]
    payload = group_of(devices, fmt, compress)
    own = [decode_telemetry(encode_telemetry("gw1", d, bs, fmt, compress=compress)) for d, bs in devices]  # type: ignore[arg-type]
    assert split_devices(decode_telemetry(payload)) == own
    assert len(payload) <= sum(len(encode_part(d, bs, fmt)) for d, bs in devices) + envelope_bytes(  # type: ignore[arg-type]
        "gw1", fmt, len(devices)) or compress  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "compress"), FORMATS)
def test_the_shape_in_each_encoding_is_the_one_the_readme_gives(fmt: str, compress: bool) -> None:
    devices = [("d1", device_batches("d1", [([1.5, 2], False, False)])),
               ("d2", device_batches("d2", [([7], False, False), ([8], False, False)]))]
    payload = group_of(devices, fmt, compress)
    if compress:
        assert payload[0] == ZLIB_FIRST_BYTE
        payload = zlib.decompress(payload)
    raw = json.loads(payload) if fmt == "json" else cbor2.loads(payload)
    if fmt == "packed":
        assert set(raw) == {"gateway", "packed", "devices"} and raw["packed"] == 1
        assert [set(p) for p in raw["devices"]] == [{"device", "points", "units", "batches"}] * 2
        assert raw["devices"][1]["points"] == ["flow"] and len(raw["devices"][1]["batches"]) == 2
    else:
        assert set(raw) == {"gateway", "devices"} and raw["gateway"] == "gw1"
        assert [p["device"] for p in raw["devices"]] == ["d1", "d2"]
        assert [r["seq"] for r in raw["devices"][1]["readings"]] == [1, 2]  # seq as in d2's own messages
        assert raw["devices"][0]["readings"][0] == {"seq": 1, "ts": 1_700_000_000_000, "point": "flow",
                                                    "value": 1.5, "unit": "m3/h"}
    doc = published_decode(group_of(devices, fmt, compress))  # the import path platforms use
    assert [d["device"] for d in published_split(doc)] == ["d1", "d2"]


def test_a_one_device_message_splits_into_itself_and_an_unknown_format_is_an_error() -> None:
    doc = decode_telemetry(encode_telemetry("gw1", "d1", device_batches("d1", [([1], False, False)])))
    assert split_devices(doc) == [doc]
    with pytest.raises(ValueError, match="unknown"):
        encode_part("d1", [], "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        encode_group("gw1", [], "xml")  # type: ignore[arg-type]


def test_packed_single_device_messages_are_unchanged_byte_for_byte() -> None:
    """The packed encoder was split into columns + envelope for the group: its own messages did not move."""
    batches = device_batches("d1", [([1.5, 2, "x"], True, False), ([3.25], False, True)])
    doc = {"gateway": "gw1", "device": "d1", "packed": 1, "points": ["flow", "level", "t"],
           "units": ["m3/h", None, "degC"],
           "batches": [[1, 1_700_000_000_000, None, [None, 2, "x"], {0: "timeout"}],
                       [0, 1000, [0], [3.25], None, False]]}
    assert encode_telemetry("gw1", "d1", batches, "packed") == cbor2.dumps(doc, canonical=True)
