"""SIGHUP reload and the last config that ran well, on the real daemon process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto, Subscriber, telemetry
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
