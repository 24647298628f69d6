"""The gateway against a real three-node NATS JetStream cluster (MQTT on loopback): the node it is
on is killed (kill -9, a crash) or stopped (SIGTERM, maintenance) with readings in flight, it moves
to another node within keepalive x 1.5 + 5 s, a subscriber on a surviving node gets every seq (at
least once: duplicates allowed, none missing, none renumbered), and when the node is back the
gateway fails back to it.

The file takes 35-50 s (its two tests 15-25 s each): the cluster's start (~3 s), the move (after a
kill 0.1 s when the dead node led none of the MQTT streams, 6-10 s when it did: see KEEPALIVE; after
a clean stop under 1 s), the node's return and the fail-back (a few seconds each).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import LOOPBACK, Subscriber, has_all, telemetry
from tests.support.faults import assert_accounted, sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway
from tests.support.nats import NatsCluster, NatsNode
from tests.support.wait import wait_until

# serial_only: the cluster's Raft elections run on timers and heartbeats; on two busy cores beside
# other tests a CI run saw the survivors take longer than MOVE_DEADLINE to answer the gateway's
# SUBACK (then QoS 1, a JetStream consumer each), so these run in the second pass, alone.
pytestmark = [pytest.mark.integration, pytest.mark.serial_only]

# A kill -9 is noticed at once (the kernel closes the socket); what takes the time is the cluster:
# when the dead node led one of the MQTT streams, the survivors hold CONNECT, SUBACK and PUBACK
# until a new leader is elected (6-10 s seen here), and the gateway gives each node publish_timeout
# (3 s) before the next. A keepalive of 10 s (the default is 30) puts the bound at 20 s.
KEEPALIVE = 10  # s
MOVE_DEADLINE = KEEPALIVE * 1.5 + 5  # the bound on the move to another node
FAIL_BACK_AFTER = 2  # s on a secondary before the primary is probed
DEVICES = 3


def _config(tmp_path: Path, cluster: NatsCluster, flag: Path) -> dict[str, Any]:
    config = base_config(tmp_path / "data", 0)
    mqtt = config["mqtt"]
    del mqtt["host"], mqtt["port"]
    mqtt.update(servers=cluster.servers, keepalive=KEEPALIVE,
                failover={"order": "ordered", "fail_back_after": f"{FAIL_BACK_AFTER}s"})
    config["devices"] = [sim_device(f"meter-{i}", "50ms", flag) for i in range(DEVICES)]
    return config


def _on(server: str, failovers: int = 0) -> Any:
    """On ``server`` after at least ``failovers`` moves (the count follows once the node took the
    gateway's first status, a moment after ``server`` names it)."""
    return lambda s: (s["broker"]["connected"] and s["broker"].get("server") == server
                      and s["broker"].get("failovers", 0) >= failovers)


def _delivering_off(server: str, sent: int) -> Any:
    """On another node than ``server``, with a PUBACK counted there (readings_sent grew past ``sent``)."""
    return lambda s: (s["broker"]["connected"] and s["broker"].get("server") not in (None, server)
                      and s["broker"].get("failovers", 0) >= 1 and s["broker"]["readings_sent"] > sent)


@pytest.mark.parametrize("down", ["kill", "stop"])
def test_node_down_failover_and_fail_back_lose_nothing(
    down: str, nats_cluster: NatsCluster, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """``kill``: kill -9 of the node (a crash); ``stop``: its clean stop (maintenance)."""
    primary, _, watcher = nats_cluster.nodes
    flag = tmp_path / "stop.flag"
    gw = new_gateway(tmp_path, _config(tmp_path, nats_cluster, flag), gateways)
    # Subscribed before the gateway starts: NATS keeps nothing for a subscription not made yet.
    with Subscriber(LOOPBACK, watcher.mqtt_port, "city/#") as sub:
        # The watcher's own consumers (its "city/#" is two NATS subjects, so two), once the primary
        # lists them: made on another node, they reach the primary's /jsz a moment after the SUBACK.
        consumers = wait_until(lambda: [names for names in [_mqtt_consumers(primary)] if len(names) >= 2], 10,
                               "the watcher's two consumers listed on the primary")[0]
        gw.start()
        gw.wait_status(_on(primary.server), timeout=30)
        # Readings flowing (every commit, 200 ms, publishes), so some are in flight at the kill.
        sub.wait_for(lambda ms: len(telemetry(ms)) >= 10, timeout=20)
        # The gateway's own subscription (its status watch; commands are off) made no JetStream
        # consumer: a survivor slow to make one after a death would hold its SUBACK and the PUBACKs
        # behind it. Its SUBSCRIBE went out before the first telemetry, and NATS takes a connection's
        # packets in order, so it has been handled by now.
        assert _mqtt_consumers(primary) == consumers

        sent = gw.status()["broker"]["readings_sent"]
        killed = time.monotonic()
        nats_cluster.kill(0) if down == "kill" else nats_cluster.stop_node(0)
        moved = gw.wait_status(_delivering_off(primary.server, sent), timeout=MOVE_DEADLINE)
        move_s = time.monotonic() - killed
        assert moved["broker"]["servers"] == nats_cluster.servers
        # Readings keep arriving through the new node.
        count = len(telemetry(sub.messages))
        sub.wait_for(lambda ms: len(telemetry(ms)) >= count + 5, timeout=15)

        nats_cluster.start_node(0)
        gw.wait_status(_on(primary.server, moved["broker"]["failovers"] + 1), timeout=30)

        last = _drained(gw, flag)
        sub.wait_for(has_all(last), timeout=30)
        assert_accounted(sub.messages, last)

    log = gw.log()
    moves = [line for line in log.splitlines() if "broker moved" in line]
    assert moves, f"no 'broker moved' line in the log:\n{log}"
    print(f"{down}: delivering on another node {move_s:.1f} s later")  # shown with pytest -s


def _mqtt_consumers(node: NatsNode) -> list[str]:
    """The JetStream consumers of the stream NATS keeps QoS 1 subscriptions in, by name."""
    jsz = node.monitor("/jsz?accounts=true&streams=true&consumers=true")
    return sorted(consumer["name"] for account in jsz.get("account_details", [])
                  for stream in account.get("stream_detail", []) if stream["name"] == "$MQTT_msgs"
                  for consumer in stream.get("consumer_detail") or [])


def _drained(gw: GatewayProcess, flag: Path) -> dict[str, int]:
    status = drain_devices(gw, [flag])
    assert status["buffer"]["evicted"] == 0
    return {name: int(dev["seq"]) for name, dev in status["devices"].items()}

