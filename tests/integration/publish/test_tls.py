"""TLS, mTLS and passwords against a real Mosquitto, with certificates made by the test; secrets never shown.

test_publisher.py already covers a good mTLS connection and a certificate for the wrong host name
at the publisher level. Here: the rest of the matrix (wrong CA, expired, wrong host seen from the
daemon's status and log, client certificate required or untrusted, a plaintext broker, password
logins), what travels on the wire, and that `check`, `status` and the log never show a secret.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import load_config
from gateway.config.settings import MqttSection, TlsSection
from gateway.control import SOCKET_NAME, request
from gateway.model import StoredBatch
from tests.support.broker import (
    TEST_GATEWAY_ID,
    LinkProxy,
    Mosquitto,
    StartPublisher,
    Subscriber,
    free_port,
    telemetry,
    wait_port,
)
from tests.support.certs import CertKey, Pki, make_pki, tls_listener
from tests.support.gateway_proc import base_config, run_cli, write_config
from tests.support.needs import require_tool
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

GW = TEST_GATEWAY_ID
CLIENT_ID = f"city-gateway-{GW}"
SECRET = "Zq7-not-in-any-log-9Xv"


# -- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_tool("openssl", "openssl")  # makes the certificates
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_broker(workdir: Path, tls: str = "", extra: str = "") -> tuple[Mosquitto, int]:
    """A Mosquitto with its plain listener (for test subscribers) and, if given, a TLS listener.

    ``tls`` is a ``tls_listener(...)`` block for port returned second; ``extra`` more config.
    """
    broker = Mosquitto(workdir, extra_config=extra + tls)
    tls_port = int(tls.split()[1]) if tls else broker.port
    broker.start()
    if tls:
        wait_port(broker.host, tls_port, 10, alive=lambda: broker.running)
    return broker, tls_port


@pytest.fixture
def brokers() -> Iterator[list[Mosquitto]]:
    """Brokers a test started: stopped at the end."""
    started: list[Mosquitto] = []
    yield started
    for broker in started:
        broker.stop()


def tls_attempts(broker: Mosquitto, port: int) -> int:
    """Connection attempts on the TLS listener at ``port``, from the broker's log: Mosquitto logs
    one that fails in the handshake either as a new connection or as a failed one (with the alert
    our client sent), never both."""
    return len(re.findall(rf"New connection from \S+ on port {port}\.|Client connection from \S+ failed: .*alert",
                          broker.log()))


def client_sessions(broker: Mosquitto) -> int:
    """MQTT sessions the gateway opened (a CONNECT the broker processed), from its log."""
    return len(re.findall(rf"New client connected from .* as {re.escape(CLIENT_ID)}\b", broker.log()))


class Buffer:
    """A few batches in memory, in the shape the publisher wants; records what was acked."""

    def __init__(self, batches: int = 3) -> None:
        self.on_commit: Callable[[], None] | None = None
        ts = int(time.time() * 1000)
        self.rows = [StoredBatch(i, "sim-1", 1 + 2 * (i - 1), ts, ("p0", "p1"), (None, None), [1.0, 2.0])
                     for i in range(1, batches + 1)]
        self.acked: set[int] = set()

    async def fetch(self, after_row: int, max_readings: int) -> list[StoredBatch]:
        await asyncio.sleep(0)
        return [b for b in self.rows if b.row > after_row and b.row not in self.acked]

    def ack(self, rows: Any) -> None:
        self.acked.update(rows)


def mqtt(port: int, **kw: Any) -> MqttSection:
    return MqttSection(host="127.0.0.1", port=port, **{"publish_timeout": 2.0, "keepalive": 10.0, **kw})


# -- the good case, and what is on the wire ----------------------------------------------------------


async def test_verified_tls_delivers_and_nothing_travels_in_plaintext(
    pki: Pki, tmp_path: Path, brokers: list[Mosquitto], start_publisher: StartPublisher
) -> None:
    broker, tls_port = start_broker(tmp_path / "mq", tls_listener(free_port(), pki.ca.cert, pki.server))
    brokers.append(broker)
    with Subscriber(broker.host, broker.port, f"city/{GW}/#") as sub:
        async with LinkProxy("127.0.0.1", tls_port) as proxy:
            buf = Buffer()
            pub = await start_publisher(mqtt(proxy.port, tls=TlsSection(ca_file=pki.ca.cert), encoding="json"), buf)
            await wait_until_async(lambda: buf.acked == {1, 2, 3}, 10, "every batch acknowledged over TLS")
            msgs = await sub.wait_for_async(lambda ms: sum(len(d["readings"]) for d in telemetry(ms)) >= 6)
            await pub.stop(timeout=2.0)
    assert [r["seq"] for doc in telemetry(msgs) for r in doc["readings"]] == [1, 2, 3, 4, 5, 6]
    sent = bytes(proxy.sent)
    assert sent[:1] == b"\x16", "the first byte on the wire is not a TLS handshake record"
    for clear in (b"MQTT", CLIENT_ID.encode(), b"sim-1", f"city/{GW}".encode()):
        assert clear not in sent, f"{clear!r} went over the wire in plaintext"


# -- the server certificate is checked: seen from the daemon -----------------------------------------


def _server_for(pki: Pki, case: str) -> tuple[CertKey, Path]:
    """(certificate the broker shows, CA file the gateway trusts) for a failure case."""
    return {
        "wrong CA": (pki.server, pki.rogue_ca.cert),  # ca_file names a CA that did not sign the broker
        "untrusted issuer": (pki.rogue_server, pki.ca.cert),  # the broker's certificate is from another CA
        "expired": (pki.expired, pki.ca.cert),
        "wrong host": (pki.wrong_host, pki.ca.cert),
    }[case]


NOT_TRUSTED = "not signed by a CA of mqtt.tls.ca_file"  # OpenSSL's words vary with the chain sent
REASONS = {
    "wrong CA": NOT_TRUSTED,
    "untrusted issuer": NOT_TRUSTED,
    "expired": "certificate has expired",
    "wrong host": "certificate is not valid for '127.0.0.1'",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_a_rejected_server_certificate_is_a_clear_error_and_never_plaintext(
    pki: Pki, tmp_path: Path, brokers: list[Mosquitto], case: str
) -> None:
    server, ca_file = _server_for(pki, case)
    broker, tls_port = start_broker(tmp_path / "mq", tls_listener(free_port(), pki.ca.cert, server))
    brokers.append(broker)
    config = base_config(tmp_path / "data", tls_port)
    config["mqtt"]["tls"] = {"ca_file": str(ca_file)}
    config["devices"] = [{"name": "sim-1", "driver": "simulated", "interval": "100ms", "points": [{"name": "p"}]}]
    cfg = write_config(tmp_path / "gateway.yaml", config)
    with Subscriber(broker.host, broker.port, "#") as sub:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gw.log", "wb"))  # noqa: SIM115
        try:
            def failed_thrice() -> dict[str, Any] | None:  # the first attempt and two retries have failed
                assert proc.poll() is None, (tmp_path / "gw.log").read_text()
                if tls_attempts(broker, tls_port) < 3:
                    return None
                status: dict[str, Any] = request(tmp_path / "data" / SOCKET_NAME, {"cmd": "status"})["status"]
                return status if status["broker"]["last_error"] else None

            status = wait_until(failed_thrice, 20, lambda: f"three failed attempts; {tls_attempts(broker, tls_port)} "
                                                  f"attempts:\n{broker.log()}")
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0
        log = (tmp_path / "gw.log").read_text()
        assert not status["broker"]["connected"]
        assert status["broker"]["last_error"].startswith("TLS: the broker's certificate was rejected: ")
        assert REASONS[case] in status["broker"]["last_error"]
        lines = [line for line in log.splitlines() if "certificate was rejected" in line]
        assert len(lines) == 1, f"logged {len(lines)} times:\n{log}"
        assert REASONS[case] in lines[0] and "readings are kept in the buffer" in lines[0]
        assert client_sessions(broker) == 0, "a CONNECT reached the broker"
        assert not [m for m in sub.messages if m.topic.startswith(f"city/{GW}/")]


async def test_a_plaintext_broker_is_never_talked_to_in_plaintext(
    pki: Pki, tmp_path: Path, brokers: list[Mosquitto], start_publisher: StartPublisher
) -> None:
    broker, _ = start_broker(tmp_path / "mq")  # no TLS listener at all
    brokers.append(broker)
    before = tls_attempts(broker, broker.port)
    pub = await start_publisher(mqtt(broker.port, tls=TlsSection(ca_file=pki.ca.cert)), buf := Buffer())
    await wait_until_async(lambda: tls_attempts(broker, broker.port) >= before + 4, 10, "three failed attempts")
    assert not pub.connected and pub.connects == 0 and not buf.acked
    assert client_sessions(broker) == 0 and "protocol error" in broker.log()


# -- client certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "reason"),
    [(None, "the broker requires a client certificate"), ("rogue", "the broker refused the handshake")],
)
async def test_mtls_without_a_trusted_client_certificate_is_refused(
    pki: Pki, tmp_path: Path, brokers: list[Mosquitto], start_publisher: StartPublisher,
    caplog: pytest.LogCaptureFixture, client: str | None, reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.publisher")
    broker, tls_port = start_broker(
        tmp_path / "mq", tls_listener(free_port(), pki.ca.cert, pki.server, require_certificate=True))
    brokers.append(broker)
    tls = TlsSection(ca_file=pki.ca.cert)
    if client == "rogue":
        tls = TlsSection(ca_file=pki.ca.cert, cert_file=pki.rogue_client.cert, key_file=pki.rogue_client.key)
    before = tls_attempts(broker, tls_port)
    pub = await start_publisher(mqtt(tls_port, tls=tls, publish_timeout=1.0), buf := Buffer())
    await wait_until_async(lambda: tls_attempts(broker, tls_port) >= before + 3, 15, "two refused attempts")
    assert not pub.connected and pub.connects == 0 and not buf.acked
    assert reason in (pub.last_error or "")
    assert len([r for r in caplog.records if reason in r.getMessage()]) == 1
    assert client_sessions(broker) == 0


# -- passwords ---------------------------------------------------------------------------------------


@pytest.fixture
def password_broker(pki: Pki, tmp_path: Path, brokers: list[Mosquitto]) -> int:
    """A broker that wants user "gw" with password SECRET, over TLS; returns the TLS port."""
    mosquitto_passwd = require_tool("mosquitto_passwd", "mosquitto")
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run([mosquitto_passwd, "-b", "-c", str(passwords), "gw", SECRET], check=True, capture_output=True)
    broker, tls_port = start_broker(tmp_path / "mq", tls_listener(free_port(), pki.ca.cert, pki.server),
                                    extra=f"allow_anonymous false\npassword_file {passwords}\n")
    brokers.append(broker)
    return tls_port


def password_config(tmp_path: Path, port: int, ca: Path, **mqtt_keys: Any) -> Path:
    config = base_config(tmp_path / "data", port)
    config["mqtt"].update({"username": "gw", "tls": {"ca_file": str(ca)}, **mqtt_keys})
    return write_config(tmp_path / "gateway.yaml", config)


@pytest.mark.parametrize("source", ["env", "file"])
async def test_password_login_from_env_or_file_and_never_in_clear(
    pki: Pki, tmp_path: Path, password_broker: int, start_publisher: StartPublisher, source: str
) -> None:
    if source == "env":
        path = password_config(tmp_path, password_broker, pki.ca.cert, password="${MQTT_PASSWORD}")
    else:
        (tmp_path / "mqtt-password").write_text(SECRET + "\n")
        path = password_config(tmp_path, password_broker, pki.ca.cert, password_file=str(tmp_path / "mqtt-password"))
    assert SECRET not in path.read_text()
    config = load_config(path, environ={"MQTT_PASSWORD": SECRET})
    async with LinkProxy("127.0.0.1", password_broker) as proxy:
        buf = Buffer()
        pub = await start_publisher(config.mqtt.model_copy(update={"port": proxy.port}), buf)
        await wait_until_async(lambda: buf.acked == {1, 2, 3}, 10, "every batch acknowledged")
        await pub.stop(timeout=2.0)
    assert proxy.sent[:1] == b"\x16", "the proxy did not see the TLS handshake: nothing was recorded"
    assert SECRET.encode() not in bytes(proxy.sent)


async def test_a_wrong_password_is_one_clear_line_and_buffering_goes_on(
    pki: Pki, tmp_path: Path, password_broker: int, brokers: list[Mosquitto], start_publisher: StartPublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.publisher")
    path = password_config(tmp_path, password_broker, pki.ca.cert, password="${MQTT_PASSWORD}")
    config = load_config(path, environ={"MQTT_PASSWORD": "not-" + SECRET})
    broker = brokers[-1]  # password_broker's
    before = tls_attempts(broker, password_broker)
    pub = await start_publisher(config.mqtt, buf := Buffer())
    await wait_until_async(lambda: tls_attempts(broker, password_broker) >= before + 5, 15, "several refused logins")
    assert not pub.connected and not buf.acked  # nothing taken from the buffer
    refusal = re.compile(r"not authori[sz]ed|bad user name or password", re.I)  # MQTT 3.1.1 return codes 5, 4
    assert refusal.search(pub.last_error or "")
    refused = [r.getMessage() for r in caplog.records if refusal.search(r.getMessage())]
    assert len(refused) == 1 and "readings are kept in the buffer" in refused[0]
    assert SECRET not in caplog.text


# -- secrets never shown -----------------------------------------------------------------------------


def test_check_never_prints_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", SECRET)
    config = base_config(tmp_path / "data", 8883)
    config["mqtt"].update({"username": "gw", "password": "${MQTT_PASSWORD}"})
    path = write_config(tmp_path / "gateway.yaml", config)
    done = run_cli("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    config["buffer"]["max_mb"] = -1  # and when the config is refused
    write_config(path, config)
    done = run_cli("check", "-c", str(path))
    assert done.returncode == 2 and "max_mb" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_run_and_status_never_show_the_password_and_warn_about_a_readable_config(
    pki: Pki, tmp_path: Path, password_broker: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", SECRET)
    path = password_config(tmp_path, password_broker, pki.ca.cert, password="${MQTT_PASSWORD}")
    path.chmod(0o644)
    log_path = tmp_path / "gw.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--log-level", "DEBUG", "run", "-c", str(path)],
                                stdout=log, stderr=log)
    try:
        def connected() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                status = request(tmp_path / "data" / SOCKET_NAME, {"cmd": "status"})["status"]
            except (ConnectionError, OSError):
                return False
            return bool(status["broker"]["connected"])

        wait_until(connected, 20, lambda: f"the connection:\n{log_path.read_text()}")
        shown = run_cli("status", "--json", "-c", str(path))
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout + shown.stderr
        assert SECRET not in run_cli("status", "-c", str(path)).stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    text = log_path.read_text()
    assert "DEBUG" in text and SECRET not in text
    warnings = [line for line in text.splitlines() if "readable by every user" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and "chmod 640" in warnings[0]


def test_no_warning_for_a_config_only_its_group_can_read(tmp_path: Path) -> None:
    config = base_config(tmp_path / "data", free_port())
    config["devices"] = [{"name": "sim-1", "driver": "simulated", "points": [{"name": "p"}]}]
    path = write_config(tmp_path / "gateway.yaml", config)
    path.chmod(0o640)
    with open(tmp_path / "gw.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(path)], stdout=log, stderr=log)
    try:
        def started() -> bool:
            assert proc.poll() is None, (tmp_path / "gw.log").read_text()
            return "started" in (tmp_path / "gw.log").read_text()

        wait_until(started, 20, lambda: f"the start:\n{(tmp_path / 'gw.log').read_text()}")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert "readable by every user" not in (tmp_path / "gw.log").read_text()

