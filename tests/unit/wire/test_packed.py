"""The packed format: the same readings as the readable one, in far fewer bytes."""

from __future__ import annotations

import math
import random

import pytest

from gateway.model import StoredBatch
from gateway.wire.encoding import decode_telemetry, encode_telemetry
from gateway.wire.packed import ZLIB_FIRST_BYTE


def _batch(row: int, seq0: int, ts: int, names: tuple[str, ...], values: list[object],
           errors: dict[int, str] | None = None, units: tuple[str | None, ...] | None = None) -> StoredBatch:
    return StoredBatch(row=row, device="meter-1", seq0=seq0, ts=ts, names=names,
                       units=units or tuple(None for _ in names), values=values, errors=errors)


def _realistic(polls: int = 20, points: int = 100) -> list[StoredBatch]:
    """Half smooth signals, half noisy floats, as real sensors give them (a few decimals)."""
    rng = random.Random(7)
    names = tuple(f"p{i}" for i in range(points))
    units = tuple("V" if i % 2 else None for i in range(points))
    out = []
    for k in range(polls):
        values: list[object] = []
        for i in range(points):
            if i < points // 2:
                values.append(round(20 + 5 * math.sin(k / 30 + i), 2))
            else:
                values.append(round(rng.gauss(50, 10), 3))
        out.append(_batch(k + 1, 1 + k * points, 1_764_000_000_000 + 1000 * k, names, values, units=units))
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_gives_the_readable_readings(compress: bool) -> None:
    names = ("temp", "level", "door", "label")
    batches = [
        _batch(1, 10, 1000, names, [21.5, 3, True, "ok"], units=("C", "m", None, None)),
        _batch(2, 14, 2000, names, [None, float("nan"), False, "ok"], {0: "exception 2"}, ("C", "m", None, None)),
        _batch(5, 30, 2500, ("level",), [4], units=("m",)),  # a gap in seq (evicted rows) and a subset
    ]
    readable = decode_telemetry(encode_telemetry("gw1", "meter-1", batches, "cbor"))
    payload = encode_telemetry("gw1", "meter-1", batches, "packed", compress=compress)
    assert (payload[0] == ZLIB_FIRST_BYTE) == compress
    assert decode_telemetry(payload) == readable
    assert readable["readings"][5] == {"seq": 15, "ts": 2000, "point": "level", "value": None, "unit": "m",
                                       "error": "not a number"}
    assert readable["readings"][-1]["seq"] == 30


def test_realistic_data_takes_at_most_12_bytes_per_reading() -> None:
    batches = _realistic()
    readings = sum(len(b.values) for b in batches)
    readable = len(encode_telemetry("gw1", "meter-1", batches, "cbor"))
    packed = len(encode_telemetry("gw1", "meter-1", batches, "packed"))
    deflated = len(encode_telemetry("gw1", "meter-1", batches, "packed", compress=True))
    assert packed / readings <= 12, packed / readings
    assert deflated < packed < readable / 3
    assert decode_telemetry(encode_telemetry("gw1", "meter-1", batches, "packed", compress=True)) == \
        decode_telemetry(encode_telemetry("gw1", "meter-1", batches, "json"))


def test_compress_needs_packed() -> None:
    from pydantic import ValidationError

    from gateway.config.settings import MqttSection

    assert MqttSection(host="h", encoding="packed", compress=True).compress
    with pytest.raises(ValidationError, match="compress: true needs encoding: packed"):
        MqttSection(host="h", compress=True)
