"""A poison batch, with the real daemon: a poll the buffer stores but the wire format cannot encode.

It must not stall publishing (the session would die on it, reconnect and start on it again, for
ever): it is set aside in the buffer's quarantine table, counted in ``buffer.quarantined``, and
everything else flows in order, the same device's later batches too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber, assert_in_order, seqs_by_device, telemetry
from tests.support.faults import Arrivals, sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway
from tests.support.plugins import plugin_env

pytestmark = pytest.mark.integration

POINTS, POLLS, POISON_POLL = 3, 12, 5
POISON_SEQS = set(range((POISON_POLL - 1) * POINTS + 1, POISON_POLL * POINTS + 1))  # 13..15


def test_a_batch_json_cannot_carry_is_set_aside_and_the_rest_flows_in_order(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    flags = [tmp_path / "good.dead"]
    config = base_config(tmp_path / "data", mosquitto.port, encoding="json", commit="100ms")
    # All of the device's polls make one message (full at its last poll): the poison batch shares it.
    config["mqtt"]["batch"] = {"linger": "5s", "max_readings": POLLS * POINTS}
    config["devices"] = [
        {"name": "bad", "driver": "poison", "interval": "50ms", "size": POINTS,
         "poison_polls": [POISON_POLL], "polls": POLLS},
        sim_device("good", "20ms", flags[0]),
    ]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways, env=plugin_env(tmp_path / "plugins")).start()
    last = {"bad": POLLS * POINTS}
    sub.wait_for(Arrivals().complete(last, evicted=len(POISON_SEQS)), timeout=30)

    status = drain_devices(gw, flags)
    assert status["devices"]["bad"]["seq"] == POLLS * POINTS
    status = gw.wait_status(lambda s: s["buffer"]["quarantined"] == len(POISON_SEQS), timeout=10)
    assert status["buffer"]["evicted"] == 0 and status["buffer"]["state"] == "ok"
    assert status["broker"]["connects"] == 1, "the poison batch cost a reconnect"
    expected = {"bad": POLLS * POINTS, "good": status["devices"]["good"]["seq"]}
    msgs = sub.wait_for(Arrivals().complete(expected, evicted=len(POISON_SEQS)), timeout=20)
    got = seqs_by_device(msgs)
    assert got["bad"] == [s for s in range(1, POLLS * POINTS + 1) if s not in POISON_SEQS]
    assert len([doc for doc in telemetry(msgs) if doc["device"] == "bad"]) == 1, "the culprit was not found"
    assert_in_order(msgs, {"good": expected["good"]}, exact=True)
    lines = [line for line in gw.log().splitlines() if "cannot be encoded" in line]
    assert len(lines) == 1 and "bad" in lines[0] and "13-15" in lines[0], lines
    assert gw.terminate() == 0

    conn = sqlite3.connect(tmp_path / "data" / "buffer.db")
    try:
        rows = conn.execute("SELECT device, seq0, n, reason FROM quarantine").fetchall()
        assert conn.execute("SELECT count(*) FROM batch").fetchone()[0] == 0
    finally:
        conn.close()
    assert len(rows) == 1
    device, seq0, n, reason = rows[0]
    assert (device, seq0, n) == ("bad", min(POISON_SEQS), POINTS) and "bytes" in reason, rows
