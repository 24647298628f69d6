"""SIGHUP reload and the last config that ran well, on the real daemon process."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from tests.support.broker import Mosquitto, Received, Subscriber, first_arrivals, seqs_by_device, telemetry
from tests.support.gateway_proc import GatewayProcess, base_config, run_cli, write_config


def _sim(name: str, interval: str = "50ms") -> dict[str, Any]:
    return {"name": name, "driver": "simulated", "interval": interval, "points": [{"name": "n", "signal": "counter"}]}


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[GatewayProcess, dict[str, Any]]]:
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [_sim("keep"), _sim("change"), _sim("drop")]
    gw = GatewayProcess(write_config(tmp_path / "gateway.yaml", config), tmp_path / "data")
    try:
        yield gw.start(), config
    finally:
        gw.cleanup()


def _hup(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)


def test_bad_edit_is_refused_and_the_running_config_stays(gateway: tuple[GatewayProcess, dict[str, Any]]) -> None:
    gw, _ = gateway
    before = gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["keep"]["seq"] > 0)
    gw.config_path.write_text(gw.config_path.read_text().replace("signal: counter", "signal: sawtooth", 1))
    _hup(gw)
    status = gw.wait_status(lambda s: s["config"]["reload_error"] is not None)
    assert "sawtooth" in status["config"]["reload_error"]
    assert status["config_hash"] == before["config_hash"]
    assert set(status["devices"]) == {"keep", "change", "drop"}
    seq = status["devices"]["keep"]["seq"]
    gw.wait_status(lambda s: s["devices"]["keep"]["seq"] > seq + 5)  # still polling
    assert "reload refused" in gw.log()


def test_good_edit_restarts_only_what_changed(
    gateway: tuple[GatewayProcess, dict[str, Any]], mosquitto: Mosquitto
) -> None:
    gw, config = gateway
    before = gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["change"]["seq"] > 3)
    config["devices"] = [_sim("keep"), _sim("change", "20ms"), _sim("new")]
    write_config(gw.config_path, config)
    with Subscriber(mosquitto.host, mosquitto.port, "city/gw-test/+/telemetry") as sub:
        _hup(gw)
        status = gw.wait_status(lambda s: set(s["devices"]) == {"keep", "change", "new"})
        assert status["config_hash"] != before["config_hash"] and status["config"]["reload_error"] is None
        # the untouched device kept its task: its poll count did not start again
        assert status["devices"]["keep"]["polls"] >= before["devices"]["keep"]["polls"]
        # the broker session was kept
        assert status["broker"]["connects"] == before["broker"]["connects"]
        seq = status["devices"]["change"]["seq"]
        assert seq >= before["devices"]["change"]["seq"]  # seq untouched by the restart
        sub.wait_for(lambda ms: any(d["device"] == "new" for d in telemetry(ms)), timeout=20)
        msgs = sub.wait_for(lambda ms: any(
            d["device"] == "change" and d["readings"][0]["seq"] > seq for d in telemetry(ms)), timeout=20)
    changed = sorted({r["seq"] for d in telemetry(msgs) if d["device"] == "change" for r in d["readings"]})
    assert changed == list(range(changed[0], changed[-1] + 1))  # no gap, no restart from 1
    assert "config reloaded" in gw.log()


def test_invalid_file_at_start_runs_the_last_good_config(
    gateway: tuple[GatewayProcess, dict[str, Any]], mosquitto: Mosquitto
) -> None:
    gw, config = gateway
    gw.wait_status(lambda s: s["broker"]["connected"])
    last_good = gw.data_dir / "last-good.yaml"
    gw.wait_status(lambda s: last_good.exists())
    assert gw.terminate() == 0
    gw.config_path.write_text(gw.config_path.read_text().replace("gateway:", "gateway: [", 1))
    assert run_cli("check", "-c", str(gw.config_path)).returncode == 2
    with Subscriber(mosquitto.host, mosquitto.port, "city/gw-test/keep/telemetry") as sub:
        gw.start()
        status = gw.wait_status(lambda s: s["devices"]["keep"]["seq"] > 0)
        assert status["config"]["fallback"] and "invalid" in status["config"]["fallback"]
        sub.wait_for(lambda ms: len(telemetry(ms)) > 0, timeout=20)
    assert "running the last config that ran well" in gw.log()
    # fixing the file and reloading leaves the fallback
    write_config(gw.config_path, config)
    _hup(gw)
    gw.wait_status(lambda s: s["config"]["fallback"] is None)


def _polled_between(msgs: list[Received], device: str, start_ms: int, end_ms: int) -> int:
    """How many polls of ``device`` (one reading each, told apart by seq) were read in [start, end)."""
    return len({r["seq"] for d in telemetry(msgs) if d["device"] == device
                for r in d["readings"] if start_ms <= r["ts"] < end_ms})


def _assert_polled_at_own_rate(sub: Subscriber, intervals: dict[str, float], removed: set[str]) -> None:
    """Over the next 3 s each device of ``intervals`` polled once per interval (no doubled poll
    loop), and nothing of ``removed`` was read any more."""
    start = int(time.time() * 1000)
    end = start + 3000
    msgs = sub.wait_for(lambda ms: all(any(r["ts"] >= end for d in telemetry(ms) if d["device"] == name
                                           for r in d["readings"]) for name in intervals), timeout=30)
    for name, interval in intervals.items():
        expected = 3.0 / interval
        polls = _polled_between(msgs, name, start, end)
        # a second poll loop of the device would double it; a loaded machine may skip a few polls
        assert expected * 0.5 <= polls <= expected * 1.25 + 2, (name, interval, polls)
    assert not [d["device"] for d in telemetry(msgs) if d["device"] in removed
                and any(r["ts"] >= start for r in d["readings"])]


STORM = [  # device sets the file goes through during the storm; the last one is the final file
    {"a": "100ms", "b": "300ms"},
    {"b": "100ms", "c": "200ms", "change": "300ms"},
    {"a": "200ms", "c": "100ms", "d": "300ms"},
    {"keep": "50ms", "a": "100ms", "d": "200ms", "e": "300ms"},
]


def test_sighup_storm_while_the_file_changes_ends_with_the_file_s_devices_each_polled_once(
    gateway: tuple[GatewayProcess, dict[str, Any]], mosquitto: Mosquitto
) -> None:
    gw, config = gateway
    gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["keep"]["seq"] > 0)
    for i in range(30):  # 30 SIGHUPs fired as fast as they go, the file rewritten before every seventh
        if i % 7 == 0:
            devices = STORM[min(i // 7, len(STORM) - 1)]
            config["devices"] = [_sim(name, interval) for name, interval in devices.items()]
            write_config(gw.config_path, config)
        _hup(gw)
    final = load_config(gw.config_path)
    assert devices == STORM[-1]
    status = gw.wait_status(lambda s: s["config_hash"] == final.hash and set(s["devices"]) == set(devices)
                            and s["config"]["reload_error"] is None, timeout=30)
    assert set(status["devices"]) == set(devices)
    removed = {name for step in STORM for name in step} | {"change", "drop"}
    with Subscriber(mosquitto.host, mosquitto.port, "city/gw-test/+/telemetry") as sub:
        _assert_polled_at_own_rate(sub, {d.name: d.interval for d in final.devices}, removed - set(devices))
    assert gw.status()["config_hash"] == final.hash
    assert gw.proc is not None and gw.proc.poll() is None


def test_a_reload_whose_new_device_cannot_start_leaves_the_running_devices_as_they_were(
    gateway: tuple[GatewayProcess, dict[str, Any]], mosquitto: Mosquitto
) -> None:
    gw, config = gateway
    running = {"keep", "change", "drop"}
    before = gw.wait_status(lambda s: s["broker"]["connected"] and all(d["polls"] >= 40 for d in s["devices"].values()))
    # "change" slows down, "drop" goes, "fresh" is new, and "bad" passes `gateway check` but its
    # driver's constructor raises (a counter cannot start at an infinite offset): OverflowError.
    bad = {**_sim("bad"), "points": [{"name": "n", "signal": "counter", "offset": float("inf")}]}
    config["devices"] = [_sim("keep"), _sim("change", "1s"), _sim("fresh"), bad]
    write_config(gw.config_path, config)
    assert run_cli("check", "-c", str(gw.config_path)).returncode == 0
    with Subscriber(mosquitto.host, mosquitto.port, "city/gw-test/+/telemetry") as sub:
        _hup(gw)
        status = gw.wait_status(lambda s: s["config"]["reload_error"] is not None or set(s["devices"]) != running)
        error = status["config"]["reload_error"]
        assert error is not None and "'bad'" in error and "OverflowError" in error, error
        assert status["config_hash"] == before["config_hash"] and set(status["devices"]) == running
        for name in running:  # the same poll loops go on: none was stopped and started again
            assert status["devices"][name]["polls"] >= before["devices"][name]["polls"], name
        # exactly the old devices, at their old rate, their seq continuing without a gap
        _assert_polled_at_own_rate(sub, dict.fromkeys(running, 0.05), {"fresh", "bad"})
        seqs = seqs_by_device(sub.messages)
    for name in running:
        got = first_arrivals(seqs[name])
        assert got == list(range(got[0], got[-1] + 1)), name
        assert got[0] <= status["devices"][name]["seq"] + 1 < got[-1], name  # went on past the failed reload
    assert "reload refused, the running config stays: device 'bad'" in gw.log()
    # the next good file applies whole, compared against what ran
    bad["points"] = [{"name": "n", "signal": "counter"}]
    write_config(gw.config_path, config)
    final = load_config(gw.config_path)
    _hup(gw)
    status = gw.wait_status(lambda s: s["config_hash"] == final.hash)
    assert status["config"]["reload_error"] is None
    assert set(status["devices"]) == {"keep", "change", "fresh", "bad"}
    assert status["devices"]["keep"]["polls"] >= before["devices"]["keep"]["polls"]  # untouched
    assert status["devices"]["change"]["polls"] < before["devices"]["change"]["polls"]  # restarted at 1s
    assert f"config reloaded ({final.hash}): 2 devices added, 1 changed, 1 removed" in gw.log()
