"""Group messages (mqtt.batch.devices > 1): which devices' batches go into which message, in what order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.settings import MqttSection
from gateway.model import StoredBatch
from gateway.publish.grouping import Grouping, GroupMessage
from gateway.publish.payloads import Payloads
from gateway.wire.encoding import decode_telemetry, split_devices


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def quarantine(self, rows: Mapping[int, str]) -> None:
        self.rows.update(rows)


def grouping(buffer: Recorder | None = None, **batch: Any) -> Grouping:
    mqtt = MqttSection(host="x", encoding=batch.pop("encoding", "json"), batch={"devices": 100, **batch})
    return Grouping(mqtt, "gw", Payloads(mqtt, "gw", buffer or Recorder()))


def fetched(sizes: list[tuple[str, int]]) -> list[StoredBatch]:
    """Batches as the buffer hands them over (ascending row): (device, readings) each, seqs per device."""
    seq: dict[str, int] = {}
    out = []
    for row, (device, n) in enumerate(sizes, start=1):
        first = seq.get(device, 1)
        seq[device] = first + n
        out.append(StoredBatch(row, device, first, 1_700_000_000_000 + row, tuple(f"p{k}" for k in range(n)),
                               (None,) * n, list(range(n))))
    return out


def per_device(batches: list[StoredBatch]) -> list[tuple[str, list[StoredBatch]]]:
    """One message's worth per device, as the session's linger-0 drain hands them over."""
    held: dict[str, list[StoredBatch]] = {}
    for b in batches:
        held.setdefault(b.device, []).append(b)
    return list(held.items())


def devices_of(message: GroupMessage) -> list[str]:
    return [doc["device"] for doc in split_devices(decode_telemetry(message[1]))]


def test_up_to_n_devices_per_message_in_the_order_they_came() -> None:
    out = grouping(devices=2).messages(per_device(fetched([(f"d{i}", 1) for i in range(5)])))
    assert [devices_of(m) for m in out] == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert [[b.row for b in batches] for batches, _ in out] == [[1, 2], [3, 4], [5]]  # the rows each PUBACK acks


def test_max_readings_bounds_the_whole_message_and_a_large_device_goes_alone() -> None:
    ready = [("a", fetched([("a", 2)])), ("b", fetched([("b", 2)])), ("c", fetched([("c", 5)])),
             ("d", fetched([("d", 1)]))]
    out = grouping(max_readings=3).messages(ready)
    assert [devices_of(m) for m in out] == [["a"], ["b"], ["c"], ["d"]]
    out = grouping(max_readings=4).messages(ready)
    assert [devices_of(m) for m in out] == [["a", "b"], ["c"], ["d"]]


def test_a_device_with_more_than_one_message_of_readings_is_never_twice_in_one_and_stays_in_order() -> None:
    g = grouping(max_readings=4)
    held = {}
    for b in fetched([("a", 3), ("b", 1), ("a", 3), ("a", 3)]):
        held.setdefault(b.device, []).append(b)
    since = dict.fromkeys(held, 0.0)
    out = g.take(held, since, now=0.0)
    assert held == {} and since == {}  # linger 0: everything fetched goes
    docs = [split_devices(decode_telemetry(payload)) for _, payload in out]
    assert [[d["device"] for d in m] for m in docs] == [["a"], ["a"], ["a", "b"]]  # a device after another
    seqs_a = [r["seq"] for m in docs for d in m if d["device"] == "a" for r in d["readings"]]
    assert seqs_a == list(range(1, 10))


def test_max_bytes_bounds_the_whole_message() -> None:
    ready = per_device(fetched([(f"device-{i:03d}", 3) for i in range(40)]))
    for encoding in ("json", "cbor", "packed"):
        out = grouping(max_bytes=400, encoding=encoding).messages(ready)
        assert len(out) > 1 and all(len(payload) <= 400 for _, payload in out)
        assert sum(len(devices_of(m)) for m in out) == 40


def test_an_entry_just_under_max_bytes_is_halved_when_the_envelope_would_take_it_over() -> None:
    """A device's entry between max_bytes less the envelope and max_bytes: alone it still makes a
    message over the limit, so it is halved by polls like an entry over it (one poll goes alone)."""
    gateway = "gateway-with-a-long-id"
    for encoding in ("json", "cbor", "packed"):
        mqtt = MqttSection(host="x", encoding=encoding, batch={"devices": 100, "max_bytes": 300})
        g = Grouping(mqtt, gateway, Payloads(mqtt, gateway, Recorder()))
        for polls in range(1, 40):
            out = g.messages([("d", fetched([("d", 1)] * polls))])
            for batches, payload in out:
                assert len(payload) <= 300 or len(batches) == 1, (encoding, polls, len(payload), len(batches))
            seqs = [r["seq"] for _, p in out for d in split_devices(decode_telemetry(p)) for r in d["readings"]]
            assert seqs == list(range(1, polls + 1))


def test_a_device_entry_over_max_bytes_is_halved_by_polls_into_messages_in_order() -> None:
    batches = fetched([("big", 20)] * 6)  # six polls of 20 points, about 1,100 bytes of JSON each
    out = grouping(max_bytes=1300).messages([("big", batches)])
    assert len(out) > 1 and all(len(payload) <= 1300 for _, payload in out)
    seqs = [r["seq"] for _, payload in out for d in split_devices(decode_telemetry(payload)) for r in d["readings"]]
    assert seqs == list(range(1, 121))


def test_linger_holds_a_device_until_its_message_fills_or_its_time_is_up() -> None:
    g = grouping(max_readings=4, linger="5s")
    held = {b.device: [b] for b in fetched([("full", 4), ("young", 1), ("old", 1)])}
    since = {"full": 9.0, "young": 9.0, "old": 4.0}
    out = g.take(held, since, now=9.5)
    assert [devices_of(m) for m in out] == [["full"], ["old"]]  # full + old would be 5 readings
    assert list(held) == ["young"] and since == {"young": 9.0}


def test_poison_is_set_aside_per_batch_and_the_rest_of_every_device_goes_on() -> None:
    buffer = Recorder()
    batches = fetched([("a", 2), ("b", 2), ("a", 2)])
    batches[0].values[1] = b"raw bytes"  # JSON cannot carry it
    out = grouping(buffer).messages(per_device(batches))
    assert list(buffer.rows) == [1]
    docs = split_devices(decode_telemetry(out[0][1]))
    assert [(d["device"], [r["seq"] for r in d["readings"]]) for d in docs] == [("a", [3, 4]), ("b", [1, 2])]
    assert [b.row for b in out[0][0]] == [3, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), min_size=1, max_size=40),
       st.integers(1, 5), st.integers(1, 12), st.sampled_from(["cbor", "json", "packed"]))
def test_every_reading_once_per_device_in_seq_order_within_every_limit(
        spec: list[tuple[int, int]], devices: int, max_readings: int, encoding: str) -> None:
    g = grouping(devices=devices, max_readings=max_readings, encoding=encoding)
    batches = fetched([(f"d{i}", n) for i, n in spec])
    held: dict[str, list[StoredBatch]] = {}
    for b in batches:
        held.setdefault(b.device, []).append(b)
    out = g.take(held, dict.fromkeys(held, 0.0), now=0.0)
    got: dict[str, list[int]] = {}
    for rows, payload in out:
        docs = split_devices(decode_telemetry(payload))
        names = [d["device"] for d in docs]
        readings = sum(len(d["readings"]) for d in docs)
        assert len(names) == len(set(names)) <= devices
        assert readings <= max_readings or len(rows) == 1  # only one poll over the limit goes alone
        assert readings == sum(len(b) for b in rows)
        for d in docs:
            got.setdefault(d["device"], []).extend(r["seq"] for r in d["readings"])
    for device, n in {f"d{i}": 0 for i, _ in spec}.items():
        total = n + sum(size for i, size in spec if f"d{i}" == device)
        assert got[device] == list(range(1, total + 1))


def test_the_option_is_off_by_default() -> None:
    mqtt = MqttSection(host="x")
    assert mqtt.batch.devices == 1
    with pytest.raises(ValueError):
        MqttSection(host="x", batch={"devices": 0})
