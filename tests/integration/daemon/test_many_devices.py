"""Many small devices on the real daemon: every seq of every device arrives, each on its own topic
(or, with ``mqtt.batch.devices``, in group messages on the gateway's topic), and one device failing,
or another removed by a reload (SIGHUP), leaves the others polling as before.

The devices share the grid of their interval (one wake-up, one timer: gateway.timers.Deadlines) and
their messages are acked by PUBACK without a task each (gateway.publish.inflight): what this checks
is that the contract holds through both, not how fast they are (that is `gateway bench --scenario many`).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto, Subscriber, assert_in_order, has_all, seqs_by_device, telemetry
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway, write_config

DEVICES = 200
INTERVAL = "500ms"


def _device(name: str, flag: Path, points: int) -> dict[str, Any]:
    return {"name": name, "driver": "simulated", "interval": INTERVAL, "fail_flag": str(flag),
            "points": [{"name": f"p{k}", "signal": "counter"} for k in range(points)]}


def _seqs(status: dict[str, Any]) -> dict[str, int]:
    return {name: d["seq"] for name, d in status["devices"].items()}


@pytest.mark.parametrize(("group", "encoding"), [(1, "cbor"), (64, "cbor"), (64, "packed")],
                         ids=["own-topics", "group-of-64", "group-of-64-packed-deflated"])
def test_every_seq_of_hundreds_of_devices_arrives_and_one_failing_or_removed_disturbs_none(
    tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess], group: int, encoding: str
) -> None:
    stop, sick_flag = tmp_path / "stop.flag", tmp_path / "sick.flag"
    config = base_config(tmp_path / "data", mosquitto.port, encoding=encoding)
    if group > 1:
        config["mqtt"].setdefault("batch", {})["devices"] = group
        config["mqtt"]["compress"] = encoding == "packed"
    # one and three points: a meter's phases beside level sensors
    config["devices"] = [_device(f"d{i:03d}", stop, 1 + 2 * (i % 5 == 0)) for i in range(DEVICES)]
    config["devices"][7]["fail_flag"] = str(sick_flag)  # d007 fails alone
    gw = new_gateway(tmp_path, config, gateways)
    with Subscriber(mosquitto.host, mosquitto.port, ["city/gw-test/+/telemetry", "city/gw-test/telemetry"]) as sub:
        gw.start(wait=False).wait_ready(timeout=60)
        gw.wait_status(lambda s: s["broker"]["connected"] and min(_seqs(s).values()) >= 3, timeout=60)

        sick_flag.write_text("sensor unplugged")
        failed = gw.wait_status(lambda s: s["devices"]["d007"]["state"] == "error", timeout=30)
        assert failed["devices"]["d007"]["last_error"] == "sensor unplugged"

        left = gw.status()["devices"]["d013"]["seq"]  # d013 leaves with the reload
        config["devices"] = [d for d in config["devices"] if d["name"] != "d013"]
        write_config(gw.config_path, config)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        reloaded = gw.wait_status(lambda s: "d013" not in s["devices"], timeout=30)
        left = max(left, max(seqs_by_device(sub.messages).get("d013", [0])))

        # every other device goes on polling: two more polls each after the failure and the reload
        healthy = {name: seq for name, seq in _seqs(reloaded).items() if name != "d007"}
        after = gw.wait_status(lambda s: all(s["devices"][n]["seq"] >= seq + 2 for n, seq in healthy.items()),
                               timeout=60)
        assert all(d["state"] == "ok" and d["errors"] == 0 for n, d in after["devices"].items() if n != "d007")
        assert after["broker"]["connects"] == 1  # the session was never torn down

        final = drain_devices(gw, [stop], timeout=60)
        produced = _seqs(final)
        received = sub.wait_for(has_all(produced), timeout=30)
    assert len(produced) == DEVICES - 1 and final["buffer"]["evicted"] == 0
    assert_in_order(received, produced, exact=True)  # a clean run: each seq once
    # the removed device: everything it had committed when it left arrived, without a gap
    got = set(seqs_by_device(received).get("d013", ()))
    assert left > 0 and set(range(1, left + 1)) <= got and got == set(range(1, max(got) + 1))
    if group == 1:  # one device per message, on the device's own topic
        for message in received:
            doc = message.doc
            assert message.topic == f"city/gw-test/{doc['device']}/telemetry"
            assert len({r["point"] for r in doc["readings"]}) <= 3
        assert len(telemetry(received)) >= DEVICES
        return
    # every reading in group messages on the gateway's topic, each device at most once in one
    assert {m.topic for m in received} == {"city/gw-test/telemetry"}
    sizes = [[d["device"] for d in m.doc["devices"]] for m in received]
    assert all(len(names) == len(set(names)) <= group for names in sizes)
    assert max(map(len, sizes)) > 1 and len(received) < len(telemetry(received))
