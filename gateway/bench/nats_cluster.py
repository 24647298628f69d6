"""A private NATS cluster with JetStream and its MQTT listener on loopback, for `gateway bench` and the tests.

Each node is one ``nats-server`` process (Debian's 2.9 works) with a config file of its own under
``workdir/<name>/``: ``server_name``, a client port, a cluster port with routes to every node, a
monitoring port, a JetStream store directory, and an ``mqtt {}`` listener whose streams
(``$MQTT_sess``, ``$MQTT_msgs``, ``$MQTT_rmsgs``) are replicated to every node. MQTT in NATS needs
JetStream (it keeps sessions and retained messages in streams) and a ``server_name``.

``start()`` returns once every node has all its routes up, the JetStream meta group has a leader,
and every node answers an MQTT CONNECT with CONNACK 0 (the first CONNECT creates the MQTT streams,
which a cluster does in a few seconds). ``kill(i)`` is ``kill -9`` of one node, ``stop_node(i)``
its clean stop (SIGTERM); ``start_node(i)`` brings it back on the same ports with the same store.
What a dead node takes with it is written down in the README, "Running against a broker cluster".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
CLUSTER_NAME = "gateway-bench"


class ClusterError(RuntimeError):
    """The cluster did not start or did not become ready in time; the message says why."""


@dataclass
class NatsNode:
    """One nats-server of the cluster: its ports, its directory and (while it runs) its process."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def server(self) -> str:
        """The MQTT listener as ``host:port`` (what ``mqtt.servers`` lists)."""
        return f"{LOOPBACK}:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    def log(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the node's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def monitor(self, path: str) -> dict[str, Any]:
        """A monitoring endpoint (``/routez``, ``/jsz``, ...) as a dict; OSError/ValueError if it does not answer."""
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=2) as resp:
            return json.loads(resp.read())


class NatsCluster:
    """``size`` nats-server nodes forming one JetStream cluster on loopback, each with an MQTT listener.

    ``free_port`` hands out the ports (the tests pass their own, safe under pytest-xdist). Use as
    a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, workdir: Path, free_port: Callable[[], int], *, size: int = 3,
                 executable: str | None = None) -> None:
        exe = executable or shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")
        if exe is None:
            raise ClusterError("nats-server is not installed: apt-get install nats-server")
        self.executable = exe
        self.workdir = workdir
        self.nodes = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port(), workdir / f"n{i + 1}")
                      for i in range(size)]

    @property
    def servers(self) -> list[str]:
        """Every node's MQTT listener as ``host:port``, in node order."""
        return [node.server for node in self.nodes]

    def node_of(self, server: str) -> NatsNode:
        """The node whose MQTT listener is ``server`` (``host:port``)."""
        return next(node for node in self.nodes if node.server == server)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ----------------------------------------------------------------------------------

    def config_text(self, node: NatsNode) -> str:
        """The node's config file: loopback only, JetStream in its own store, routes to every node."""
        routes = ", ".join(f"nats-route://{LOOPBACK}:{n.cluster_port}" for n in self.nodes)
        return "\n".join([
            f"server_name: {node.name}",
            f"listen: {LOOPBACK}:{node.client_port}",
            f"http: {LOOPBACK}:{node.http_port}",
            # Small limits: JetStream reserves 75% of RAM and disk by default.
            f'jetstream {{ store_dir: "{node.workdir / "js"}", max_mem: 64M, max_file: 1G }}',
            f"cluster {{ name: {CLUSTER_NAME}, listen: {LOOPBACK}:{node.cluster_port}, routes: [{routes}] }}",
            # Every MQTT stream on every node, so a node's death loses no session or retained message.
            f"mqtt {{ listen: {LOOPBACK}:{node.mqtt_port}, stream_replicas: {len(self.nodes)} }}",
        ]) + "\n"

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node (those not running) and wait until the cluster serves MQTT on each."""
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout)
        return self

    def start_node(self, index: int, timeout: float = 60.0) -> NatsNode:
        """Bring node ``index`` back (same ports, same store) and wait until the cluster is whole again."""
        node = self.nodes[index]
        self._spawn(node)
        self.wait_ready(timeout)
        return node

    def _spawn(self, node: NatsNode) -> None:
        if node.running:
            return
        node.workdir.mkdir(parents=True, exist_ok=True)
        conf = node.workdir / "nats.conf"
        conf.write_text(self.config_text(node))
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen([self.executable, "-c", str(conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)

    def kill(self, index: int) -> NatsNode:
        """``kill -9`` node ``index``: no goodbye to its clients or its peers."""
        node = self.nodes[index]
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
            node.proc = None
        return node

    def stop_node(self, index: int, timeout: float = 30.0) -> NatsNode:
        """Stop node ``index`` as for maintenance: SIGTERM (NATS's clean shutdown), wait for its exit."""
        node = self.nodes[index]
        if node.running:
            assert node.proc is not None
            node.proc.terminate()
        _reap(node, timeout)
        return node

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM to all, then each reaped; SIGKILL after ``timeout``)."""
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.terminate()
        for node in self.nodes:
            _reap(node, timeout)

    # -- readiness ----------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node routes to all the others, JetStream's meta group has a
        leader, and each node accepts an MQTT CONNECT; ClusterError with the logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.running]
        for check in (self._routes_up, self._meta_leader, self._mqtt_accepts):
            while not check(running):
                for node in self.nodes:
                    if node.proc is not None and node.proc.poll() is not None:
                        raise ClusterError(f"nats-server {node.name} exited ({node.proc.returncode}):\n{node.log()}")
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {n.name} ---\n{n.log()}" for n in running)
                    raise ClusterError(f"the NATS cluster was not ready in {timeout:g} s ({check.__name__}):\n{logs}")
                time.sleep(0.1)

    def _routes_up(self, running: list[NatsNode]) -> bool:
        try:
            return all(node.monitor("/routez")["num_routes"] >= len(self.nodes) - 1 for node in running)
        except (OSError, ValueError, KeyError):
            return False

    def _meta_leader(self, running: list[NatsNode]) -> bool:
        try:
            return all(node.monitor("/jsz").get("meta_cluster", {}).get("leader") for node in running)
        except (OSError, ValueError):
            return False

    def _mqtt_accepts(self, running: list[NatsNode]) -> bool:
        return all(mqtt_connack(LOOPBACK, node.mqtt_port) == 0 for node in running)


def _reap(node: NatsNode, timeout: float) -> None:
    """Wait for the node's process to exit (SIGKILL after ``timeout``) and forget it."""
    if node.proc is None:
        return
    try:
        node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait()
    node.proc = None


def mqtt_connack(host: str, port: int, timeout: float = 5.0) -> int | None:
    """Send an MQTT 3.1.1 CONNECT (clean session, a throw-away client id) and return the CONNACK's
    return code, or None when the node closes the link or does not answer within ``timeout``."""
    client_id = f"probe-{os.getpid()}-{time.monotonic_ns()}".encode()
    body = struct.pack("!H4sBBH", 4, b"MQTT", 4, 0x02, 10) + struct.pack("!H", len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(bytes([0x10, len(body)]) + body)
            reply = _read_exactly(sock, 4)
            if reply is None or reply[0] != 0x20:
                return None
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, the session ends
            return reply[3]
    except OSError:
        return None


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data
