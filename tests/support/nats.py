"""A real three-node NATS JetStream cluster with MQTT listeners on loopback, for tests.

The cluster itself is gateway.bench.nats_cluster.NatsCluster (`gateway bench --scenario failover`
starts the same one); here it gets the tests' ports (tests.support.ports, safe under
pytest-xdist) and is unavailable without ``nats-server`` (tests.support.needs: a skip on a
developer's machine, a failure in CI).
"""

from __future__ import annotations

from pathlib import Path

from gateway.bench.nats_cluster import ClusterError, NatsCluster, NatsNode
from tests.support.needs import require_tool
from tests.support.ports import free_port

__all__ = ["NatsCluster", "NatsNode", "start_cluster"]


def start_cluster(workdir: Path, size: int = 3, timeout: float = 60.0) -> NatsCluster:
    """Start a ``size``-node cluster under ``workdir`` and return it once every node serves MQTT.

    The caller stops it (``stop()``); on a start that fails, what was started is stopped here.
    """
    exe = require_tool("nats-server", "nats-server")
    cluster = NatsCluster(workdir, free_port, size=size, executable=exe)
    try:
        cluster.start(timeout)
    except ClusterError as exc:
        cluster.stop()
        raise AssertionError(str(exc)) from None
    return cluster
