"""The publisher against a real Mosquitto: delivery, order, acks, outages, will, stop, TLS."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest

from gateway.bench.nats_cluster import mqtt_connack
from gateway.buffer.queue import Buffer
from gateway.config.settings import MqttSection, TlsSection
from gateway.model import Batch, PointSet, StoredBatch
from gateway.publish.publisher import LOG_EVERY, Publisher
from tests.support.broker import (
    TEST_GATEWAY_ID,
    LinkProxy,
    Mosquitto,
    StartPublisher,
    Subscriber,
    assert_in_order,
    has_all,
    retained,
    status_docs,
    status_seen,
    telemetry,
)
from tests.support.needs import require_tool
from tests.support.ports import free_port
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

GW = TEST_GATEWAY_ID
STATUS_TOPIC = f"city/{GW}/status"  # the default topic_prefix is "city"


class FakeBuffer:
    """In memory, the Buffer API the publisher codes against; records acks."""

    def __init__(self, points: int = 5) -> None:
        self.on_commit: Callable[[], None] | None = None
        self.names = tuple(f"p{i}" for i in range(points))
        self.units: tuple[str | None, ...] = ("V",) + (None,) * (points - 1)
        self.rows: dict[int, StoredBatch] = {}
        self.acked: set[int] = set()
        self.next_seq: dict[str, int] = {}
        self.next_row, self.fetched = 1, 0  # fetched: the highest row fetch() has handed out

    def add(self, devices: Iterable[str], polls: int = 1) -> None:
        """``polls`` batches per device, interleaved as a scheduler would commit them."""
        for _ in range(polls):
            for device in devices:
                seq0 = self.next_seq.get(device, 1)
                values: list[Any] = [float(seq0 + i) for i in range(len(self.names))]
                ts = int(time.time() * 1000)
                self.rows[self.next_row] = StoredBatch(self.next_row, device, seq0, ts, self.names, self.units, values)
                self.next_seq[device], self.next_row = seq0 + len(values), self.next_row + 1
        if self.on_commit is not None:
            self.on_commit()

    def total(self) -> dict[str, int]:
        """Per device, the highest seq added so far."""
        return {device: seq - 1 for device, seq in self.next_seq.items()}

    async def fetch(self, after_row: int, max_readings: int) -> list[StoredBatch]:
        await asyncio.sleep(0)  # like the real one: the loop runs while the query does
        out: list[StoredBatch] = []
        total = 0
        for row in sorted(r for r in self.rows if r > after_row and r not in self.acked):
            batch = self.rows[row]
            if out and total + len(batch) > max_readings:
                break
            out.append(batch)
            total += len(batch)
        self.fetched = max([self.fetched, *(b.row for b in out)])
        return out

    def ack(self, rows: Iterable[int]) -> None:
        self.acked.update(rows)


def settings(host: str, port: int, **kw: Any) -> MqttSection:
    return MqttSection(host=host, port=port, **{"publish_timeout": 5.0, "keepalive": 10.0, **kw})


@pytest.mark.parametrize("fmt", ["cbor", "json"])
async def test_drains_a_backlog_once_in_order_and_acks_what_arrived(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher, fmt: str
) -> None:
    sub = subscribe("city/#")
    buf = FakeBuffer()
    buf.add(["meter-1", "meter-2", "sim-1"], polls=150)  # 750 readings per device, interleaved
    pub = await start_publisher(settings(mosquitto.host, mosquitto.port, encoding=fmt,
                                         batch={"max_readings": 100}, max_inflight=4), buf)
    got = await sub.wait_for_async(has_all(buf.total()), timeout=20)
    await wait_until_async(lambda: len(buf.acked) == len(buf.rows), 5, "every row acked")

    assert_in_order(got, buf.total(), exact=True)
    docs = telemetry(got)
    assert all(len(d["readings"]) <= 100 and d["gateway"] == GW for d in docs)
    assert all(m.topic == f"city/{GW}/{m.doc['device']}/telemetry" for m in got if "telemetry" in m.topic)
    assert docs[0]["readings"][0] == {"seq": 1, "ts": docs[0]["readings"][0]["ts"], "point": "p0",
                                      "value": 1.0, "unit": "V"}
    assert pub.messages_sent == len(docs) and pub.readings_sent == 3 * 750
    # New commits wake the drain: they arrive too, still in order.
    buf.add(["meter-1"], polls=3)
    got = await sub.wait_for_async(has_all(buf.total()), timeout=10)
    assert_in_order(got, buf.total(), exact=True)
    assert retained(mosquitto.host, mosquitto.port, STATUS_TOPIC)["state"] == "online"


@pytest.mark.parametrize("group", [1, 2], ids=["own-topics", "group-messages"])
async def test_broker_stopped_mid_stream_nothing_missing_per_device(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
    caplog: pytest.LogCaptureFixture, group: int,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.publisher")
    sub = subscribe("city/#")
    buf = FakeBuffer()
    devices = ["meter-1", "meter-2", "sim-1"]
    pub = await start_publisher(settings(mosquitto.host, mosquitto.port,
                                         batch={"max_readings": 50, "devices": group}), buf)

    async def produce() -> None:  # a poll of every device each 5 ms, as long as the test runs
        while True:
            buf.add(devices)
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(produce())
    try:
        await sub.wait_for_async(has_all({"sim-1": 200}), timeout=10)  # mid-stream
        mosquitto.stop()
        rows_at_stop = buf.next_row
        # the loss, then reconnections refused
        await wait_until_async(lambda: not pub.connected and "Connection refused" in (pub.last_error or ""), 10,
                               "the publisher to notice")
        await wait_until_async(lambda: buf.next_row > rows_at_stop + 300, 10, "a backlog while the broker is away")
        assert not any(r >= rows_at_stop for r in buf.acked), "acked while the broker was down"
        mosquitto.start()
        await wait_until_async(lambda: pub.connected, 10, "reconnection")
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
    got = await sub.wait_for_async(has_all(buf.total()), timeout=20)
    assert_in_order(got, buf.total(), exact=False)
    assert pub.connects == 2
    lost = [r for r in caplog.records if r.getMessage().startswith("broker lost:")]
    back = [r for r in caplog.records if r.getMessage().startswith("broker connected")]
    assert len(lost) == 1 and "readings are kept in the buffer" in lost[0].getMessage()
    assert len(back) == 2  # the first connection and the return; not one line per retry
    if group > 1:  # up to two devices a message, on the gateway's group topic only
        telemetry_topics = {m.topic for m in got if m.topic.endswith("/telemetry")}
        assert telemetry_topics == {f"city/{GW}/telemetry"}
        assert max(len(m.doc["devices"]) for m in got if m.topic in telemetry_topics) == 2


async def test_publish_timeout_means_dead_link_and_reconnects(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    sub = subscribe("city/#")
    buf = FakeBuffer()
    buf.add(["meter-1"], polls=10)
    async with LinkProxy(mosquitto.host, mosquitto.port) as proxy:  # counts the connection attempts
        pub = await start_publisher(settings(proxy.host, proxy.port, publish_timeout=1.0), buf)
        await sub.wait_for_async(has_all(buf.total()), timeout=10)
        await wait_until_async(lambda: len(buf.acked) == 10, 5, "the first rows acked")

        mosquitto.pause()  # TCP stays up, nothing answers: a half-open link as the gateway sees it
        try:
            paused_at = time.monotonic()
            buf.add(["meter-1"], polls=10)
            await wait_until_async(lambda: not pub.connected, 5, "the publish timeout to end the session")
            noticed = time.monotonic() - paused_at
            assert pub.last_error is not None and "no PUBACK within 1 s" in pub.last_error
            assert len(buf.acked) == 10, "rows acked without a PUBACK"
            # Stay frozen through attempts that get no CONNACK (each times out after 1 s): the
            # session and two attempts have failed once a fourth connection comes.
            await wait_until_async(lambda: proxy.accepted >= 4, 10, "connect attempts against the frozen broker")
            assert len(buf.acked) == 10, "rows acked without a PUBACK"
        finally:
            mosquitto.resume()
        got = await sub.wait_for_async(has_all(buf.total()), timeout=20)
        await wait_until_async(lambda: len(buf.acked) == 20, 10, "all rows acked")
        assert noticed < 3.0
        assert pub.connects >= 2
        assert_in_order(got, buf.total(), exact=False)
        await wait_until_async(lambda: retained(mosquitto.host, mosquitto.port, STATUS_TOPIC)["state"] == "online",
                               10, "the status back online")


async def test_attempts_without_connack_leave_no_connection_behind(
    mosquitto: Mosquitto, start_publisher: StartPublisher,
) -> None:
    """A connect attempt that times out must not leave its socket open: the broker would accept
    that zombie when it wakes up and keep it under our client id (aiomqtt 2.5 leaves it open)."""
    def settled() -> bool:  # every connection under our client id has ended, none lingers
        log, cid = mosquitto.log(), f"city-gateway-{GW}"
        ended = log.count(f"Client {cid} disconnected.") + log.count(f"Client {cid} already connected")
        return log.count(f"as {cid} (") >= 3 and log.count(f"as {cid} (") == ended

    async with LinkProxy(mosquitto.host, mosquitto.port) as proxy:  # counts the attempts, passes all else on
        mosquitto.pause()
        try:
            pub = await start_publisher(settings(proxy.host, proxy.port, publish_timeout=0.5),
                                        FakeBuffer(), backoff_initial=0.01, backoff_max=0.02)
            # three failed once a fourth comes
            await wait_until_async(lambda: proxy.accepted >= 4, 10, "attempts against the frozen broker")
            await pub.stop(timeout=1.0)
        finally:
            mosquitto.resume()
        await wait_until_async(settled, 10, "every attempt's connection to end with a DISCONNECT")


async def test_lost_link_fails_fast_and_the_will_says_offline(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    sub = subscribe("city/#")
    buf = FakeBuffer()
    async with LinkProxy(mosquitto.host, mosquitto.port) as proxy:
        # A long publish timeout: only the link watcher can end the session quickly.
        pub = await start_publisher(settings(proxy.host, proxy.port, publish_timeout=30.0), buf)
        await sub.wait_for_async(status_seen(STATUS_TOPIC, "online"))

        mosquitto.pause()  # no PUBACK: the next message stays in flight
        try:
            buf.add(["meter-1"], polls=2)
            await wait_until_async(lambda: buf.fetched == 2, 5, "a message in flight")
            assert not buf.acked
            await proxy.refuse()
            cut_at = time.monotonic()
            proxy.cut()  # the TCP connections die without an MQTT DISCONNECT
            await wait_until_async(lambda: not pub.connected, 5, "the publisher to notice the lost link")
            assert time.monotonic() - cut_at < 2.0, "a lost link must not wait for the publish timeout"
        finally:
            mosquitto.resume()
        await sub.wait_for_async(  # the will, sent by the broker
            lambda ms: any(d == {"schema": 1, "state": "offline"} for d, _ in status_docs(ms, STATUS_TOPIC)))
        assert retained(mosquitto.host, mosquitto.port, STATUS_TOPIC) == {"schema": 1, "state": "offline"}
        await proxy.listen()
        got = await sub.wait_for_async(has_all(buf.total()), timeout=15)
        assert_in_order(got, buf.total(), exact=False)
        await wait_until_async(lambda: retained(mosquitto.host, mosquitto.port, STATUS_TOPIC)["state"] == "online",
                               10, "the status back online")


async def test_stop_says_offline_retained_and_disconnects_cleanly(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    sub = subscribe(STATUS_TOPIC)
    pub = await start_publisher(settings(mosquitto.host, mosquitto.port), FakeBuffer())
    await sub.wait_for_async(status_seen(STATUS_TOPIC, "online"))
    online = [d for d, _ in status_docs(sub.messages, STATUS_TOPIC)][-1]
    assert online["version"] == "test" and online["schema"] == 1
    started = time.monotonic()
    await pub.stop(timeout=5.0)
    assert time.monotonic() - started < 2.0
    assert not pub.connected
    doc = retained(mosquitto.host, mosquitto.port, STATUS_TOPIC)
    assert doc["state"] == "offline" and doc["version"] == "test"  # ours, not the bare will
    # A clean DISCONNECT: the broker drops the will instead of sending it.
    client_id = f"city-gateway-{GW}"
    await wait_until_async(lambda: f"Client {client_id} disconnected." in mosquitto.log(), 5,
                           "the DISCONNECT in the log")
    assert f"Client {client_id} closed its connection" not in mosquitto.log()
    got = await sub.wait_for_async(lambda ms: len(ms) >= 2, timeout=5)
    assert [d["state"] for d, _ in status_docs(got, STATUS_TOPIC)] == ["online", "offline"]


async def test_status_is_republished_periodically(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    sub = subscribe(STATUS_TOPIC)
    await start_publisher(settings(mosquitto.host, mosquitto.port), FakeBuffer(), status_period=0.3)
    got = await sub.wait_for_async(lambda ms: len(ms) >= 3, timeout=5)  # the first and two periodic
    assert all(d["state"] == "online" for d, _ in status_docs(got, STATUS_TOPIC))


async def test_status_changed_republishes_soon(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    sub = subscribe(STATUS_TOPIC)
    pub = await start_publisher(settings(mosquitto.host, mosquitto.port), FakeBuffer(), status_period=3600)
    await sub.wait_for_async(lambda ms: len(ms) == 1, timeout=5)
    asked = time.monotonic()
    pub.status_changed()
    got = await sub.wait_for_async(lambda ms: len(ms) == 2, timeout=5)
    assert time.monotonic() - asked < 2.5  # at most STATUS_MIN_GAP after the previous one
    assert got[1].doc["n"] > got[0].doc["n"]  # a fresh status() call


async def test_the_status_says_commands_are_subscribed_as_soon_as_they_are(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
) -> None:
    """The first status goes out before the command topics' SUBACK: the grant asks for another at
    once, not a status_period later."""
    sub = subscribe(STATUS_TOPIC)
    pubs: list[Publisher] = []

    async def on_command(device: str, payload: bytes, retained: bool) -> dict[str, Any]:
        return {"ok": True}

    def status() -> dict[str, Any]:
        return {"schema": 1, "state": "online", "subscribed": bool(pubs) and pubs[0].commands_subscribed}

    pubs.append(await start_publisher(settings(mosquitto.host, mosquitto.port), FakeBuffer(), status=status,
                                      status_period=3600, on_command=on_command))
    got = await sub.wait_for_async(lambda ms: any(m.doc.get("subscribed") for m in ms), timeout=5)
    assert got[0].doc["subscribed"] is False  # the first, before the SUBACK


async def test_drains_the_real_buffer_through_an_outage_and_empties_it(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher, tmp_path: Path,
) -> None:
    sub = subscribe("city/#")
    buffer = Buffer(tmp_path / "data", max_bytes=16 << 20, commit_interval=0.05)
    await buffer.open()
    points = PointSet(("a", "b", "c"), ("m", None, None))
    pub: Publisher | None = None
    try:
        for i in range(200):
            buffer.put(Batch("meter-1", 1000 + i, points, [i, i + 0.5, float("nan")]))
        await buffer.flush()
        pub = await start_publisher(settings(mosquitto.host, mosquitto.port, batch={"max_readings": 60}), buffer)
        await sub.wait_for_async(has_all({"meter-1": 600}), timeout=15)
        mosquitto.stop()
        for i in range(200, 300):
            buffer.put(Batch("meter-1", 1000 + i, points, [i, i + 0.5, 1.0]))
        await buffer.flush()
        await wait_until_async(lambda: "Connection refused" in (pub.last_error or ""), 10, "the publisher to notice")
        mosquitto.start()
        got = await sub.wait_for_async(has_all({"meter-1": 900}), timeout=15)
        assert_in_order(got, {"meter-1": 900}, exact=False)
        nan_reading = telemetry(got)[0]["readings"][2]
        assert nan_reading["value"] is None and nan_reading["error"] == "not a number"
        for _ in range(200):  # the acks are applied by the next commit
            await buffer.flush()
            if buffer.stats().pending == 0:
                break
            await asyncio.sleep(0.05)
        assert buffer.stats().pending == 0, buffer.stats()
    finally:
        if pub is not None:
            await pub.stop(timeout=2.0)  # before the buffer goes away
        await buffer.close()


async def test_unreachable_broker_is_logged_once_and_retried_with_backoff(
    start_publisher: StartPublisher, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.publisher")
    broker = Mosquitto(tmp_path / "late")  # not started yet: its port refuses connections
    pub = await start_publisher(settings(broker.host, broker.port), FakeBuffer(),
                                backoff_initial=0.02, backoff_max=0.1)
    reminder = f"broker still failing after {LOG_EVERY} attempts"  # the one line about many attempts
    await wait_until_async(lambda: any(r.getMessage().startswith(reminder) for r in caplog.records), 10,
                           "many failed attempts")
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert "Connection refused" in (pub.last_error or "")
    try:
        broker.start()
        await wait_until_async(lambda: pub.connected, 10, "the connection once the broker is up")
    finally:
        await pub.stop(timeout=2.0)
        broker.stop()
    assert any(r.getMessage().startswith("broker connected") and "failed attempts" in r.getMessage()
               for r in caplog.records)


def make_certs(d: Path, server_san: str) -> None:
    """A CA, a server certificate for ``server_san`` and a client certificate, all signed by the CA."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, san in (("server", server_san), ("client", "DNS:gateway")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")


@pytest.mark.parametrize(("san", "ok"), [("IP:127.0.0.1", True), ("DNS:broker.example.org", False)])
async def test_tls_verifies_the_server_and_uses_the_client_certificate(
    tmp_path: Path, start_publisher: StartPublisher, san: str, ok: bool
) -> None:
    make_certs(tmp_path, san)
    d = tmp_path
    broker = Mosquitto(d / "mq", extra_config=(
        f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nrequire_certificate true\n"
    )).start()
    tls = TlsSection(ca_file=d / "ca.crt", cert_file=d / "client.crt", key_file=d / "client.key")
    try:
        async with LinkProxy(broker.host, broker.port) as proxy:  # counts the attempts
            pub = await start_publisher(settings(proxy.host, proxy.port, tls=tls), FakeBuffer())
            if ok:
                await wait_until_async(lambda: pub.connected, 10, "a TLS connection")
            else:
                await wait_until_async(lambda: proxy.accepted >= 3, 10, "failed attempts")  # two have failed
                assert not pub.connected and pub.connects == 0
                assert "certificate" in (pub.last_error or "").lower()
            await pub.stop(timeout=2.0)
    finally:
        broker.stop()


# -- mqtt.batch and mqtt.max_rate ------------------------------------------------------------------------


async def test_linger_fills_messages_instead_of_sending_each_poll(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher
) -> None:
    sub = subscribe(f"city/{GW}/+/telemetry")
    buf = FakeBuffer()  # 5 readings a poll
    await start_publisher(settings(mosquitto.host, mosquitto.port, batch={"max_readings": 20, "linger": 30.0}), buf)
    for _ in range(3):  # 15 readings, committed and fetched one poll at a time: not a full message yet
        buf.add(["meter-1"])
        await wait_until_async(lambda: buf.fetched == buf.next_row - 1, 5, "the drain to fetch the poll")
    buf.add(["meter-1"])  # the fourth poll fills one: it goes, with the three before it
    got = await sub.wait_for_async(has_all({"meter-1": 20}), timeout=10)
    assert [len(d["readings"]) for d in telemetry(got)] == [20]
    assert_in_order(got, buf.total(), exact=True)


async def test_linger_sends_a_part_full_message_once_it_has_waited(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher
) -> None:
    sub = subscribe(f"city/{GW}/+/telemetry")
    buf = FakeBuffer()
    await start_publisher(settings(mosquitto.host, mosquitto.port, batch={"max_readings": 1000, "linger": 0.3}), buf)
    buf.add(["meter-1", "meter-2"], polls=2)
    started = time.monotonic()
    got = await sub.wait_for_async(has_all(buf.total()), timeout=10)
    assert time.monotonic() - started >= 0.3  # held for the linger, not sent at once...
    assert sorted(len(d["readings"]) for d in telemetry(got)) == [10, 10]  # ...then both polls in one


async def test_max_bytes_splits_messages_by_polls_and_loses_nothing(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher
) -> None:
    sub = subscribe(f"city/{GW}/+/telemetry")
    buf = FakeBuffer(points=20)
    buf.add(["meter-1", "meter-2"], polls=40)
    pub = await start_publisher(settings(mosquitto.host, mosquitto.port, encoding="json",
                                         batch={"max_readings": 1000, "max_bytes": 4000}), buf)
    got = await sub.wait_for_async(has_all(buf.total()), timeout=20)
    assert_in_order(got, buf.total(), exact=True)
    assert all(len(m.payload) <= 4000 for m in got)
    assert max(len(m.payload) for m in got) > 2000  # split in halves, not into single polls
    await wait_until_async(lambda: pub.readings_sent == 2 * 40 * 20, 5, "every reading counted as sent")


async def test_a_poll_over_max_bytes_goes_alone_and_is_logged_once(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.publish.publisher")
    sub = subscribe(f"city/{GW}/+/telemetry")
    buf = FakeBuffer(points=200)
    buf.add(["meter-1"], polls=3)
    await start_publisher(settings(mosquitto.host, mosquitto.port, batch={"max_bytes": 1000}), buf)
    got = await sub.wait_for_async(has_all(buf.total()), timeout=10)
    assert [len(d["readings"]) for d in telemetry(got)] == [200, 200, 200]
    assert len([r for r in caplog.records if "over mqtt.batch.max_bytes" in r.getMessage()]) == 1


async def test_max_rate_paces_a_backlog(
    mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], start_publisher: StartPublisher
) -> None:
    sub = subscribe(f"city/{GW}/+/telemetry")
    buf = FakeBuffer()
    buf.add(["meter-1"], polls=100)  # 500 readings
    await start_publisher(settings(mosquitto.host, mosquitto.port, max_rate=400.0, batch={"max_readings": 50}), buf)
    await sub.wait_for_async(has_all({"meter-1": 50}), timeout=10)
    first = time.monotonic()
    got = await sub.wait_for_async(has_all(buf.total()), timeout=20)
    assert_in_order(got, buf.total(), exact=True)
    # A burst of one second's worth (400) goes at once, the other 100 at 400/s: 0.25 s more.
    assert time.monotonic() - first >= 0.2


class SoloNats:
    """One nats-server with JetStream and an MQTT listener, whose one user ``gw`` may subscribe to
    everything but the gateway's command topics until ``allow_commands()`` reloads its config."""

    def __init__(self, workdir: Path) -> None:
        self.exe = require_tool("nats-server", "nats-server")
        self.workdir, self.client_port, self.mqtt_port = workdir, free_port(), free_port()
        self.conf = workdir / "nats.conf"
        self.log_path = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self, deny: bool) -> None:
        denied = f', deny: ["city.{GW}.*.cmd"]' if deny else ""  # MQTT city/gw/+/cmd in NATS subjects
        self.conf.write_text("\n".join([
            f"listen: 127.0.0.1:{self.client_port}", "server_name: solo",
            f'jetstream {{ store_dir: "{self.workdir / "js"}", max_mem: 16M, max_file: 64M }}',
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}",
            f'authorization {{ users: [ {{user: gw, password: pw, permissions: {{publish: ">", '
            f'subscribe: {{allow: ">"{denied}}}}}}} ] }}',
        ]) + "\n")

    def start(self) -> None:
        self._write(deny=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        # Any CONNACK (here "not authorized": the probe has no password) means MQTT is served.
        wait_until(lambda: mqtt_connack("127.0.0.1", self.mqtt_port) is not None, 20, "nats-server's MQTT listener")

    def allow_commands(self) -> None:
        assert self.proc is not None
        self._write(deny=False)
        self.proc.send_signal(signal.SIGHUP)  # nats-server reloads its config, permissions included
        wait_until(lambda: "Reloaded server configuration" in self.log(), 10, "nats-server's reload")

    def violations(self) -> int:
        return self.log().count("Subscription Violation")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def solo_nats(tmp_path: Path) -> Iterator[SoloNats]:
    """A started SoloNats; asked for before start_publisher, it is stopped after the publisher."""
    nats = SoloNats(tmp_path)
    try:
        nats.start()
        yield nats
    finally:
        nats.stop()


async def test_a_refused_subscription_is_tried_again_on_the_same_connection_until_granted(
    solo_nats: SoloNats, start_publisher: StartPublisher, caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker refuses the command topics (NATS: a subscribe permission; also what NATS answers when
    it cannot make a QoS 1 subscription's JetStream consumer in time). Refused once per connection in
    the log, tried again every status_period without a line each, granted once the broker allows it:
    commands then work, on the same connection."""
    nats = solo_nats
    answered: list[tuple[str, bytes]] = []

    async def on_command(device: str, payload: bytes, retained: bool) -> dict[str, Any]:
        answered.append((device, payload))
        return {"ok": True}

    caplog.set_level(logging.INFO, logger="gateway.publish.publisher")
    mqtt = settings("127.0.0.1", nats.mqtt_port, username="gw", password="pw")
    pub = await start_publisher(mqtt, FakeBuffer(), status_period=0.3, on_command=on_command)
    await wait_until_async(lambda: nats.violations() >= 3, 20, "the refusal and two tries again")
    assert not pub.commands_subscribed
    refusals = [r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert refusals == [f"the broker refused the subscription to city/{GW}/+/cmd (its ACL?): no remote "
                        "commands until it is granted (tried again with the periodic status)"]

    nats.allow_commands()
    await wait_until_async(lambda: pub.commands_subscribed, 10, "the command topics granted on a later try")
    assert pub.connects == 1  # the same connection: tried again, not reconnected
    granted = [r.getMessage() for r in caplog.records if "granted it on a later try" in r.getMessage()]
    assert granted == [f"subscribed to remote commands on city/{GW}/+/cmd: the broker granted it on a later try"]
    await asyncio.to_thread(paho_publish.single, f"city/{GW}/meter-1/cmd", b'{"id": "c-1"}', qos=1,
                            hostname="127.0.0.1", port=nats.mqtt_port, auth={"username": "gw", "password": "pw"})
    await wait_until_async(lambda: answered == [("meter-1", b'{"id": "c-1"}')], 10, "the command answered")
