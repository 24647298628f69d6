"""The batch-at-a-time CBOR writer: the same readings as cbor2 over the reading dicts, for any batch."""

from __future__ import annotations

import math
from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import StoredBatch
from gateway.wire.cbor import array_head, batch_records
from gateway.wire.encoding import encode_telemetry, readings_of

NAMES = ("flow", "level", "t", "pm2_5", "a_rather_longer_point_name_over_23_chars")
UNITS = ("m3/h", None, "degC", None, "x")


def batch(values: list[Any], *, seq0: int = 1, ts: int = 1_700_000_000_123, errors: dict[int, str] | None = None,
          unsynced: tuple[int, str] | None = None) -> StoredBatch:
    n = len(values)
    return StoredBatch(row=1, device="d", seq0=seq0, ts=ts, names=NAMES[:n], units=UNITS[:n], values=values,
                       errors=errors, unsynced=unsynced)


def reference(batches: list[StoredBatch]) -> dict[str, Any]:
    return {"gateway": "gw", "device": "d", "readings": readings_of(batches)}


values_st = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70),
              st.booleans(), st.none(), st.text(max_size=5)),
    min_size=1, max_size=len(NAMES))


@given(st.lists(st.tuples(values_st, st.integers(min_value=0, max_value=2**64 + 10)), min_size=1, max_size=4))
def test_any_batches_decode_to_the_reference_readings(spec: list[tuple[list[Any], int]]) -> None:
    batches = [batch(values, seq0=seq0) for values, seq0 in spec]
    assert cbor2.loads(encode_telemetry("gw", "d", batches, "cbor")) == reference(batches)


def test_plain_numeric_batch_takes_the_fast_path_and_reads_back_exactly() -> None:
    values = [0.1, 2**63, 7, -0.0, 1e300]
    records = batch_records(batch(values, seq0=2**32 - 2))  # seqs cross 2**32: the wide seq layout
    assert records is not None
    readings = cbor2.loads(array_head(len(values)) + records)
    assert readings == readings_of([batch(values, seq0=2**32 - 2)])
    assert [type(r["value"]) for r in readings] == [float, int, int, float, float]
    assert math.copysign(1, readings[3]["value"]) == -1
    small = batch_records(batch([7, 0.5]))  # ints that fit take a 4-byte head
    assert small is not None and _VALUE + b"\x1a\x00\x00\x00\x07" in small
    assert _VALUE + b"\x1b" + (2**63).to_bytes(8, "big") in records


_VALUE = cbor2.dumps("value")


def test_batches_the_fast_path_cannot_write_go_the_general_way() -> None:
    assert batch_records(batch([1.0, math.nan])) is None
    assert batch_records(batch([1.0, -3])) is None  # a negative int needs another head
    assert batch_records(batch([True, 2])) is None
    assert batch_records(batch([1.0, 2.0], errors={1: "timeout"})) is None
    assert batch_records(batch([1.0, 2.0], unsynced=(5, "boot"))) is None
    for b in (batch([1.0, math.nan]), batch([1.0, -3]), batch([1.0, 2.0], errors={1: "timeout"}),
              batch([1.5], unsynced=(5, "boot"))):
        assert cbor2.loads(encode_telemetry("gw", "d", [b], "cbor")) == reference([b])


def test_array_head_matches_cbor2_at_every_boundary() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536):
        assert array_head(n) == cbor2.dumps([None] * n)[:len(array_head(n))]
        assert cbor2.loads(array_head(n) + b"\xf6" * n) == [None] * n


def test_devices_of_one_model_share_one_layout_and_a_thousand_keep_theirs() -> None:
    """The layouts are keyed by the point set's contents: a thousand devices of one model (equal but
    distinct tuples, as each device's config makes them) take one layout, and a thousand devices of
    distinct one-point sets all stay cached, so no message rebuilds its layout."""
    from gateway.wire import cbor

    cbor._layouts.clear()

    def one(name: str, unit: str | None) -> StoredBatch:
        return StoredBatch(row=1, device=name, seq0=1, ts=1_700_000_000_000, names=tuple(["level"]),
                           units=(unit,), values=[1.5], errors=None, unsynced=None)

    same = [one(f"d{i}", "m") for i in range(1000)]
    assert len({id(b.names) for b in same}) > 1  # distinct objects of equal contents
    assert len({batch_records(b) for b in same}) == 1
    assert len(cbor._layouts) == 1
    distinct = [one(f"d{i}", f"u{i}") for i in range(1000)]
    for b in distinct:
        batch_records(b)
    built = dict(cbor._layouts)
    for b in distinct:  # the second round finds every layout built by the first
        batch_records(b)
    assert len(built) == 1001 and all(cbor._layouts[k] is v for k, v in built.items())
