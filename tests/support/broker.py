"""A real Mosquitto for tests, a subscriber that collects what arrives, and a link-cutting proxy.

Usable from plain and from asyncio tests: ``Mosquitto`` and ``Subscriber`` are thread based
(``Subscriber.wait_for`` blocks, ``Subscriber.wait_for_async`` does the same without blocking the
event loop); ``LinkProxy`` runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.publish.publisher import Publisher
from gateway.wire.encoding import decode_telemetry, split_devices
from tests.support.ports import free_port
from tests.support.wait import wait_until

LOOPBACK = "127.0.0.1"


def wait_port(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once ``host:port`` accepts a TCP connection; AssertionError after ``timeout``."""
    def listening() -> bool:
        if not alive():
            raise AssertionError(f"the server for {host}:{port} exited before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, timeout, f"something listening on {host}:{port}", every=0.02)


class Mosquitto:
    """One Mosquitto process on a free loopback port, with its config and log under ``workdir``.

    ``stop()`` / ``start()`` restart it on the same port (sessions of durable subscribers and
    retained messages survive: persistence is on, saved at stop). ``pause()`` / ``resume()`` freeze
    it with SIGSTOP / SIGCONT: a broker that keeps TCP connections open but answers nothing.
    """

    host = LOOPBACK

    def __init__(self, workdir: Path, *, port: int | None = None, extra_config: str = "",
                 host: str = LOOPBACK) -> None:
        exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.executable = exe
        self.workdir = workdir
        self.host = host  # another loopback address (127.0.0.2) for a second node behind one name
        self.port = port or free_port()
        self.extra_config = extra_config
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def config_text(self) -> str:
        """The config file: anonymous, no queue limit (QoS 1 is never dropped), persistence on."""
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "max_queued_messages 0",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",  # the default log types: error, warning, notice, information
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # as root it would drop to user mosquitto, who can't read workdir
        return "\n".join(lines) + "\n" + self.extra_config

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "mosquitto is not started"
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start (or restart) on ``self.port``; returns once the port accepts connections."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.executable, "-c", str(conf)], stdout=log, stderr=log)
        self.paused = False
        try:
            wait_port(self.host, self.port, timeout, alive=lambda: self.running)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- mosquitto log ---\n{self.log()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate and wait (SIGKILL if it does not exit within ``timeout``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a broker crash (nothing is saved)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a half-open link, as seen by us)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Received:
    """One message as the subscriber got it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int

    @cached_property
    def doc(self) -> dict[str, Any]:
        """The payload decoded (JSON or CBOR), once."""
        return decode_telemetry(self.payload)

    def decoded(self) -> dict[str, Any]:
        """The payload as a dict (JSON or CBOR); same as ``doc``."""
        return self.doc


class Subscriber:
    """A paho client on its own thread that subscribes (QoS 1) to ``topics`` and keeps every message.

    The session is durable (clean_session False, persisted by the broker), so messages published
    while it reconnects after a broker restart still reach it. Use as a context manager or call
    ``start()`` / ``close()``.
    """

    def __init__(self, host: str, port: int, topics: str | Sequence[str] = "#") -> None:
        self.host = host
        self.port = port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self._received: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:12]}",
                                   clean_session=False)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and return once the broker acknowledged the subscription."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise AssertionError(f"subscriber got no SUBACK from {self.host}:{self.port} in {timeout} s")
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self._received.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        """A snapshot of everything received so far, in arrival order."""
        with self._cond:
            return list(self._received)

    def wait_for(self, predicate: Callable[[list[Received]], Any], timeout: float = 10.0) -> list[Received]:
        """Block until ``predicate(messages)`` is true; returns the messages. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._received)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout} s; "
                                         f"{len(self._received)} messages received")
                self._cond.wait(left)
            return list(self._received)

    async def wait_for_async(self, predicate: Callable[[list[Received]], Any],
                             timeout: float = 10.0) -> list[Received]:
        """``wait_for`` for asyncio tests: waits on a thread, the event loop keeps running."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)


# -- telemetry helpers ------------------------------------------------------------------------------


def telemetry(messages: Iterable[Received]) -> list[dict[str, Any]]:
    """The decoded telemetry messages (topics ending in /telemetry), in arrival order; a group message
    (mqtt.batch.devices > 1) counts as the one-device messages it carries."""
    return [doc for m in messages if m.topic.endswith("/telemetry") for doc in split_devices(m.doc)]


def seqs_by_device(messages: Iterable[Received]) -> dict[str, list[int]]:
    """Per device, every seq in arrival order (duplicates kept)."""
    out: dict[str, list[int]] = {}
    for doc in telemetry(messages):
        out.setdefault(doc["device"], []).extend(r["seq"] for r in doc["readings"])
    return out


def first_arrivals(seqs: Iterable[int]) -> list[int]:
    """``seqs`` with repeats removed, keeping the first arrival of each."""
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]


def has_all(expected: dict[str, int]) -> Callable[[list[Received]], bool]:
    """A predicate: every device of ``expected`` has its seqs 1..N (N = expected[device]) in."""
    def check(messages: list[Received]) -> bool:
        got = seqs_by_device(messages)
        return all(set(range(1, n + 1)) <= set(got.get(dev, ())) for dev, n in expected.items())
    return check


def assert_in_order(received: Iterable[Received], expected: dict[str, int], *, exact: bool) -> None:
    """Per device, seqs 1..N (N = expected[device]) all arrived with first arrivals in order;
    with ``exact``, each exactly once (a clean run has no duplicates)."""
    got = seqs_by_device(received)
    for device, n in expected.items():
        seqs = got.get(device, [])
        assert first_arrivals(seqs)[:n] == list(range(1, n + 1)), f"{device}: gap or out of order"
        if exact:
            assert seqs == list(range(1, n + 1)), f"{device}: duplicates in a clean run"


def status_seen(topic: str, state: str) -> Callable[[list[Received]], bool]:
    """A predicate: a status document with ``state`` arrived on ``topic``."""
    return lambda messages: any(doc.get("state") == state for doc, _ in status_docs(messages, topic))


def status_docs(messages: Iterable[Received], topic: str) -> list[tuple[dict[str, Any], bool]]:
    """(status document, retain flag) for each message on the status ``topic``."""
    return [(m.doc, m.retain) for m in messages if m.topic == topic]


def retained(host: str, port: int, topic: str, timeout: float = 5.0) -> dict[str, Any]:
    """The retained message of ``topic`` as a new subscriber sees it."""
    with Subscriber(host, port, topic) as sub:
        msgs = sub.wait_for(lambda ms: any(m.retain for m in ms), timeout)
        return next(m for m in msgs if m.retain).doc


# -- a proxy that can cut the link -----------------------------------------------------------------


class LinkProxy:
    """A TCP proxy on the test's event loop between the code under test and the broker.

    ``cut()`` aborts every connection at once (no MQTT DISCONNECT: the broker sends the will);
    after ``await refuse()`` connections are refused (nothing listens) until ``await listen()``
    opens the same port again. ``sent`` keeps every byte the clients sent towards the broker.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = LOOPBACK
        self.port = 0
        self.accepted = 0
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LinkProxy:
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.refuse()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def listen(self) -> None:
        """Accept connections (on a free port the first time, then on the same one)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones are left alone."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        """Abort every open connection, both sides."""
        for down, up in list(self._links):
            down.transport.abort()
            up.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [asyncio.create_task(_pump(reader, up_writer, self.sent)),
                 asyncio.create_task(_pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None = None) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
            await writer.drain()


TEST_GATEWAY_ID = "gw-test"  # the gateway id of publishers started by the start_publisher fixture

StartPublisher = Callable[..., Awaitable[Publisher]]
"""The ``start_publisher`` fixture: ``await start_publisher(mqtt, buffer, **kw)`` -> a running Publisher."""
