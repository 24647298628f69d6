"""Fixtures of the publish tests that need more than the test broker: a NATS cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import NatsCluster, start_cluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server nodes (JetStream, MQTT on loopback) of this test alone, ready to serve MQTT on
    each (``.nodes[i].mqtt_port``, ``.servers``); ``.kill(i)`` is kill -9, ``.start_node(i)`` brings
    a node back. Always stopped at the end."""
    cluster = start_cluster(tmp_path / "nats")
    try:
        yield cluster
    finally:
        cluster.stop()
