"""The failover scenario of `gateway bench`: the broker node the gateway is on dies, with readings in flight.

The gateway gets ``mqtt.servers`` listing every node of a private cluster: three nats-server nodes
with JetStream and MQTT (gateway.bench.nats_cluster) when ``nats-server`` is installed, else two
independent Mosquittos. Its devices poll all along (--devices x --points every 100 ms, or
--interval if slower). After the warm-up, as a commit's messages are being published, the bench
kills (SIGKILL) the NATS node the gateway's status names in ``broker.server`` and polls the
status until another node is named there with a PUBACK counted: the seconds from the kill to then
are the node's death to the first PUBACK on another node. Then the run goes on for a while and
ends as every run does (gateway.bench.steps.finish): the devices fail, the buffer drains, and
every seq is checked.

The subscriber sits on a node the gateway is not on: NATS passes every message on to the other
nodes, and every message a node PUBACKed survives its death (tests/integration/publish/
test_nats_cluster.py). Two Mosquittos are two brokers: the subscriber is on both, counted as one,
and the gateway's Mosquitto is frozen (SIGSTOP: the gateway moves on its publish timeout) rather
than killed, and thawed before the end, because a killed Mosquitto takes with it what it had
PUBACKed but not yet passed to the subscriber (thousands of readings at 10,000 readings/s here),
which would hide what the gateway did. Readings that arrive twice were resent after the move:
the gateway resends everything without a PUBACK, and a reading the old node had passed on arrives
again. A resent reading the old node never passed on arrives once, so this counts the duplicates
a platform sees.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.bench.broker import free_port
from gateway.bench.run import LOOPBACK, BenchError, private_broker

if TYPE_CHECKING:
    from gateway.bench.main import Bench
    from gateway.bench.steps import Run

FAILOVER_INTERVAL = 0.1  # s: the devices' poll interval, unless --interval is slower
KEEPALIVE = 10  # s: the gateway's keepalive in this scenario (a kill is noticed at once regardless)
PUBLISH_TIMEOUT = 3  # s: the gateway's publish (and CONNACK, SUBACK) timeout in this scenario
AFTER_MOVE = 5.0  # s: how long the run goes on after the first PUBACK on the new node (at most --duration)
MOVE_WAIT = 60.0  # s: the longest the bench waits for the move


@dataclass
class Nodes:
    """The brokers of the scenario: their ``host:port`` names, what kills (or freezes) one and what
    thaws it, where the subscriber sits."""

    kind: str
    servers: list[str]
    kill: Callable[[str], None]
    stop: Callable[[], None]
    how: str = "killed (SIGKILL)"
    thaw: Callable[[], None] = lambda: None

    def watch(self, avoid: str) -> list[tuple[str, int]]:
        """The subscriber's brokers: the last NATS node other than ``avoid`` (one sees all), or every Mosquitto."""
        if self.kind == "nats":
            server = next(s for s in reversed(self.servers) if s != avoid)
            return [_split(server)]
        return [_split(s) for s in self.servers]


@contextlib.contextmanager
def cluster(bench: Bench) -> Iterator[Nodes]:
    """A NATS cluster if nats-server is installed, else two Mosquittos; stopped at the end."""
    from gateway.bench.nats_cluster import ClusterError, NatsCluster

    workdir = bench.tmp / "failover-brokers"
    try:
        nats = NatsCluster(workdir, free_port)
    except ClusterError:
        nats = None
    if nats is not None:
        bench.progress.step("failover: starting a three-node NATS cluster")
        try:
            nats.start()
        except ClusterError as exc:
            nats.stop()
            raise BenchError(str(exc)) from exc
        nodes = Nodes("nats", nats.servers, lambda server: nats.kill(nats.nodes.index(nats.node_of(server))),
                      nats.stop)
    else:
        nodes = _mosquittos(bench)
    try:
        yield nodes
    finally:
        nodes.stop()


def _mosquittos(bench: Bench) -> Nodes:
    """Two private Mosquittos (gateway.bench.run.private_broker), not bridged: a session lives on one only."""
    bench.progress.step("failover: starting two Mosquittos (nats-server is not installed)")
    stack = contextlib.ExitStack()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i in range(2):
            port = free_port()
            procs[f"{LOOPBACK}:{port}"] = stack.enter_context(
                private_broker(bench.tmp / f"failover-mosquitto-{i + 1}", port))
    except BaseException:
        stack.close()
        raise

    def freeze(server: str) -> None:
        procs[server].send_signal(signal.SIGSTOP)

    def thaw() -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def stop() -> None:
        thaw()
        stack.close()

    return Nodes("mosquitto", list(procs), freeze, stop, "frozen (SIGSTOP)", thaw)


def run_failover(bench: Bench) -> dict[str, Any]:
    """Run the scenario; the run's result with the failover figures added."""
    opts = bench.opts
    with cluster(bench) as nodes:
        group = bench.group("dev", opts.devices, max(opts.interval, FAILOVER_INTERVAL))
        mqtt = {"servers": nodes.servers, "keepalive": KEEPALIVE, "publish_timeout": PUBLISH_TIMEOUT,
                "failover": {"order": "ordered", "fail_back_after": 0}}
        # The gateway goes to the first node (order: ordered); the subscriber avoids it.
        with bench.open_run("failover", [group], opts.encoding, mqtt=mqtt,
                            sub_on=nodes.watch(avoid=nodes.servers[0])) as run:
            run.gw.start().wait_ready()
            bench.wait_first(run)
            bench.sleep(run, "warming up", opts.warmup)
            before = run.gw.status()["broker"]
            dead = str(before.get("server"))
            if dead != nodes.servers[0]:
                raise BenchError(f"failover: the gateway is on {dead}, not on the first node {nodes.servers[0]}")
            _wait_burst(bench, run)
            killed = time.monotonic()
            nodes.kill(dead)
            moved = _wait_moved(bench, run, dead, before, killed)
            bench.sleep(run, f"delivering on {moved['moved_to']}", min(opts.duration, AFTER_MOVE))
            nodes.thaw()
            bench.finish(run)
            run.result.update(
                moved,
                brokers=f"{len(nodes.servers)} {'nats-server nodes' if nodes.kind == 'nats' else 'Mosquittos'}",
                killed=dead, how=nodes.how, keepalive_s=KEEPALIVE, publish_timeout_s=PUBLISH_TIMEOUT,
                readings_resent=run.result.get("duplicates", 0),
            )
    return run.result


def _wait_burst(bench: Bench, run: Run) -> None:
    """Return as a message reaches the subscriber: the gateway is publishing a commit's readings,
    so a kill now finds readings in flight."""
    start = run.sub.snapshot().messages
    deadline = time.monotonic() + 10.0 + 2 * bench.opts.commit_interval
    while run.sub.snapshot().messages == start:
        if time.monotonic() > deadline:
            raise BenchError("failover: no message reached the subscriber before the kill")
        time.sleep(0.001)


def _wait_moved(bench: Bench, run: Run, dead: str, before: dict[str, Any], killed: float) -> dict[str, Any]:
    """Poll the status until another node than ``dead`` is named and has acknowledged both a reading
    (``readings_sent`` grows) and the gateway's retained status (``failovers`` grows once the node
    took it). The seconds from ``killed`` to the first PUBACK (either), to each, the node, and
    broker.failovers. (A NATS node whose retained-message stream lost its leader with the dead node
    acknowledges readings at once and the retained status only after the stream's new election.)"""
    found: dict[str, float] = {}
    while True:
        broker = run.gw.status()["broker"]
        now, server = time.monotonic(), broker.get("server")
        if server and server != dead:
            if int(broker.get("readings_sent", 0)) > int(before.get("readings_sent", 0)):
                found.setdefault("death_to_first_reading_acked_s", now - killed)
            if int(broker.get("failovers", 0)) > int(before.get("failovers", 0)):
                found.setdefault("death_to_status_acked_s", now - killed)
            if len(found) == 2:
                return {"death_to_first_puback_s": min(found.values()), **found, "moved_to": str(server),
                        "failovers": int(broker.get("failovers", 0))}
        if now - killed > MOVE_WAIT:
            raise BenchError(f"failover: the gateway did not move off {dead} within {MOVE_WAIT:g} s; "
                             f"its log ends:\n{run.gw.log_tail()}")
        bench.tick(run, f"{dead} killed, waiting for the first PUBACK on another node", f"{now - killed:.1f} s")
        time.sleep(0.02)


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host, int(port)
