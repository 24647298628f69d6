"""The gateway as a process: real broker, real Modbus server, `gateway run` killed and restarted."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.buildinfo import build_info
from tests.support import REPO
from tests.support.broker import Mosquitto, Received, Subscriber, first_arrivals, has_all, retained, telemetry
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway, run_cli
from tests.support.modbus_server import ModbusTestServer, encode_registers

TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
SAMPLE = {
    "int16": -12345, "uint16": 54321, "int32": -1234567890, "uint32": 3234567890,
    "int64": -1234567890123456789, "uint64": 12345678901234567890, "float32": 123.456, "float64": -9876.54321,
}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4}


def _sim_device(name: str, interval: str, flag: Path) -> dict[str, Any]:
    return {
        "name": name, "driver": "simulated", "interval": interval, "fail_flag": str(flag),
        "points": [{"name": "ramp", "signal": "counter"}, {"name": "wave", "signal": "sine", "period": "5s"},
                   {"name": "noise", "signal": "random", "unit": "V"}],
    }


def _start(tmp_path: Path, config: dict[str, Any], gateways: list[GatewayProcess]) -> GatewayProcess:
    return new_gateway(tmp_path, config, gateways).start()


def _readings(messages: list[Received]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every reading received, keyed by (device, seq); duplicates kept."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for doc in telemetry(messages):
        for r in doc["readings"]:
            out.setdefault((doc["device"], r["seq"]), []).append(r)
    return out


def _stop_devices_and_get_last_seqs(gw: GatewayProcess, flags: list[Path]) -> dict[str, int]:
    """Make every simulated device fail, wait until all its readings are committed; last seq per device."""
    for flag in flags:
        flag.write_text("stopped by the test")
    status = gw.wait_status(
        lambda s: all(d["state"] == "error" for d in s["devices"].values()) and s["buffer"]["pending"] == 0,
        timeout=30,
    )
    return {name: dev["seq"] for name, dev in status["devices"].items()}


def _assert_complete_and_ordered(messages: list[Received], last: dict[str, int]) -> None:
    by_device: dict[str, list[int]] = {}
    for doc in telemetry(messages):
        by_device.setdefault(doc["device"], []).extend(r["seq"] for r in doc["readings"])
    for device, n in last.items():
        first = first_arrivals(by_device[device])
        assert first == list(range(1, n + 1)), f"{device}: readings missing or out of order"


# -- values end to end ------------------------------------------------------------------------------------


def _modbus_points() -> tuple[list[dict[str, Any]], dict[str, Any], list[tuple[int, list[int]]]]:
    points, expected, images = [], {}, []
    address = 0
    for type_ in TYPES:
        for order in ORDERS:
            name = f"{type_}_{order}"
            points.append({"name": name, "table": "holding", "address": address, "type": type_, "byte_order": order})
            images.append((address, encode_registers(SAMPLE[type_], type_, order)))
            expected[name] = SAMPLE[type_]
            address += WIDTH[type_]
    points.append({"name": "level", "table": "holding", "address": 90, "type": "int16", "scale": 0.1,
                   "offset": 1, "unit": "m"})
    images.append((90, encode_registers(-25, "int16")))
    expected["level"] = -1.5
    points.append({"name": "flow", "table": "input", "address": 5, "type": "uint16"})
    expected["flow"] = 777
    points.append({"name": "door", "table": "coil", "address": 3, "type": "bool"})
    expected["door"] = True
    return points, expected, images


@pytest.mark.parametrize("encoding", ["cbor", "json"])
async def test_every_type_and_byte_order_reaches_the_broker(
    encoding: str, tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber],
    gateways: list[GatewayProcess],
) -> None:
    server = ModbusTestServer()
    await server.start()
    points, expected, images = _modbus_points()
    for address, regs in images:
        await server.set_registers("holding", address, regs)
    await server.set_registers("input", 5, [777])
    await server.set_bits("coil", 3, [True])
    sub = subscribe("city/gw-test/meter-1/telemetry")
    config = base_config(tmp_path / "data", mosquitto.port, encoding=encoding)
    config["devices"] = [{"name": "meter-1", "driver": "modbus", "interval": "200ms",
                          "connection": {"transport": "tcp", "host": "127.0.0.1", "port": server.port,
                                         "unit_id": 1, "timeout": "1s"},
                          "points": points}]
    try:
        await asyncio.to_thread(_start, tmp_path, config, gateways)
        msgs = await sub.wait_for_async(lambda ms: len(telemetry(ms)) >= 1, timeout=20)
    finally:
        await server.stop()
    doc = telemetry(msgs)[0]
    assert doc["gateway"] == "gw-test" and doc["device"] == "meter-1"
    first_poll = [r for r in doc["readings"] if r["ts"] == doc["readings"][0]["ts"]]  # a message may hold more
    got = {r["point"]: r for r in first_poll}
    assert len(first_poll) == len(got) and set(got) == set(expected)  # one poll: every point once, one ts
    for name, value in expected.items():
        assert "error" not in got[name], got[name]
        if isinstance(value, float):
            assert math.isclose(got[name]["value"], value, rel_tol=1e-6), name
        else:
            assert got[name]["value"] == value and type(got[name]["value"]) is type(value), name
    assert got["level"]["unit"] == "m"
    seqs = [r["seq"] for r in doc["readings"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(doc["readings"]) % len(expected) == 0  # whole polls only
    payload = next(m.payload for m in msgs if m.topic.endswith("/telemetry"))
    assert payload.startswith(b"{") == (encoding == "json")


# -- outages, crashes --------------------------------------------------------------------------------------


def test_broker_outage_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    flags = [tmp_path / "a.dead", tmp_path / "b.dead"]
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [_sim_device("dev-a", "20ms", flags[0]), _sim_device("dev-b", "50ms", flags[1])]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = _start(tmp_path, config, gateways)
    sub.wait_for(lambda ms: len(telemetry(ms)) >= 3, timeout=20)
    mosquitto.stop()
    gw.wait_status(lambda s: not s["broker"]["connected"] and s["buffer"]["pending"] > 300, timeout=30)
    assert all(d["state"] == "ok" for d in gw.status()["devices"].values()), "polling stopped in the outage"
    mosquitto.start()
    last = _stop_devices_and_get_last_seqs(gw, flags)
    assert last["dev-a"] + last["dev-b"] > 300
    msgs = sub.wait_for(has_all(last), timeout=60)
    _assert_complete_and_ordered(msgs, last)
    assert "broker lost" in gw.log() and gw.log().count("broker lost") <= 2, gw.log()
    assert gw.terminate() == 0


def test_kill_9_and_restart_loses_at_most_the_commit_window(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    flags = [tmp_path / "a.dead"]
    config = base_config(tmp_path / "data", mosquitto.port, commit="200ms")
    config["devices"] = [_sim_device("dev-a", "10ms", flags[0])]
    sub = subscribe("city/gw-test/#")
    gw = _start(tmp_path, config, gateways)
    assert gw.status()["clean_start"] is True
    sub.wait_for(lambda ms: sum(len(d["readings"]) for d in telemetry(ms)) >= 600, timeout=20)
    kill_ms = int(time.time() * 1000)
    gw.kill()
    before = _readings(sub.messages)
    gw.start()
    assert gw.status()["clean_start"] is False
    last = _stop_devices_and_get_last_seqs(gw, flags)
    msgs = sub.wait_for(has_all(last), timeout=60)
    _assert_complete_and_ordered(msgs, last)
    after = _readings(msgs)
    for key, copies in after.items():  # a number never stands for another reading
        assert all(c == copies[0] for c in copies), f"{key} was published with different content"
    for key, copies in before.items():
        assert after[key][0] == copies[0]
    # The first run's readings stop at most one commit window (+ poll, fsync, scheduling slack) before the kill.
    first_run_ts = [c[0]["ts"] for c in after.values() if c[0]["ts"] <= kill_ms]
    assert kill_ms - max(first_run_ts) < 200 + 1000
    assert "did not stop cleanly" in gw.log()
    assert gw.terminate() == 0


def test_sigterm_publishes_offline_and_exits_0(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [_sim_device("dev-a", "100ms", tmp_path / "never")]
    sub = subscribe("city/gw-test/status")
    gw = _start(tmp_path, config, gateways)
    msgs = sub.wait_for(lambda ms: any(m.decoded().get("state") == "online" for m in ms), timeout=20)
    online = next(m for m in msgs if m.decoded().get("state") == "online")
    assert online.retain or online.qos == 1
    doc = online.decoded()
    assert doc["schema"] == 1 and doc["clean_start"] is True and doc["config_hash"]
    assert doc["build"] == build_info()  # version, git commit, Python
    assert set(doc["buffer"]) >= {"state", "pending", "evicted", "bytes"}
    started = time.monotonic()
    assert gw.terminate(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert retained(mosquitto.host, mosquitto.port, "city/gw-test/status")["state"] == "offline"
    assert not (tmp_path / "data" / "running").exists()


def test_will_says_offline_when_the_process_dies(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    config = base_config(tmp_path / "data", mosquitto.port)
    config["mqtt"]["keepalive"] = 1
    config["devices"] = [_sim_device("dev-a", "100ms", tmp_path / "never")]
    sub = subscribe("city/gw-test/status")
    gw = _start(tmp_path, config, gateways)
    sub.wait_for(lambda ms: any(m.decoded().get("state") == "online" for m in ms), timeout=20)
    gw.kill()  # the TCP link closes without DISCONNECT: the broker sends the will
    sub.wait_for(lambda ms: ms[-1].decoded().get("state") == "offline", timeout=20)
    assert retained(mosquitto.host, mosquitto.port, "city/gw-test/status") == {"schema": 1, "state": "offline"}


# -- devices failing ---------------------------------------------------------------------------------------


async def test_dead_modbus_device_does_not_stop_the_others_and_comes_back(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    server = ModbusTestServer()
    await server.start()
    await server.set_registers("holding", 0, [42])
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [
        {"name": "meter-1", "driver": "modbus", "interval": "100ms",
         "connection": {"transport": "tcp", "host": "127.0.0.1", "port": server.port, "timeout": "300ms"},
         "points": [{"name": "p", "address": 0, "type": "uint16"}]},
        _sim_device("sim-1", "50ms", tmp_path / "never"),
    ]
    sub = subscribe("city/gw-test/+/telemetry")
    try:
        gw = await asyncio.to_thread(_start, tmp_path, config, gateways)
        await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["meter-1"]["state"] == "ok")
        await server.stop()
        status = await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["meter-1"]["state"] == "error")
        assert status["devices"]["meter-1"]["last_error"]
        assert status["devices"]["sim-1"]["state"] == "ok"
        sim_seq = status["devices"]["sim-1"]["seq"]
        await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["sim-1"]["seq"] > sim_seq + 20)
        meter_seq = (await asyncio.to_thread(gw.status))["devices"]["meter-1"]["seq"]
        await server.set_registers("holding", 0, [43])
        await server.start()
        await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["meter-1"]["state"] == "ok", 30)
        msgs = await sub.wait_for_async(
            lambda ms: any(r["value"] == 43 for d in telemetry(ms) if d["device"] == "meter-1"
                           for r in d["readings"]), timeout=20)
    finally:
        await server.stop()
    newer = [r for d in telemetry(msgs) if d["device"] == "meter-1" for r in d["readings"] if r["seq"] > meter_seq]
    assert newer and newer[-1]["value"] == 43
    log = gw.log()
    assert log.count("device meter-1 lost") == 1 and log.count("device meter-1 is back") == 1, log


# -- the technician's commands ---------------------------------------------------------------------------


def test_check_accepts_the_example_and_rejects_a_bad_config(tmp_path: Path) -> None:
    example = REPO / "config" / "example.yaml"
    ok = run_cli("check", "-c", str(example))
    assert ok.returncode == 0, ok.stderr
    assert "meter-1" in ok.stdout
    bad = tmp_path / "gateway.yaml"
    bad.write_text(example.read_text().replace("type: float32", "type: floaty", 1))
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert "'floaty' is not one of" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_status_command_shows_the_running_daemon(
    tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess]
) -> None:
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [_sim_device("dev-a", "100ms", tmp_path / "never")]
    gw = _start(tmp_path, config, gateways)
    gw.wait_status(lambda s: s["devices"]["dev-a"]["polls"] > 0 and s["broker"]["connected"])
    result = run_cli("status", "-c", str(gw.config_path))
    assert result.returncode == 0, result.stderr
    assert "dev-a" in result.stdout and "connected" in result.stdout
    second = run_cli("run", "-c", str(gw.config_path))
    assert second.returncode == 1 and "already running" in second.stderr
    assert gw.terminate() == 0
    gone = run_cli("status", "-c", str(gw.config_path))
    assert gone.returncode == 1 and "no gateway is running" in gone.stderr
