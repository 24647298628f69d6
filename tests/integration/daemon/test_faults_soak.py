"""Memory over time: the daemon at a high rate through broker outages and device failures keeps its
resident memory, threads and open files flat, and loses nothing.

Bounded in-memory queues, and what happens when each is full:

* buffer: batches waiting for the next commit, at most ``max_pending_readings`` readings; above
  that (the disk stalls or is full) the oldest are dropped and counted as evicted.
* publisher: at most ``mqtt.max_inflight`` messages awaiting PUBACK (a semaphore); when full, the
  drain stops fetching from SQLite until a PUBACK frees a slot. One fetch holds at most
  4 x ``batch.max_readings`` readings. paho's queue holds only what the window lets through.
* scheduler: none; a poll hands its batch straight to the buffer, an overrun poll is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.faults import Arrivals, ProcStats, assert_accounted, sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway

pytestmark = pytest.mark.integration

MAX_GROWTH_KB = 5 * 1024
OUTAGES = 2  # after the warm-up
CAUGHT_UP = 6000  # pending readings once a backlog is sent: about two commit intervals of polls


def test_memory_stays_flat_through_outages_and_failures(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    flags = [tmp_path / f"dev-{i}.dead" for i in range(4)]
    config = base_config(tmp_path / "data", mosquitto.port, commit="200ms")
    config["mqtt"]["publish_timeout"] = "2s"
    config["devices"] = [sim_device(f"dev-{i}", "5ms" if i < 3 else "20ms", flags[i], points=15) for i in range(4)]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    assert gw.proc is not None
    pid = gw.proc.pid

    def outage(k: int) -> None:
        """The broker down 1.5 s, one device failing for 1 s of it; back once the gateway caught up.
        (Reconnects back off ever longer while no session lasts STABLE_AFTER: few outages fit.)"""
        mosquitto.stop()
        flag = flags[k % len(flags)]
        flag.write_text("injected failure")
        time.sleep(1.0)  # the injected faults last this long: not a wait for a condition
        flag.unlink()
        time.sleep(0.5)
        mosquitto.start()
        gw.wait_status(lambda s: s["broker"]["connected"] and s["buffer"]["pending"] < CAUGHT_UP
                       and all(d["state"] == "ok" for d in s["devices"].values()), timeout=40)

    def stall() -> None:
        """The broker frozen for 1.2 s, under the publish timeout: PUBACKs wait, the session stays."""
        mosquitto.pause()
        try:
            time.sleep(1.2)  # the injected fault
        finally:
            mosquitto.resume()
        gw.wait_status(lambda s: s["buffer"]["pending"] < CAUGHT_UP, timeout=20)

    outage(0)  # warm-up: every path taken once (outage, backlog, device lost and back, slow acks)
    stall()
    warm = ProcStats.of(pid)
    readings_warm = gw.status()["broker"]["readings_sent"]
    for k in range(1, 1 + OUTAGES):
        stall()
        outage(k)
        stall()
    end = ProcStats.of(pid)
    readings = gw.status()["broker"]["readings_sent"] - readings_warm
    growth = end.rss_kb - warm.rss_kb
    assert readings > 50_000, f"too little traffic to tell: {readings} readings"
    print(f"soak: RSS {warm.rss_kb} -> {end.rss_kb} kB, threads {warm.threads} -> {end.threads},"
          f" fds {warm.fds} -> {end.fds}, {readings} readings sent")
    assert growth < MAX_GROWTH_KB, f"RSS grew {growth} kB ({warm.rss_kb} -> {end.rss_kb}) over {readings} readings"
    assert end.threads <= warm.threads + 1, (warm, end)
    assert end.fds <= warm.fds + 2, (warm, end)

    status = drain_devices(gw, flags)
    assert status["buffer"]["evicted"] == 0
    last = {name: dev["seq"] for name, dev in status["devices"].items()}
    msgs = sub.wait_for(Arrivals().complete(last), timeout=60)
    assert_accounted(msgs, last)
    assert gw.terminate() == 0
