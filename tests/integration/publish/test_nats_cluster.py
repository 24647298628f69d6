"""The NATS cluster fixture, and what a node's death leaves to the others (README "Running against a
broker cluster"): plain paho clients, no gateway.

Only what held in every run here is asserted: every message a node PUBACKed reaches a subscriber
on another node after that node is killed, and a durable session (its subscription and the QoS 1
messages queued for it) is found on another node. Seen but not asserted (it varied, or is not the
gateway's business): for 6-8 s after the kill, a CONNECT to a surviving node is held ~4 s and
closed when the dead node led an MQTT stream (the streams elect new leaders); retained messages
were sometimes not served by a survivor until the dead node came back; the will of a client of
the dead node was never published.
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import LOOPBACK, Subscriber
from tests.support.nats import NatsCluster
from tests.support.wait import wait_until

# serial_only: the cluster's Raft elections run on timers and heartbeats, and on two busy cores beside
# other tests they stretched past RECOVERY once (the survivor's subscriber was still short of the
# acked messages after 30 s), so this file runs in the second pass, alone.
pytestmark = [pytest.mark.integration, pytest.mark.serial_only]

MESSAGES = 50
QUEUED = 5
RECOVERY = 30.0  # s: a survivor may refuse MQTT for a few seconds while the streams elect leaders


class Client:
    """A paho client on its own thread: connects (retrying until CONNACK), records session_present."""

    def __init__(self, port: int, client_id: str, *, clean: bool) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.received: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.payload.decode())
        self.client.connect_async(LOOPBACK, port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(RECOVERY), f"no CONNACK from 127.0.0.1:{port}"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self.session_present = bool(flags.session_present)
            self.connected.set()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(RECOVERY), "no SUBACK"

    def publish(self, topic: str, payloads: list[str]) -> None:
        """Publish QoS 1 and return once every PUBACK is in."""
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()

    def close(self, *, cleanly: bool = True) -> None:
        if cleanly:
            self.client.disconnect()
        self.client.loop_stop()


def test_a_killed_node_leaves_acked_messages_and_durable_sessions_to_the_others(nats_cluster: NatsCluster) -> None:
    a, b, c = (node.mqtt_port for node in nats_cluster.nodes)
    with Subscriber(LOOPBACK, b, "t/#") as live:
        durable = Client(a, "durable-1", clean=False)
        durable.subscribe("q/#")
        durable.close()
        publisher = Client(a, "publisher-1", clean=True)
        publisher.publish("q/x", [f"queued-{i}" for i in range(QUEUED)])  # for the durable session, offline
        publisher.publish("t/x", [str(i) for i in range(MESSAGES)])
        nats_cluster.kill(0)
        publisher.close(cleanly=False)

        # Every message node A acknowledged reaches the subscriber on node B.
        live.wait_for(lambda ms: {int(m.payload) for m in ms} >= set(range(MESSAGES)), timeout=RECOVERY)

        # The durable session opened on A is found on C, with what was queued for it.
        again = Client(c, "durable-1", clean=False)
        try:
            assert again.session_present is True
            expected = {f"queued-{i}" for i in range(QUEUED)}
            wait_until(lambda: expected <= set(again.received), RECOVERY, "the queued messages on node C")
        finally:
            again.close()

    nats_cluster.start_node(0)
    assert nats_cluster.nodes[0].running

