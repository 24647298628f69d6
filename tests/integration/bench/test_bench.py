"""`gateway bench` runs briefly and reports sane numbers with every reading accounted for.

Benchmarks are not timed tests: nothing here checks a throughput or a latency target, only that
the bench works, that what was delivered equals what was produced (nothing missing by seq), and
that its figures are plausible.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest

from gateway.bench.report import render
from gateway.bench.subscriber import BenchSubscriber, mqtt_overhead
from tests.support.broker import Mosquitto
from tests.support.needs import require_tool

# The bench loads both cores on purpose: it runs alone, after the parallel pass (see the Makefile).
pytestmark = [pytest.mark.integration, pytest.mark.serial_only]

MB = 1024 * 1024


def _bench(*args: str, timeout: float = 100) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", *args, "--json"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"bench exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert proc.stderr.strip(), "no progress lines on stderr"
    return report


def _accounted(result: dict[str, Any]) -> None:
    """Every produced reading arrived exactly as counted by seq; nothing evicted."""
    assert result["ok"] is True, result
    assert result["produced"] > 0
    assert result["delivered"] == result["produced"]
    assert result["missing"] == 0
    assert result["extra"] == 0
    assert result["evicted"] == 0
    assert result["decode_errors"] == 0
    assert result["gateway_exit"] == 0
    assert result["peak_rss_bytes"] > 1 * MB
    assert result["cpu_s_total"] > 0 and result["cpu_us_per_reading_run"] > 0
    assert result["disk_bytes_per_reading"] > 0


def _steady_sane(result: dict[str, Any], offered: float) -> None:
    assert result["offered_per_s"] == pytest.approx(offered)
    assert result["window_s"] > 1.0
    for key in ("delivered_per_s", "acked_per_s", "read_per_s", "cpu_us_per_reading",
                "wire_payload_bytes_per_reading", "mqtt_overhead_bytes_per_reading"):
        assert result[key] > 0, key
    assert result["delivered_fraction"] == pytest.approx(result["delivered_per_s"] / offered)
    # Delivered is a slope over the commit bursts (about 0.75 to 1.15 of the true rate in a 2 s
    # window, whatever was delivered): far below, the publisher fell behind; above, readings counted twice.
    assert 0.5 < result["delivered_fraction"] < 1.5
    # Overruns are polls skipped: the window's are some of the run's, and at these loads few.
    assert result["overruns"] <= result["overruns_total"]
    assert result["overrun_fraction"] < 0.25
    assert 0 < result["ready_s"] < result["first_reading_s"] < 30
    latency = result["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p99"] <= latency["max"]


def test_load_scenario_json() -> None:
    report = _bench("--scenario", "load", "--devices", "2", "--points", "10", "--interval", "50ms",
                    "--duration", "2")
    assert set(report["scenarios"]) == {"load"}
    assert report["options"]["devices"] == 2
    assert report["broker"].startswith("private mosquitto")
    load = report["scenarios"]["load"]
    _accounted(load)
    _steady_sane(load, offered=2 * 10 / 0.05)
    assert load["devices"] == 2 and load["points_per_device"] == 10


def test_moderate_and_drain_scenarios() -> None:
    report = _bench("--scenario", "moderate,drain", "--devices", "2", "--points", "5", "--interval", "10ms",
                    "--duration", "2", "--warmup", "1s", "--drain-readings", "2000", "--encoding", "json")
    moderate, drain = report["scenarios"]["moderate"], report["scenarios"]["drain"]
    _accounted(moderate)
    _steady_sane(moderate, offered=2 * 5 / 1.0)
    assert moderate["encoding"] == "json"
    _accounted(drain)
    assert drain["backlog_readings"] >= 2000
    assert drain["drain_s"] > 0 and drain["drain_per_s"] > 0
    # From the broker's start to the first reading delivered: after it, within the publisher's backoff cap.
    assert 0 < drain["reconnect_s"] < 60 and drain["fill_s"] > 0
    assert drain["produced"] >= drain["backlog_readings"]


def test_many_scenario_runs_both_shapes_whatever_devices_and_points() -> None:
    report = _bench("--scenario", "many", "--devices", "2", "--points", "5", "--duration", "2", "--warmup", "1s",
                    timeout=300)
    many = report["scenarios"]["many"]
    for shape, devices, points in (("1000x1", 1000, 1), ("100x10", 100, 10)):
        run = many[shape]
        _accounted(run)
        assert run["devices"] == devices and run["points_per_device"] == points
        assert run["offered_per_s"] == pytest.approx(devices * points)
        assert run["polls_per_s"] > 0 and run["messages_per_s"] > 0
        # CPU per poll is CPU per reading times the readings a poll makes (the same window)
        assert run["cpu_us_per_poll"] == pytest.approx(
            run["cpu_us_per_reading"] * run["delivered_per_s"] / run["polls_per_s"])
        # The floor: the MQTT client alone at the run's rate and message size, every message acked
        floor = run["floor"]
        assert floor["rate"] == round(run["messages_per_s"]), floor
        assert floor["payload_bytes"] == round(run["wire_payload_bytes_per_reading"] * run["readings_per_message"])
        assert floor["messages"] >= floor["rate"] and floor["cpu_us_per_message"] > 0, floor


def test_many_scenario_with_devices_grouped_counts_every_reading_of_fewer_messages() -> None:
    report = _bench("--scenario", "many", "--shapes", "200x2", "--group-devices", "50", "--duration", "2",
                    "--warmup", "1s", timeout=120)
    run = report["scenarios"]["many"]["200x2"]
    _accounted(run)
    assert run["group_devices"] == 50 and report["options"]["group_devices"] == 50
    # a message carries several devices: far fewer messages than polls (about one per 50 devices polled;
    # the two rates are slopes over a short window, so not to the message)
    assert run["polls_per_s"] / 100 < run["messages_per_s"] < run["polls_per_s"] / 5


def test_modbus_scenario() -> None:
    """One Modbus TCP device served by the bench itself: coalesced into one request per poll, every
    reading delivered, and the device made to fail at the end (the server answers exception 11)."""
    report = _bench("--scenario", "modbus", "--duration", "2", "--warmup", "1s", "--devices", "3", "--points", "7")
    assert set(report["scenarios"]) == {"modbus"}
    modbus = report["scenarios"]["modbus"]
    _accounted(modbus)
    _steady_sane(modbus, offered=100 / 0.1)  # 100 registers every 100 ms, whatever --devices and --points
    assert modbus["devices"] == 1 and modbus["points_per_device"] == 100
    assert modbus["groups"] == [{"devices": 1, "points": 100, "interval_s": 0.1, "driver": "modbus"}]
    assert modbus["produced"] % 100 == 0  # whole polls only: a failing poll produces nothing
    assert modbus["requests_per_poll"] == pytest.approx(1.0, abs=0.1)  # 100 registers, one request
    assert modbus["server_reads"] * 100 >= modbus["produced"]
    assert not modbus["gateway_warnings"], modbus["gateway_warnings"]  # the final failure is not one
    # The floor: the same polls with no gateway, each client answered on (nearly) every grid point
    # of its 2 s window, so the server was revived after the run's final failure.
    assert set(modbus["floor"]) == {"pymodbus", "socket"}
    for client, floor in modbus["floor"].items():
        assert floor["client"] == client
        assert 15 <= floor["polls"] <= 21, floor
        assert floor["cpu_s"] > 0
        assert floor["cpu_us_per_reading"] == pytest.approx(floor["cpu_s"] / (floor["polls"] * 100) * 1e6)
    table = render(report)
    assert "modbus  (offered 1,000 readings/s: 1 modbus device x 100 points every 100 ms" in table
    assert "Modbus requests" in table and "result: OK" in table
    assert "floor: no gateway" in table


def test_wire_and_startup_against_a_given_broker(mosquitto: Mosquitto) -> None:
    report = _bench("--scenario", "wire,startup,drain", "--devices", "1", "--points", "4", "--duration", "1",
                    "--warmup", "1s", "--broker", f"{mosquitto.host}:{mosquitto.port}")
    assert report["broker"] == f"{mosquitto.host}:{mosquitto.port}"
    scenarios = report["scenarios"]
    assert "skipped" in scenarios["drain"]  # it needs a broker it can start late
    for encoding in ("cbor", "json"):
        _accounted(scenarios["wire"][encoding])
    assert scenarios["wire"]["json"]["wire_payload_bytes_per_reading"] > \
        scenarios["wire"]["cbor"]["wire_payload_bytes_per_reading"] > 0
    _accounted(scenarios["startup"])
    assert 0 < scenarios["startup"]["ready_s"] < scenarios["startup"]["first_reading_s"]


def test_table_output_and_bad_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--scenario", "startup", "--devices", "1",
                           "--points", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "first reading delivered" in proc.stdout
    assert "result: OK" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--scenario", "lode"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2
    assert "lode" in bad.stderr


# -- the subscriber's accounting, without a broker ---------------------------------------------------


def _message(topic: str, device: str, seqs: list[int], ts: int = 1_700_000_000_000) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=topic.encode())
    readings = [{"seq": s, "ts": ts, "point": "p", "value": 1.0} for s in seqs]
    msg.payload = cbor2.dumps({"gateway": "gw", "device": device, "readings": readings})
    return msg


def test_subscriber_counts_missing_duplicate_and_extra_seqs() -> None:
    sub = BenchSubscriber("127.0.0.1", 1, "bench", "gw")
    topic = "bench/gw/a/telemetry"
    for seqs in ([1, 2, 3], [3, 4], [6, 5], [9]):
        sub._on_message(None, None, _message(topic, "a", seqs))
    sub._on_message(None, None, _message("bench/gw/b/telemetry", "b", [1, 2]))
    tally = sub.tally({"a": 7, "b": 2})
    assert tally == {"produced": 9, "delivered": 8, "missing": 1, "duplicates": 1, "extra": 1}
    snap = sub.snapshot()
    assert snap.distinct == 9 and snap.readings == 10 and snap.messages == 5
    assert sub.latency_ms()["p50"] is not None


def test_subscriber_counts_the_devices_of_a_group_message_by_seq() -> None:
    sub = BenchSubscriber("127.0.0.1", 1, "bench", "gw")
    assert sub.group_topic == "bench/gw/telemetry"
    ts = 1_700_000_000_000
    for first in (1, 3, 3):  # the last one again: duplicates
        msg = paho.MQTTMessage(topic=b"bench/gw/telemetry")
        msg.payload = cbor2.dumps({"gateway": "gw", "devices": [
            {"device": d, "readings": [{"seq": s, "ts": ts, "point": "p", "value": 1} for s in (first, first + 1)]}
            for d in ("a", "b")]})
        sub._on_message(None, None, msg)
    assert sub.tally({"a": 4, "b": 5}) == {"produced": 9, "delivered": 8, "missing": 1, "duplicates": 4,
                                            "extra": 0}
    snap = sub.snapshot()
    assert snap.messages == 3 and snap.readings == 12 and snap.distinct == 8


def test_mqtt_overhead_counts_publish_framing_and_puback() -> None:
    # 1 fixed header byte, 1 length byte, 2 + 5 topic, 2 packet id; PUBACK 4.
    assert mqtt_overhead("a/b/c", 10) == 1 + 1 + 7 + 2 + 4
    assert mqtt_overhead("a/b/c", 200) == 1 + 2 + 7 + 2 + 4


@pytest.mark.parametrize("client", ["pymodbus", "socket"])
def test_modbus_floor_says_why_it_cannot_measure(client: str) -> None:
    """No server on the port: the floor probe fails with the reason, not a traceback or a zero."""
    from gateway.bench.modbus import run_floor
    from gateway.bench.run import BenchError, PortHold

    hold = PortHold()  # bound, not listening: a connection is refused
    try:
        with pytest.raises(BenchError, match=rf"(?i)modbus floor \({client}\): .*(connect|refused)"):
            run_floor(client, hold.port, warmup=0.1, window=0.5)
    finally:
        hold.release()


def _failover_sane(result: dict[str, Any], brokers: str) -> None:
    """Every reading accounted for (duplicates allowed: at least once), the move measured."""
    _accounted(result)
    assert result["brokers"] == brokers
    assert result["moved_to"] != result["killed"]
    assert result["failovers"] >= 1
    first = result["death_to_first_puback_s"]
    assert 0 < first == min(result["death_to_first_reading_acked_s"], result["death_to_status_acked_s"]) < 60
    assert result["readings_resent"] == result["duplicates"] >= 0


def test_failover_scenario_on_a_nats_cluster() -> None:
    require_tool("nats-server", "nats-server")
    report = _bench("--scenario", "failover", "--devices", "2", "--points", "10", "--duration", "2",
                    "--warmup", "1s")
    _failover_sane(report["scenarios"]["failover"], "3 nats-server nodes")
    assert "node death to PUBACK" in render(report)


def test_failover_scenario_on_two_mosquittos_without_nats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where nats-server is missing (made so here: it is installed), two Mosquittos stand in."""
    import gateway.bench.nats_cluster as nats_cluster
    from gateway.bench.main import Bench, BenchOptions
    from gateway.bench.report import Progress

    def missing(*args: object, **kw: object) -> None:
        raise nats_cluster.ClusterError("nats-server is not installed")

    monkeypatch.setattr(nats_cluster, "NatsCluster", missing)
    opts = BenchOptions(devices=2, points=10, duration=2.0, warmup=1.0, scenarios=("failover",))
    with Bench(opts, Progress(io.StringIO())) as bench:
        report = bench.run()
    assert report["ok"] is True, report["scenarios"]
    _failover_sane(report["scenarios"]["failover"], "2 Mosquittos")
