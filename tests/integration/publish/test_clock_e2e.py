"""Readings taken before the clock synced: held back, then sent with corrected ts, or marked."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.broker import Mosquitto, Subscriber, telemetry
from tests.support.chrony import ChronyResponder, closed_udp_port
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway


def _start(tmp_path: Path, port: int, hold: str, gateways: list[GatewayProcess],
           **clock: Any) -> tuple[GatewayProcess, Path]:
    flag = tmp_path / "timesync" / "synchronized"
    if "check" not in clock:
        flag.parent.mkdir()
    config: dict[str, Any] = base_config(tmp_path / "data", port)
    config["gateway"]["clock"] = {"check": "timesyncd", "synced_file": str(flag), "hold": hold, **clock}
    config["devices"] = [{"name": "d", "driver": "simulated", "interval": "50ms",
                          "points": [{"name": "n", "signal": "counter"}]}]
    return new_gateway(tmp_path, config, gateways).start(), flag


def test_held_until_the_clock_syncs_then_all_arrive_in_order(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    sub = subscribe("city/gw-test/d/telemetry")
    started = time.time() * 1000
    gw, flag = _start(tmp_path, mosquitto.port, "1h", gateways)
    status = gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["d"]["seq"] >= 20)
    assert status["clock"] == {"synced": False, "check": "timesyncd"}
    assert telemetry(sub.messages) == []  # nothing went out with an untrustworthy ts
    flag.touch()
    last = gw.wait_status(lambda s: s["clock"]["synced"])["devices"]["d"]["seq"]
    msgs = sub.wait_for(lambda ms: {r["seq"] for d in telemetry(ms) for r in d["readings"]} >= set(range(1, last + 1)))
    readings = sorted((r for d in telemetry(msgs) for r in d["readings"]), key=lambda r: r["seq"])
    assert [r["seq"] for r in readings[:last]] == list(range(1, last + 1))
    assert all("synced" not in r for r in readings)
    ts = [r["ts"] for r in readings[:last]]
    assert ts == sorted(ts) and started - 1000 <= ts[0] <= ts[-1] <= time.time() * 1000
    assert "NOT synchronized" in gw.log()


def test_past_the_hold_limit_readings_go_out_marked_unsynced(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    sub = subscribe("city/gw-test/d/telemetry")
    _start(tmp_path, mosquitto.port, "1s", gateways)
    msgs = sub.wait_for(lambda ms: len(telemetry(ms)) > 0, timeout=20)
    assert all(r["synced"] is False for d in telemetry(msgs) for r in d["readings"])


def test_on_a_chrony_board_readings_wait_for_chronyd_then_go_out_corrected(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    # check: auto on a board without timesyncd (no timesync folder) where chronyd answers, unsynced.
    sub = subscribe("city/gw-test/d/telemetry")
    with ChronyResponder(synced=False) as chronyd:
        gw, _ = _start(tmp_path, mosquitto.port, "1h", gateways, check="auto", chrony_port=chronyd.port)
        status = gw.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["d"]["seq"] >= 20)
        assert status["clock"] == {"synced": False, "check": "auto"}
        assert telemetry(sub.messages) == []  # held back, not sent as if the clock were right
        chronyd.synced = True
        last = gw.wait_status(lambda s: s["clock"]["synced"])["devices"]["d"]["seq"]
        wanted = set(range(1, last + 1))
        msgs = sub.wait_for(lambda ms: {r["seq"] for d in telemetry(ms) for r in d["readings"]} >= wanted)
    readings = [r for d in telemetry(msgs) for r in d["readings"]]
    assert all("synced" not in r for r in readings)  # corrected, none marked unsynced
    assert f"NTP client: chronyd (answers on 127.0.0.1:{chronyd.port})" in gw.log()


def test_with_no_ntp_client_recognised_readings_flow_at_once(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess]
) -> None:
    sub = subscribe("city/gw-test/d/telemetry")
    port = closed_udp_port()
    gw, _ = _start(tmp_path, mosquitto.port, "1h", gateways, check="auto", chrony_port=port)
    msgs = sub.wait_for(lambda ms: len(telemetry(ms)) > 0)
    assert all("synced" not in r for d in telemetry(msgs) for r in d["readings"])
    assert gw.wait_status(lambda s: s["broker"]["connected"])["clock"] == {"synced": True, "check": "auto"}
    assert f"no NTP client recognised (no timesyncd, no chronyd on 127.0.0.1:{port})" in gw.log()
    assert "NOT synchronized" not in gw.log()
