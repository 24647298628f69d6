"""A clean stop on a card that has stalled, with the real daemon: it must end within systemd's stop
timeout all the same, say what it could not flush, and leave the ``running`` marker so the next
start reports ``clean_start: false`` (what was lost is what a power cut would have cost).

A stalled SD card cannot be made here, so the buffer's commit (the fsynced transaction on its
writer thread) is made to hang from a moment the test chooses (tests.support.plugins).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.daemon.daemon import EXIT_UNFLUSHED, RUNNING_MARKER, STOP_BUDGET
from tests.support.broker import Mosquitto
from tests.support.faults import sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway
from tests.support.plugins import plugin_env

pytestmark = pytest.mark.integration


def test_a_stop_on_a_stalled_card_ends_in_time_and_the_next_start_knows(
    tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess],
) -> None:
    stall = tmp_path / "card-stalled"
    config = base_config(tmp_path / "data", mosquitto.port, commit="100ms")
    config["devices"] = [sim_device("dev-a", "20ms", tmp_path / "a.dead")]
    env = plugin_env(tmp_path / "plugins", stall_flag=stall)
    gw = new_gateway(tmp_path, config, gateways, env=env).start()
    gw.wait_status(lambda s: s["devices"]["dev-a"]["seq"] > 0 and s["broker"]["connected"], timeout=20)

    stall.write_text("the card stopped answering")
    # Commits every 100 ms: readings piling up far past one commit's worth mean a commit hangs.
    before = gw.status()["devices"]["dev-a"]["seq"]
    status = gw.wait_status(lambda s: s["buffer"]["pending"] > 300, timeout=20)
    assert status["devices"]["dev-a"]["seq"] - before <= 30, "commits went on"

    started = time.monotonic()
    assert gw.terminate(timeout=15) == EXIT_UNFLUSHED
    took = time.monotonic() - started
    assert took < 10, f"the stop took {took:.1f} s"
    assert took >= STOP_BUDGET - 3.5, "gave up long before the budget was spent"
    assert (tmp_path / "data" / RUNNING_MARKER).exists()
    lines = [line for line in gw.log().splitlines() if "stopped without flushing" in line]
    assert len(lines) == 1 and "readings not committed are lost" in lines[0], gw.log()[-3000:]

    stall.unlink()  # the card is back (after a power cycle, say)
    gw.start()
    assert gw.status()["clean_start"] is False
    assert gw.terminate() == 0
    assert not (tmp_path / "data" / RUNNING_MARKER).exists()
