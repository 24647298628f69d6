"""Finding the poison batch of a message: only the batches that cannot be encoded are left out."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.config.settings import MqttSection
from gateway.model import StoredBatch
from gateway.publish.payloads import Payloads, encode_parts
from gateway.wire.encoding import decode_telemetry, encode_telemetry

NAMES = ("p0", "p1")


def stored(row: int, values: list[Any]) -> StoredBatch:
    return StoredBatch(row, "dev", 1 + 2 * (row - 1), 1_700_000_000_000 + row, NAMES, (None, None), values)


def json_encode(batches: Any) -> bytes:
    return encode_telemetry("gw", "dev", batches, "json")


def seqs(payload: bytes) -> list[int]:
    return [r["seq"] for r in decode_telemetry(payload)["readings"]]


@pytest.mark.parametrize("bad", [b"raw", [1.0, math.nan], {(1, 2): "tuple key"}], ids=["bytes", "nested-nan", "key"])
def test_the_culprit_is_left_out_and_the_rest_goes_in_one_message(bad: Any) -> None:
    group = [stored(1, [1, 2]), stored(2, [bad, 4]), stored(3, [5, 6])]
    parts, poison = encode_parts(json_encode, group)
    assert [b.row for b, _ in poison] == [2] and poison[0][1].split(":")[0] in ("TypeError", "ValueError")
    assert len(parts) == 1 and [b.row for b in parts[0][0]] == [1, 3]
    assert seqs(parts[0][1]) == [1, 2, 5, 6]


def test_a_clean_message_is_encoded_once() -> None:
    calls: list[int] = []

    def encode(batches: Any) -> bytes:
        calls.append(len(batches))
        return json_encode(batches)

    group = [stored(1, [1, 2]), stored(2, [3, 4])]
    assert encode_parts(encode, group) == ([(group, json_encode(group))], []) and calls == [2]


def test_nothing_to_send_when_every_batch_is_poison() -> None:
    parts, poison = encode_parts(json_encode, [stored(1, [b"x", 1]), stored(2, [b"y", 2])])
    assert parts == [] and [b.row for b, _ in poison] == [1, 2]


def test_batches_that_encode_alone_but_not_together_go_one_by_one() -> None:
    def encode(batches: Any) -> bytes:
        if len(batches) > 2:
            raise OverflowError("too many together")
        return json_encode(batches)

    group = [stored(1, [b"x", 1]), stored(2, [3, 4]), stored(3, [5, 6]), stored(4, [7, 8])]
    parts, poison = encode_parts(encode, group)
    assert [b.row for b, _ in poison] == [1]
    assert [[b.row for b in part] for part, _ in parts] == [[2], [3], [4]]


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def quarantine(self, rows: Mapping[int, str]) -> None:
        self.rows.update(rows)


def test_poison_is_set_aside_in_the_buffer_and_logged_once_per_device(caplog: pytest.LogCaptureFixture) -> None:
    buffer = Recorder()
    payloads = Payloads(MqttSection(host="x", encoding="json"), "gw", buffer)
    of = functools.partial(payloads.of, "dev")
    assert [seqs(p) for _, p in of([stored(1, [1, 2]), stored(2, [b"x", 4])])] == [[1, 2]]
    assert of([stored(3, [b"y", 6])]) == []
    assert set(buffer.rows) == {2, 3} and "bytes" in buffer.rows[2]
    lines = [r for r in caplog.records if "cannot be encoded" in r.getMessage() and r.levelname == "ERROR"]
    assert len(lines) == 1 and "device dev: seq 3-4 (2 readings)" in lines[0].getMessage()
