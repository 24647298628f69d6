"""The broker misbehaves: refuses the login, accepts TCP but never sends a CONNACK, loses the link
in the middle of publishing, acks slowly. The gateway keeps buffering, retries with a capped
backoff, says so in one log line, holds no more connections than one at a time, and loses nothing.

What test_publisher.py already covers against a fake buffer (a publish timeout ends the session,
a CONNACK that never comes leaves no connection behind, a cut link is noticed at once) is taken
here end to end: the daemon process, its SQLite buffer, acks only after PUBACK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.buffer.queue import Buffer
from gateway.config.settings import MqttSection
from gateway.model import Batch, PointSet
from gateway.publish.publisher import Publisher
from tests.support.broker import LinkProxy, Mosquitto, Subscriber, telemetry
from tests.support.faults import (
    Arrivals,
    AuthMosquitto,
    MqttBlackhole,
    ProcStats,
    assert_accounted,
    readings_by_key,
    sim_device,
)
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

USER, PASSWORD = "gw-test", "right-password"


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[AuthMosquitto]:
    """A broker whose ``auth_port`` lets only USER/PASSWORD in (anonymous subscribers on ``port``)."""
    broker = AuthMosquitto(tmp_path / "auth-broker", {USER: PASSWORD})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _drain(gw: GatewayProcess, flags: list[Path], timeout: float = 30) -> dict[str, int]:
    """Stop the simulated devices, wait until all is committed and acked; the last seq per device."""
    status = drain_devices(gw, flags, timeout)
    assert status["buffer"]["evicted"] == 0
    return {name: dev["seq"] for name, dev in status["devices"].items()}


def _refused_logins(broker: AuthMosquitto) -> int:
    """Logins the broker refused, from its log (one line each)."""
    return broker.log().count("disconnected, not authorised")


def _broker_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " gateway.publish.publisher: " in line]


# -- refused login ------------------------------------------------------------------------------------------


async def test_refused_login_is_logged_once_and_retried_with_backoff_while_buffering(
    auth_broker: AuthMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Over a dozen refused attempts: one clear log line, a growing (capped) delay between
    attempts, readings committed meanwhile; once the broker takes the password, all arrive."""
    caplog.set_level(logging.INFO, logger="gateway")
    mqtt = MqttSection(host=auth_broker.host, port=auth_broker.auth_port, username=USER,
                       password="wrong-password", publish_timeout=2.0, keepalive=10.0)
    buffer = Buffer(tmp_path / "data", max_bytes=16 << 20, commit_interval=0.05)
    await buffer.open()
    pub = Publisher(mqtt, gateway_id="gw-test", buffer=buffer, status=lambda: {},
                    backoff_initial=0.01, backoff_max=0.16)
    started = time.monotonic()
    task = asyncio.create_task(pub.run())
    points = PointSet(("a", "b"), ("V", None))
    try:
        with Subscriber(auth_broker.host, auth_broker.port, "city/gw-test/+/telemetry") as sub:
            for i in range(200):  # a poll every 50 ms, until a dozen attempts were refused
                buffer.put(Batch("dev", 1000 + i, points, [i, -i]))
                await asyncio.sleep(0.05)
                if _refused_logins(auth_broker) >= 12:
                    break
            took = time.monotonic() - started
            assert _refused_logins(auth_broker) >= 12 and not pub.connected
            assert "not authori" in (pub.last_error or "").lower(), pub.last_error
            lines = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.publish.publisher")]
            assert len(lines) == 1 and "refused the login" in lines[0] and "username" in lines[0], lines
            # Backoff: attempt k waits at least half of min(0.16, 0.01 * 2**(k-1)) s: 0.635 s for 11 waits.
            assert took >= 0.6, f"{_refused_logins(auth_broker)} attempts in {took:.2f} s: no backoff"
            assert buffer.next_seq("dev") > 1, "nothing was committed while the login was refused"

            auth_broker.set_users({USER: "wrong-password"})  # the platform side is fixed: our password works
            await wait_until_async(lambda: pub.connected, 10, "the login with the right password")
            for i in range(200, 210):
                buffer.put(Batch("dev", 1000 + i, points, [i, -i]))
            await buffer.flush()
            last = {"dev": buffer.next_seq("dev") - 1}
            msgs = await sub.wait_for_async(Arrivals().complete(last), timeout=15)
            assert_accounted(msgs, last)
    finally:
        await pub.stop(timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buffer.close()


def test_daemon_keeps_buffering_through_refused_logins_and_delivers_when_let_in(
    auth_broker: AuthMosquitto, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    flags = [tmp_path / "a.dead"]
    config = base_config(tmp_path / "data", auth_broker.auth_port)
    config["mqtt"].update(username=USER, password="wrong-password")
    config["devices"] = [sim_device("dev-a", "10ms", flags[0])]
    sub = Subscriber(auth_broker.host, auth_broker.port, "city/gw-test/+/telemetry").start()
    try:
        gw = new_gateway(tmp_path, config, gateways).start()
        status = gw.wait_status(lambda s: "authori" in (s["broker"]["last_error"] or "").lower()
                                and s["buffer"]["pending"] > 200, timeout=20)
        assert not status["broker"]["connected"] and status["devices"]["dev-a"]["state"] == "ok"
        wait_until(lambda: auth_broker.log().count("disconnected, not authorised") >= 3, 20, "three refused attempts")
        lines = _broker_lines(gw.log())
        assert len(lines) == 1 and f"refused the login as '{USER}'" in lines[0], lines
        auth_broker.set_users({USER: "wrong-password"})  # the platform side is fixed: our password works
        gw.wait_status(lambda s: s["broker"]["connected"], timeout=30)
        last = _drain(gw, flags)
        msgs = sub.wait_for(Arrivals().complete(last), timeout=30)
        assert_accounted(msgs, last)
        lines = _broker_lines(gw.log())
        assert len(lines) == 2 and "broker connected" in lines[1] and "failed attempts" in lines[1], lines
        assert gw.terminate() == 0
    finally:
        sub.close()


# -- TCP accepted, no CONNACK --------------------------------------------------------------------------------


def test_no_connack_is_a_failed_attempt_with_no_connection_left_behind(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    flags = [tmp_path / "a.dead"]
    sub = subscribe("city/gw-test/+/telemetry")
    with MqttBlackhole() as hole:
        config = base_config(tmp_path / "data", hole.port)
        config["mqtt"]["publish_timeout"] = "1s"  # also the CONNACK timeout
        config["devices"] = [sim_device("dev-a", "10ms", flags[0])]
        gw = new_gateway(tmp_path, config, gateways).start()
        assert gw.proc is not None
        wait_until(lambda: hole.accepted >= 2, 20, "a second attempt")
        fds = ProcStats.of(gw.proc.pid).fds
        wait_until(lambda: hole.accepted >= 3 and hole.open_now == 0, 20, "a third attempt, given up")
        assert hole.max_open == 1, "an attempt's connection was left open"
        assert ProcStats.of(gw.proc.pid).fds <= fds, "file descriptors grow with the attempts"
        status = gw.status()
        assert "no CONNACK within 1 s" in (status["broker"]["last_error"] or ""), status["broker"]
        assert status["buffer"]["pending"] > 0 and status["devices"]["dev-a"]["state"] == "ok"
        lines = _broker_lines(gw.log())
        assert len(lines) == 1 and "no CONNACK" in lines[0], lines

        hole.forward_to(mosquitto.host, mosquitto.port)  # the broker wakes up
        gw.wait_status(lambda s: s["broker"]["connected"], timeout=30)
        last = _drain(gw, flags)
        msgs = sub.wait_for(Arrivals().complete(last), timeout=30)
        assert_accounted(msgs, last)
        assert gw.terminate() == 0


# -- the link dies mid-publish; slow acks -------------------------------------------------------------------


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[LinkProxy]:
    async with LinkProxy(mosquitto.host, mosquitto.port) as link:
        yield link


async def test_link_cut_mid_publish_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
    proxy: LinkProxy,
) -> None:
    """The TCP link dies three times while messages are in flight (once with the broker frozen, so
    a PUBACK is surely outstanding): every reading arrives, a repeat carries the same content."""
    flags = [tmp_path / "a.dead", tmp_path / "b.dead"]
    config = base_config(tmp_path / "data", proxy.port, commit="100ms")
    config["mqtt"]["batch"] = {"max_readings": 30}  # many small messages: the window is always busy
    config["devices"] = [sim_device("dev-a", "10ms", flags[0]), sim_device("dev-b", "10ms", flags[1])]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways)
    await asyncio.to_thread(gw.start)
    for cut in range(3):
        before = len(sub.messages)
        await sub.wait_for_async(lambda ms, n=before: len(ms) > n + 20, timeout=20)
        if cut == 1:
            mosquitto.pause()
        try:
            proxy.cut()
        finally:
            if cut == 1:
                mosquitto.resume()
        await asyncio.to_thread(gw.wait_status, lambda s: not s["broker"]["connected"], 10)
        await asyncio.to_thread(gw.wait_status, lambda s: s["broker"]["connected"], 30)
    last = await asyncio.to_thread(_drain, gw, flags)
    msgs = await sub.wait_for_async(Arrivals().complete(last), timeout=30)
    assert_accounted(msgs, last)
    log = gw.log()  # each loss after a "connected" line is a state change worth its line
    assert len(_broker_lines_matching(log, "broker lost")) == 3 == len(_broker_lines_matching(log, "(after ")), log
    assert await asyncio.to_thread(gw.terminate) == 0


def _broker_lines_matching(log: str, text: str) -> list[str]:
    return [line for line in _broker_lines(log) if text in line]


def test_slow_acks_within_the_publish_timeout_keep_the_session_and_lose_nothing(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    """The broker stalls (frozen) for half the publish timeout, three times: the session stays up,
    the in-flight window waits, then every reading arrives exactly once."""
    flags = [tmp_path / "a.dead"]
    config = base_config(tmp_path / "data", mosquitto.port, commit="100ms")
    config["mqtt"].update(publish_timeout="3s", batch={"max_readings": 30})
    config["devices"] = [sim_device("dev-a", "10ms", flags[0])]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    for _ in range(3):
        before = len(sub.messages)
        sub.wait_for(lambda ms, n=before: len(ms) > n + 10, timeout=20)
        mosquitto.pause()
        try:
            sent = gw.status()["broker"]["messages_sent"]
            time.sleep(1.5)  # the fault injected: the broker stalls for half the publish timeout
            stalled = gw.status()["broker"]["messages_sent"] - sent
        finally:
            mosquitto.resume()
        assert stalled <= 20 + 1, "messages counted as sent without a PUBACK"  # max_inflight: the window
    last = _drain(gw, flags)
    msgs = sub.wait_for(Arrivals().complete(last), timeout=30)
    assert_accounted(msgs, last)
    by_key = readings_by_key(msgs)
    assert all(len(copies) == 1 for copies in by_key.values()), "a slow ack caused a resend"
    assert not _broker_lines_matching(gw.log(), "broker lost"), gw.log()
    assert len(telemetry(msgs)) > 30
    assert gw.terminate() == 0
