"""The broker is a list of nodes (``mqtt.servers``), here two independent Mosquittos on loopback.

The gateway takes the primary first, or (``order: random``) its own stable order; skips a node that
refuses its login; leaves a frozen node (SIGSTOP: keepalive lost) for the next within
keepalive x 1.5 + 5 s with every seq delivered; goes back to the primary once it answers, and does
not flap. Names with several addresses go through ``gateway.publish.servers.resolve``, replaced
here by a fake (127.0.0.1 refuses, 127.0.0.2 answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.publish as paho_publish
import pytest

from gateway.buffer.queue import Buffer
from gateway.config.settings import MqttSection, TlsSection
from gateway.model import Batch, PointSet
from gateway.publish import servers
from gateway.publish.publisher import Publisher
from tests.support.broker import (
    TEST_GATEWAY_ID,
    Mosquitto,
    Received,
    StartPublisher,
    Subscriber,
    retained,
    seqs_by_device,
    status_docs,
)
from tests.support.certs import make_pki, tls_listener
from tests.support.faults import AuthMosquitto, MqttBlackhole, sim_device
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway, run_cli
from tests.support.needs import require_tool
from tests.support.ports import free_port
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

M = TypeVar("M", bound=Mosquitto)

KEEPALIVE = 2.0
USER, PASSWORD = "gw-test", "right-password"
STATUS = f"city/{TEST_GATEWAY_ID}/status"
POINTS = PointSet(("a", "b"), ("V", None))


def node(broker: Mosquitto, port: int | None = None) -> str:
    return f"{broker.host}:{port or broker.port}"


@contextlib.contextmanager
def running(*brokers: M) -> Iterator[tuple[M, ...]]:
    """Start ``brokers``; stop them all at the end."""
    try:
        for broker in brokers:
            broker.start()
        yield brokers
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Mosquitto, ...]]:
    """Two independent brokers: the nodes of a 'cluster' that shares nothing."""
    with running(Mosquitto(tmp_path / "broker-1"), Mosquitto(tmp_path / "broker-2")) as brokers:
        yield brokers


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = Buffer(tmp_path / "data", max_bytes=16 << 20, commit_interval=0.05)
    await buf.open()
    yield buf
    await buf.close()


def cluster_config(tmp_path: Path, nodes: list[str], **failover: Any) -> dict[str, Any]:
    config = base_config(tmp_path / "data", 1)
    del config["mqtt"]["host"], config["mqtt"]["port"]
    config["mqtt"].update(servers=nodes, keepalive=KEEPALIVE, failover=failover)
    return config


def union_seqs(*subs: Subscriber) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for sub in subs:
        for device, seqs in seqs_by_device(sub.messages).items():
            out.setdefault(device, set()).update(seqs)
    return out


def all_arrived(last: dict[str, int], *subs: Subscriber) -> bool:
    got = union_seqs(*subs)
    return all(set(range(1, n + 1)) <= got.get(dev, set()) for dev, n in last.items())


def moves(log: str) -> list[str]:
    return [line for line in log.splitlines() if "broker moved:" in line]


# -- order ------------------------------------------------------------------------------------------------


def test_ordered_takes_the_primary_and_the_status_names_the_node(
    pair: tuple[Mosquitto, ...], tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    b1, b2 = pair
    gw = new_gateway(tmp_path, cluster_config(tmp_path, [node(b1), node(b2)]), gateways).start()
    status = gw.wait_status(lambda s: s["broker"]["connected"])
    assert status["broker"]["server"] == node(b1)
    assert status["broker"]["servers"] == [node(b1), node(b2)] and status["broker"]["failovers"] == 0
    assert "as city-gateway-gw-test" in b1.log() and "as city-gateway-gw-test" not in b2.log()
    assert retained(b1.host, b1.port, STATUS)["broker"]["server"] == node(b1)
    shown = run_cli("status", "--data-dir", str(gw.data_dir))
    assert f"broker   connected to {node(b1)} (nodes: {node(b1)}, {node(b2)}; 0 failovers)" in shown.stdout, shown


async def test_random_order_spreads_gateways_and_keeps_each_ones_order(
    pair: tuple[Mosquitto, ...], buffer: Buffer,
) -> None:
    """Eight gateway ids over two nodes: each connects to the first node of its own stable order,
    and the eight do not all crowd one node."""
    b1, b2 = pair
    mqtt = MqttSection(servers=[node(b1), node(b2)], failover={"order": "random"}, keepalive=10, publish_timeout=3)
    ids = [f"gw-{i}" for i in range(8)]
    expected = {gw: str(servers.node_order(mqtt.nodes, "random", gw)[0]) for gw in ids}
    assert set(expected.values()) == {node(b1), node(b2)}
    for _ in range(2):  # twice: a restarted gateway keeps its order
        pubs = [Publisher(mqtt, gateway_id=gw, buffer=buffer, status=dict, backoff_initial=0.05, backoff_max=0.5)
                for gw in ids]
        tasks = [asyncio.create_task(pub.run()) for pub in pubs]
        try:
            await wait_until_async(lambda pubs=pubs: all(p.connected for p in pubs), 15, "every gateway connected")
            assert {gw: p.server for gw, p in zip(ids, pubs, strict=True)} == expected
        finally:
            await asyncio.gather(*(p.stop(timeout=2.0) for p in pubs))
            await asyncio.gather(*tasks, return_exceptions=True)
    for broker in (b1, b2):
        sessions = broker.log().count("New client connected")
        assert sessions == 2 * list(expected.values()).count(node(broker)), broker.log()


# -- names and addresses ---------------------------------------------------------------------------------


async def test_every_address_of_a_name_is_tried_and_asked_again_at_each_attempt(
    tmp_path: Path, buffer: Buffer, start_publisher: StartPublisher, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nothing listens on 127.0.0.1 there: the first address refuses
    broker = Mosquitto(tmp_path / "broker", port=port, host="127.0.0.2").start()
    asked: list[tuple[str, int]] = []

    async def fake_resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1", "127.0.0.2"]

    monkeypatch.setattr(servers, "resolve", fake_resolve)
    try:
        with Subscriber(broker.host, port, "city/gw-test/+/telemetry") as sub:
            pub = await start_publisher(MqttSection(servers=[f"broker.test:{port}"], keepalive=10,
                                                    publish_timeout=3), buffer)
            buffer.put(Batch("dev", 1000, POINTS, [1, 2]))
            await sub.wait_for_async(lambda ms: seqs_by_device(ms).get("dev") == [1, 2])
            assert pub.server == f"broker.test:{port}" and asked == [("broker.test", port)]
            broker.stop()
            await wait_until_async(lambda: not pub.connected, 10, "the lost broker noticed")
            broker.start()
            await wait_until_async(lambda: pub.connected, 10, "connected again")
            assert len(asked) >= 2 and set(asked) == {("broker.test", port)}, "the name was not asked again"
    finally:
        broker.stop()


async def test_a_long_outage_of_every_node_is_one_log_line_not_one_per_attempt(
    buffer: Buffer, start_publisher: StartPublisher, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    asked: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]  # where nothing listens on these ports

    monkeypatch.setattr(servers, "resolve", fake_resolve)
    pub = await start_publisher(MqttSection(servers=[f"a.test:{free_port()}", f"b.test:{free_port()}"],
                                            keepalive=10, publish_timeout=1), buffer,
                                backoff_initial=0.01, backoff_max=0.02)
    await wait_until_async(lambda: len(asked) >= 30, 10, "fifteen rounds")
    assert asked[:4] == ["a.test", "b.test", "a.test", "b.test"]  # each round from the primary
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.publish.publisher")]
    assert len(lines) == 1 and "unreachable" in lines[0] and "a.test" in lines[0] and "b.test" in lines[0], lines
    assert not pub.connected and "Connection refused" in (pub.last_error or ""), pub.last_error


async def test_a_name_that_does_not_resolve_is_a_failed_node(
    pair: tuple[Mosquitto, ...], buffer: Buffer, start_publisher: StartPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b1, _ = pair

    async def fake_resolve(host: str, port: int) -> list[str]:
        if host == "gone.test":
            raise OSError("Name or service not known")
        return ["127.0.0.1"]

    monkeypatch.setattr(servers, "resolve", fake_resolve)
    pub = await start_publisher(MqttSection(servers=["gone.test:1883", f"b1.test:{b1.port}"], keepalive=10,
                                            publish_timeout=3), buffer)
    await wait_until_async(lambda: pub.connected, 10, "connected to the second node")
    assert pub.server == f"b1.test:{b1.port}"


async def test_no_connack_moves_to_the_next_node_within_the_connect_timeout(
    pair: tuple[Mosquitto, ...], buffer: Buffer, start_publisher: StartPublisher,
) -> None:
    b1, _ = pair
    with MqttBlackhole() as hole:
        started = time.monotonic()
        pub = await start_publisher(MqttSection(servers=[f"127.0.0.1:{hole.port}", node(b1)], keepalive=10,
                                                publish_timeout=1), buffer)
        await wait_until_async(lambda: pub.connected, 1 + 5, "connected to the second node")
        assert pub.server == node(b1) and hole.accepted == 1 and time.monotonic() - started >= 1


async def test_a_publish_timeout_moves_to_the_next_node_and_resends_what_was_not_acked(
    pair: tuple[Mosquitto, ...], buffer: Buffer, start_publisher: StartPublisher,
) -> None:
    b1, b2 = pair
    with Subscriber(b1.host, b1.port, "city/gw-test/+/telemetry") as s1, \
            Subscriber(b2.host, b2.port, "city/gw-test/+/telemetry") as s2:
        pub = await start_publisher(MqttSection(servers=[node(b1), node(b2)], keepalive=30, publish_timeout=1),
                                    buffer)
        buffer.put(Batch("dev", 1000, POINTS, [1, 2]))
        await s1.wait_for_async(lambda ms: seqs_by_device(ms).get("dev") == [1, 2])  # the session is all up
        b1.pause()
        try:
            buffer.put(Batch("dev", 1001, POINTS, [3, 4]))
            await wait_until_async(lambda: pub.server == node(b2), 1 + 5, "on the second node")
        finally:
            b1.resume()
        await s2.wait_for_async(lambda ms: seqs_by_device(ms).get("dev") == [3, 4])
    assert "no PUBACK within 1 s" in (pub.last_error or ""), pub.last_error


async def test_tls_verifies_each_node_against_its_own_name_not_the_address_dialled(
    tmp_path: Path, buffer: Buffer, start_publisher: StartPublisher, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both names resolve to 127.0.0.1, where the certificate is for 127.0.0.1 and localhost: the
    node called broker.test is refused (its name is not in the certificate), localhost is taken."""
    require_tool("openssl", "openssl")
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    broker = Mosquitto(tmp_path / "tls-broker", extra_config=tls_listener(port, pki.ca.cert, pki.server))

    async def fake_resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    monkeypatch.setattr(servers, "resolve", fake_resolve)
    with running(broker):
        wait_until(lambda: f"Opening ipv4 listen socket on port {port}" in broker.log(), 10, "the TLS listener")
        mqtt = MqttSection(servers=[f"broker.test:{port}", f"localhost:{port}"], tls=TlsSection(ca_file=pki.ca.cert),
                           keepalive=10, publish_timeout=3)
        pub = await start_publisher(mqtt, buffer)
        await wait_until_async(lambda: pub.connected, 10, "connected to the second node")
        assert pub.server == f"localhost:{port}"
        assert "broker.test" in (pub.last_error or "") and "certificate" in (pub.last_error or ""), pub.last_error


# -- credentials -----------------------------------------------------------------------------------------


@pytest.fixture
def auth_pair(tmp_path: Path) -> Iterator[tuple[AuthMosquitto, ...]]:
    """Two brokers with password files; the first knows another password for USER."""
    with running(AuthMosquitto(tmp_path / "refuses", {USER: "another-password"}),
                 AuthMosquitto(tmp_path / "accepts", {USER: PASSWORD})) as brokers:
        yield brokers


def refused(broker: AuthMosquitto) -> int:
    return broker.log().count("disconnected, not authorised")


async def test_a_node_refusing_the_login_is_skipped_for_one_that_accepts(
    auth_pair: tuple[AuthMosquitto, ...], buffer: Buffer, start_publisher: StartPublisher,
) -> None:
    no, yes = auth_pair
    mqtt = MqttSection(servers=[node(no, no.auth_port), node(yes, yes.auth_port)], username=USER,
                       password=PASSWORD, keepalive=10, publish_timeout=3)
    with Subscriber(yes.host, yes.port, "city/gw-test/+/telemetry") as sub:
        pub = await start_publisher(mqtt, buffer)
        buffer.put(Batch("dev", 1000, POINTS, [1, 2]))
        await sub.wait_for_async(lambda ms: seqs_by_device(ms).get("dev") == [1, 2])
    assert pub.server == node(yes, yes.auth_port) and refused(no) == 1


async def test_every_node_refusing_the_login_backs_off_longer_and_says_so_once(
    auth_pair: tuple[AuthMosquitto, ...], buffer: Buffer, caplog: pytest.LogCaptureFixture,
) -> None:
    no, yes = auth_pair
    yes.set_users({USER: "a-third-password"})
    caplog.set_level(logging.INFO, logger="gateway")
    mqtt = MqttSection(servers=[node(no, no.auth_port), node(yes, yes.auth_port)], username=USER,
                       password=PASSWORD, keepalive=10, publish_timeout=3)
    pub = Publisher(mqtt, gateway_id="gw-test", buffer=buffer, status=dict, backoff_initial=0.05, backoff_max=0.2)
    started = time.monotonic()
    task = asyncio.create_task(pub.run())
    try:
        await wait_until_async(lambda: refused(no) >= 4 and refused(yes) >= 4, 20, "four rounds refused")
        took = time.monotonic() - started
        assert not pub.connected and "not authori" in (pub.last_error or "").lower(), pub.last_error
        assert node(no, no.auth_port) in (pub.last_error or "") and node(yes, yes.auth_port) in (pub.last_error or "")
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.publish.publisher")]
        assert len(lines) == 1 and "refused the login" in lines[0], lines
        # Rounds 1-3 wait at least half of 4 x min(0.2, 0.05 x 2**k) s: 0.1 + 0.2 + 0.4 = 0.7 s (0.175 s without
        # the longer backoff); both nodes of a round are tried back to back.
        assert took >= 0.7, f"4 refused rounds in {took:.2f} s"
    finally:
        await pub.stop(timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- keepalive lost, fail-back -----------------------------------------------------------------------------


def test_a_frozen_node_is_left_within_keepalive_and_every_seq_arrives(
    pair: tuple[Mosquitto, ...], tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """SIGSTOP the node in use: no PINGRESP, no PUBACK (publish_timeout is longer than the limit,
    so keepalive must notice). The gateway is on the other node within keepalive x 1.5 + 5 s, logs
    one line for the move, and every seq reaches one of the two nodes."""
    b1, b2 = pair
    flags = [tmp_path / "a.dead"]
    config = cluster_config(tmp_path, [node(b1), node(b2)])
    config["mqtt"]["publish_timeout"] = "10s"
    config["devices"] = [sim_device("dev-a", "20ms", flags[0])]
    with Subscriber(b1.host, b1.port, "city/gw-test/+/telemetry") as s1, \
            Subscriber(b2.host, b2.port, "city/gw-test/+/telemetry") as s2:
        gw = new_gateway(tmp_path, config, gateways).start()
        gw.wait_status(lambda s: s["broker"]["server"] == node(b1) and s["broker"]["readings_sent"] > 100)
        b1.pause()
        try:
            status = gw.wait_status(lambda s: s["broker"]["server"] == node(b2), timeout=KEEPALIVE * 1.5 + 5)
        finally:
            b1.resume()
        assert status["broker"]["failovers"] == 1 and status["devices"]["dev-a"]["state"] == "ok"
        last = {n: d["seq"] for n, d in drain_devices(gw, flags)["devices"].items()}
        wait_until(lambda: all_arrived(last, s1, s2), 20, "every seq on one node or the other")
        on_b2 = sorted(union_seqs(s2)["dev-a"])
        assert on_b2 == list(range(on_b2[0], last["dev-a"] + 1)), "a gap on the new node"
        assert on_b2[0] > 1, "nothing went to the first node"
    lines = moves(gw.log())
    assert len(lines) == 1 and f"{node(b1)} unreachable (no PINGRESP within" in lines[0], lines
    assert lines[0].endswith(f"now on {node(b2)}"), lines
    assert gw.terminate() == 0


def test_fail_back_to_the_primary_once_it_answers_and_no_flapping(
    pair: tuple[Mosquitto, ...], tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    b1, b2 = pair
    flags = [tmp_path / "a.dead"]
    config = cluster_config(tmp_path, [node(b1), node(b2)], fail_back_after="2s")
    config["devices"] = [sim_device("dev-a", "20ms", flags[0])]
    with Subscriber(b1.host, b1.port, "city/gw-test/+/telemetry") as s1, \
            Subscriber(b2.host, b2.port, "city/gw-test/+/telemetry") as s2:
        gw = new_gateway(tmp_path, config, gateways).start()
        gw.wait_status(lambda s: s["broker"]["server"] == node(b1) and s["broker"]["readings_sent"] > 50)
        b1.stop()
        gw.wait_status(lambda s: s["broker"]["server"] == node(b2), timeout=10)
        # The primary is down: its probes fail, the gateway stays on b2 (no new session anywhere).
        sent = gw.status()["broker"]["readings_sent"]
        gw.wait_status(lambda s: s["broker"]["readings_sent"] > sent + 200, timeout=20)  # > 2 fail_back_after
        status = gw.status()
        assert status["broker"]["server"] == node(b2) and status["broker"]["connects"] == 2
        b1.start()
        status = gw.wait_status(lambda s: s["broker"]["server"] == node(b1), timeout=2 + 3 + 5)
        assert status["broker"]["failovers"] == 2 and status["broker"]["connects"] == 3
        last = {n: d["seq"] for n, d in drain_devices(gw, flags)["devices"].items()}
        wait_until(lambda: all_arrived(last, s1, s2), 20, "every seq on one node or the other")
    status = gw.status()
    assert status["broker"]["server"] == node(b1) and status["broker"]["connects"] == 3, "it flapped"
    lines = moves(gw.log())
    assert len(lines) == 2, lines
    assert f"{node(b1)} unreachable (" in lines[0] and lines[0].endswith(f"now on {node(b2)}")
    assert f"{node(b2)} left for the primary (fail-back)" in lines[1] and lines[1].endswith(f"now on {node(b1)}")
    assert gw.terminate() == 0


async def test_a_failed_fail_back_waits_another_fail_back_after(
    tmp_path: Path, buffer: Buffer, start_publisher: StartPublisher,
) -> None:
    """The primary answers the probe (TCP) but refuses the login: back to the secondary, and the
    next try only after another fail_back_after, not in a loop."""
    with running(AuthMosquitto(tmp_path / "primary", {USER: "another-password"}),
                 AuthMosquitto(tmp_path / "secondary", {USER: PASSWORD})) as (primary, secondary):
        mqtt = MqttSection(servers=[node(primary, primary.auth_port), node(secondary, secondary.auth_port)],
                           username=USER, password=PASSWORD, keepalive=10, publish_timeout=3,
                           failover={"fail_back_after": 1.0})
        pub = await start_publisher(mqtt, buffer)
        await wait_until_async(lambda: pub.server == node(secondary, secondary.auth_port), 10, "on the secondary")
        started, first = time.monotonic(), refused(primary)
        await wait_until_async(lambda: refused(primary) >= first + 3, 15, "three fail-back attempts")
        took = time.monotonic() - started
        assert took >= 2.5, f"three fail-back attempts in {took:.2f} s: not one per fail_back_after (1 s)"
        await wait_until_async(lambda: pub.server == node(secondary, secondary.auth_port), 10, "back on the secondary")
        assert pub.failovers == 0  # it never got anywhere else


# -- the status and the will across a move ------------------------------------------------------------------


async def test_an_offline_read_back_while_connected_is_answered_with_online(
    pair: tuple[Mosquitto, ...], buffer: Buffer, start_publisher: StartPublisher,
) -> None:
    """An old node's will landing after our online (a partition ending): the gateway sees its own
    status say offline and publishes online again; after a clean stop the retained status is offline."""
    b1, _ = pair
    with Subscriber(b1.host, b1.port, STATUS) as sub:
        pub = await start_publisher(MqttSection(servers=[node(b1)], keepalive=10, publish_timeout=3), buffer)
        await sub.wait_for_async(lambda ms: any(d.get("state") == "online" for d, _ in status_docs(ms, STATUS)))
        will = json.dumps({"schema": 1, "state": "offline"})
        await asyncio.to_thread(paho_publish.single, STATUS, will, qos=1, retain=True, hostname=b1.host, port=b1.port)

        def online_after_offline(ms: list[Received]) -> bool:
            states = [d.get("state") for d, _ in status_docs(ms, STATUS)]
            return "offline" in states and "online" in states[states.index("offline"):]

        await sub.wait_for_async(online_after_offline)
        assert retained(b1.host, b1.port, STATUS)["state"] == "online"
        await pub.stop(timeout=2.0)
    assert retained(b1.host, b1.port, STATUS)["state"] == "offline"
