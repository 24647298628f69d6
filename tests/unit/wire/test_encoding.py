"""The telemetry wire format: both encodings carry the same document, NaN and errors as the contract says."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import pytest

from gateway.model import StoredBatch
from gateway.wire.encoding import NOT_A_NUMBER, decode_telemetry, encode_telemetry, messages_of, readings_of


def batch(seq0: int, values: list[Any], *, row: int = 1, ts: int = 1_700_000_000_123,
          units: tuple[str | None, ...] | None = None, errors: dict[int, str] | None = None) -> StoredBatch:
    names = tuple(f"p{i}" for i in range(len(values)))
    return StoredBatch(row=row, device="meter-1", seq0=seq0, ts=ts, names=names,
                       units=units or (None,) * len(values), values=values, errors=errors)


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_round_trip_keeps_every_reading_in_order(fmt: str) -> None:
    batches = [batch(10, [1, 2.5, True], row=3, ts=1000), batch(13, [-7, "on", 0.0], row=4, ts=2000)]
    doc = decode_telemetry(encode_telemetry("gw-1", "meter-1", batches, fmt))  # type: ignore[arg-type]
    assert doc == {
        "gateway": "gw-1",
        "device": "meter-1",
        "readings": [
            {"seq": 10, "ts": 1000, "point": "p0", "value": 1},
            {"seq": 11, "ts": 1000, "point": "p1", "value": 2.5},
            {"seq": 12, "ts": 1000, "point": "p2", "value": True},
            {"seq": 13, "ts": 2000, "point": "p0", "value": -7},
            {"seq": 14, "ts": 2000, "point": "p1", "value": "on"},
            {"seq": 15, "ts": 2000, "point": "p2", "value": 0.0},
        ],
    }


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_unit_only_where_set_and_error_with_null_value(fmt: str) -> None:
    b = batch(1, [1.5, None, 3], units=("m", "degC", None), errors={1: "exception code 2"})
    readings = decode_telemetry(encode_telemetry("gw", "meter-1", [b], fmt))["readings"]  # type: ignore[arg-type]
    assert readings[0] == {"seq": 1, "ts": b.ts, "point": "p0", "value": 1.5, "unit": "m"}
    assert readings[1] == {"seq": 2, "ts": b.ts, "point": "p1", "value": None, "unit": "degC",
                           "error": "exception code 2"}
    assert readings[2] == {"seq": 3, "ts": b.ts, "point": "p2", "value": 3}


@pytest.mark.parametrize("fmt", ["cbor", "json"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_never_sent_as_a_number(fmt: str, bad: float) -> None:
    payload = encode_telemetry("gw", "meter-1", [batch(1, [bad, 2.0])], fmt)  # type: ignore[arg-type]
    readings = decode_telemetry(payload)["readings"]
    assert readings[0]["value"] is None and readings[0]["error"] == NOT_A_NUMBER
    assert readings[1] == {"seq": 2, "ts": readings[1]["ts"], "point": "p1", "value": 2.0}


def test_a_reported_error_wins_over_nan() -> None:
    (reading,) = readings_of([batch(1, [math.nan], errors={0: "decode failed"})])
    assert reading["value"] is None and reading["error"] == "decode failed"


def test_float_subclass_nan_is_caught() -> None:
    class Sub(float):
        pass

    (reading,) = readings_of([batch(1, [Sub("nan")])])
    assert reading["error"] == NOT_A_NUMBER


def test_json_is_compact_utf8_and_strict() -> None:
    payload = encode_telemetry("gw", "meter-1", [batch(1, [math.nan], units=("°C",))], "json")
    assert b", " not in payload and b": " not in payload
    assert "°C".encode() in payload
    assert b"NaN" not in payload
    json.loads(payload)  # strict JSON


def test_cbor_is_a_plain_map() -> None:
    doc = cbor2.loads(encode_telemetry("gw", "meter-1", [batch(5, [1])], "cbor"))
    assert doc["readings"] == [{"seq": 5, "ts": 1_700_000_000_123, "point": "p0", "value": 1}]


def test_decode_detects_json_with_leading_whitespace_and_rejects_non_maps() -> None:
    assert decode_telemetry(b' \n{"a":1}') == {"a": 1}
    with pytest.raises(ValueError, match="not a map"):
        decode_telemetry(cbor2.dumps([1, 2]))


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="xml"):
        encode_telemetry("gw", "meter-1", [batch(1, [1])], "xml")  # type: ignore[arg-type]


def test_empty_batch_list_gives_no_readings() -> None:
    assert decode_telemetry(encode_telemetry("gw", "d", [], "json"))["readings"] == []


def test_messages_group_per_device_in_row_order_and_cut_at_the_limit() -> None:
    def b(row: int, device: str, n: int) -> StoredBatch:
        return StoredBatch(row, device, row * 10, 0, ("x",) * n, (None,) * n, [0] * n)

    batches = [b(1, "a", 3), b(2, "b", 3), b(3, "a", 3), b(4, "a", 5), b(5, "b", 1)]
    got = [(dev, [x.row for x in group]) for dev, group in messages_of(batches, 6)]
    assert got == [("a", [1, 3]), ("a", [4]), ("b", [2, 5])]
    assert [(d, [x.row for x in g]) for d, g in messages_of([b(1, "a", 9)], 6)] == [("a", [1])]
