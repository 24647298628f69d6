"""The MQTT session: connect, status and will, publish buffered batches with QoS 1, ack, reconnect.

SQLite is the only source of truth: each connection attempt uses a new aiomqtt (paho) client, so
paho never resends from its own memory queue, and starts again from the buffer's oldest un-acked
row, so per device nothing is skipped and seq order holds (after a failure a message may arrive
twice; the platform deduplicates on seq). aiomqtt 2.5 pitfalls handled (checked on a real broker):

* ``await client.publish(qos=1)`` does not notice a dropped link, it waits for its timeout: a task
  iterating ``client.messages`` in the session's task group raises at once and ends the session.
* A publish without PUBACK within ``publish_timeout`` means a dead (half-open) link: reconnect.
* A connect attempt without CONNACK leaves its socket open (see ``gateway.publish.mqttlink.abandon``); and aiomqtt warns
  per call above ``pending_calls_threshold`` (10) pending calls, raised to fit the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import aiomqtt

from gateway.config.settings import MqttSection
from gateway.model import StoredBatch
from gateway.publish.clock import WallClock
from gateway.publish.mqttlink import (
    GatewayClient,
    LinkDead,
    PahoLog,
    abandon,
    describe,
    is_link_error,
    leaves,
    login_refused,
    socket_options,
)
from gateway.publish.payloads import Payloads
from gateway.publish.tls import tls_context
from gateway.timers import SharedTimeout
from gateway.wire.encoding import messages_of

log = logging.getLogger(__name__)


OFFLINE: dict[str, Any] = {"schema": 1, "state": "offline"}
TEARDOWN_TIMEOUT = 1.0  # seconds a failed or cancelled session may spend saying goodbye
STATUS_MIN_GAP = 1.0  # status_changed() storms collapse into one publish per this many seconds
LOG_EVERY = 20  # while the broker stays away, one reminder line per this many failed attempts
# Seconds the drain may run before it lets the rest of the event loop in. Not after every message:
# messages queued in one go leave in one socket write (paho asks the loop to watch for
# writability once per burst, not per message), which at 10 messages a second halves their cost.
YIELD_EVERY = 0.002
HOLD_RECHECK = 1.0  # seconds between looks at the clock while readings are held back
STABLE_AFTER = 30.0  # seconds a connection must last to reset the failure count and the backoff
MAX_COMMANDS = 32  # remote commands in progress per session; beyond that one is dropped (logged)
# A remote command: (device, payload, retained) -> the result to publish (see gateway/publish/commands.py)
CommandHandler = Callable[[str, bytes, bool], Awaitable[dict[str, Any]]]


class BufferLike(Protocol):
    """What the publisher needs of gateway.buffer.queue.Buffer."""

    on_commit: Callable[[], None] | None

    async def fetch(self, after_row: int, max_readings: int) -> list[StoredBatch]: ...

    def ack(self, rows: Iterable[int]) -> None: ...

    def quarantine(self, rows: Mapping[int, str]) -> None: ...


class Publisher:
    """Forwards committed buffer batches to the broker and keeps the retained status topic current.

    ``run()`` owns the connection and reconnects until cancelled or ``stop()``-ped. Counters and
    ``connected`` are meant for the status document.
    """

    def __init__(self, mqtt: MqttSection, *, gateway_id: str, buffer: BufferLike,
                 status: Callable[[], dict[str, Any]], backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, status_period: float = 60.0,
                 on_command: CommandHandler | None = None, clock: WallClock | None = None) -> None:
        self.mqtt = mqtt
        self.clock = clock or WallClock("off")
        self.gateway_id = gateway_id
        self.client_id = mqtt.client_id or f"city-gateway-{gateway_id}"
        self.status_topic = f"{mqtt.topic_prefix}/{gateway_id}/status"
        # A device's readings go to telemetry_topic.format(device=NAME).
        self.telemetry_topic = f"{mqtt.topic_prefix}/{gateway_id}/{{device}}/telemetry"
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.status_period = status_period
        # Remote commands (off when None): subscribed to after connecting, results to .../cmd/result
        self.on_command = on_command
        self.command_topic = f"{mqtt.topic_prefix}/{gateway_id}/+/cmd"
        self._commands_session = 0  # the session (by self.connects) whose command subscription got a SUBACK
        self.messages_sent = self.readings_sent = self.connects = 0
        self.last_error: str | None = None
        self._buffer = buffer
        self._status = status
        self._connected = False
        self._wake = asyncio.Event()  # the buffer committed new rows
        self._status_due = asyncio.Event()  # a status change wants publishing
        self._stop_requested = asyncio.Event()
        self._stop_deadline = math.inf
        self._run_task: asyncio.Task[None] | None = None
        self._failures = 0  # failed attempts since the last stable connection
        self._good_since: float | None = None  # loop time the current session's status got a PUBACK
        self._reported_up = False  # what the log last said about the broker
        self._logged_reason: str | None = None  # the failure last logged (repeats are only counted)
        self.payloads = Payloads(mqtt, gateway_id, buffer)  # messages from batches: size, poison

    @property
    def connected(self) -> bool:
        """True while a session with the broker is up (CONNACK received, not yet lost)."""
        return self._connected

    @property
    def commands_subscribed(self) -> bool:
        """True while the current session is subscribed to remote commands."""
        return self._connected and self.on_command is not None and self._commands_session == self.connects

    @property
    def failed_attempts(self) -> int:
        """Connection attempts (or sessions) that failed since the last stable connection."""
        return self._failures

    def status_changed(self) -> None:
        """Ask for the status to be republished soon (at most once per STATUS_MIN_GAP)."""
        self._status_due.set()

    async def run(self) -> None:
        """Publish until cancelled or stopped: connect, drain the buffer, reconnect with backoff."""
        self._run_task = asyncio.current_task()
        self._buffer.on_commit = self._wake.set
        try:
            while not self._stop_requested.is_set():
                try:
                    await self._connect_and_serve()
                    return  # the session ended because stop() asked for it
                except Exception as exc:  # any failure: log, back off, retry
                    self._note_failure(exc)
                await self._backoff()
        finally:
            self._connected = False
            self._run_task = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye and end ``run()``: retained ``offline`` status (QoS 1), then a clean DISCONNECT.

        Without a connection ``run()`` is just cancelled. Returns in about ``timeout`` + 1 s at most.
        """
        self._stop_deadline = asyncio.get_running_loop().time() + timeout
        self._stop_requested.set()
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        if self._connected:
            await asyncio.wait({task}, timeout=timeout)  # run() returns after the goodbye
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=TEARDOWN_TIMEOUT + 1.0)

    # -- one connection --------------------------------------------------------------------------

    async def _connect_and_serve(self) -> None:
        tls = await asyncio.to_thread(tls_context, self.mqtt.tls) if self.mqtt.tls else None
        paho_log = PahoLog()
        client = self._new_client(tls, paho_log)
        entered = False
        try:
            async with client:
                entered = self._connected = True
                self.connects += 1
                try:
                    await _Session(self, client, paho_log).serve()
                except BaseException:
                    client.timeout = TEARDOWN_TIMEOUT  # bounds the DISCONNECT wait on a dead link
                    raise
                finally:
                    self._connected = False
        except aiomqtt.MqttError as exc:
            if entered:
                raise
            if paho_log.socket_error:  # the real reason (e.g. a TLS alert) beats the timeout it led to
                raise LinkDead(f"connection lost before CONNACK: {paho_log.socket_error}") from exc
            if str(exc) == "Operation timed out":  # aiomqtt's words for "no CONNACK in time"
                raise LinkDead(f"no CONNACK within {client.timeout:g} s") from exc
            raise
        finally:
            abandon(client)

    def _new_client(self, tls: ssl.SSLContext | None, paho_log: logging.Logger) -> aiomqtt.Client:
        m = self.mqtt
        client = GatewayClient(
            m.host, m.port,
            identifier=self.client_id,
            username=m.username,
            password=m.secret_password(),
            will=aiomqtt.Will(self.status_topic, _json(OFFLINE), qos=1, retain=True),
            clean_session=True,
            keepalive=max(1, round(m.keepalive)),
            timeout=m.publish_timeout,  # CONNACK and DISCONNECT waits
            max_inflight_messages=m.max_inflight,
            tls_context=tls,
            socket_options=socket_options(m.publish_timeout),
            logger=paho_log,
        )
        client.pending_calls_threshold = m.max_inflight + 2
        return client

    def _connected_ok(self) -> None:
        """The broker took our first status: log it if the last line said otherwise."""
        if self._reported_up is not True:
            after = f" (after {self._failures} failed attempts)" if self._failures else ""
            log.info("broker connected %s:%d%s", self.mqtt.host, self.mqtt.port, after)
        self._reported_up = True
        self._good_since = asyncio.get_running_loop().time()

    def _note_failure(self, exc: BaseException) -> None:
        """Count a failed attempt and log what changed; a repeat is only counted (reminder lines).

        Only a connection that stayed up STABLE_AFTER seconds resets the count (and the backoff):
        a broker that accepts and drops us at once is retried ever more slowly, not in a loop.
        """
        reason = self.last_error = describe(exc)
        if self._good_since is not None and asyncio.get_running_loop().time() - self._good_since >= STABLE_AFTER:
            self._failures, self._logged_reason = 0, None
        self._good_since = None
        self._failures += 1
        if reason == self._logged_reason and not self._reported_up:  # after "connected", a loss is news
            if self._failures % LOG_EVERY == 0:
                log.warning("broker still failing after %d attempts: %s", self._failures, reason)
            return
        if not is_link_error(exc):  # a bug or a buffer failure, not the network: show where
            log.error("publisher failed: %s; retrying", reason, exc_info=exc)
        elif any(login_refused(e) for e in leaves(exc)):  # a human must act: say what to check
            log.error("broker %s:%d refused the login as %r (%s): check mqtt.username and the password;"
                      " readings are kept in the buffer, retrying", self.mqtt.host, self.mqtt.port,
                      self.mqtt.username, reason)
        elif self._reported_up:
            log.warning("broker lost: %s; readings are kept in the buffer", reason)
        else:
            log.warning("broker %s:%d unreachable: %s; readings are kept in the buffer",
                        self.mqtt.host, self.mqtt.port, reason)
        self._reported_up, self._logged_reason = False, reason

    async def _backoff(self) -> None:
        """Sleep a capped, exponential, jittered delay; return early when stop() is called."""
        exponent = min(max(self._failures - 1, 0), 30)
        ceiling = min(self.backoff_max, self.backoff_initial * 2**exponent)
        delay = random.uniform(ceiling / 2, ceiling)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay)

    def status_payload(self, state: str) -> bytes:
        """The status document as JSON: ``status()`` with schema and state filled in."""
        try:
            doc = {"schema": 1, "state": state, **self._status()}
        except Exception:
            log.exception("building the status document failed")
            doc = {"schema": 1, "state": state}
        if state == "offline":
            doc["state"] = state
        return _json(doc)


class _Session:
    """One connection: status first, then drain the buffer with a bounded window in flight."""

    def __init__(self, pub: Publisher, client: aiomqtt.Client, paho_log: PahoLog) -> None:
        self.pub = pub
        self.client = client
        self.paho_log = paho_log
        self.window = asyncio.Semaphore(pub.mqtt.max_inflight)
        self._puback = SharedTimeout(pub.mqtt.publish_timeout)  # a PUBACK later than this: link dead
        self.tg = asyncio.TaskGroup()
        self.sends: set[asyncio.Task[None]] = set()
        self.commands: set[asyncio.Task[None]] = set()
        self.fetch_readings = max(4 * pub.mqtt.batch.max_readings, 1000)
        self._yielded = 0.0  # loop time the drain last let the rest of the loop in
        # max_rate: a token bucket of one second's readings or one message, full at the start
        self._burst = max(pub.mqtt.max_rate or 0.0, float(pub.mqtt.batch.max_readings))
        self._tokens, self._refilled = self._burst, asyncio.get_running_loop().time()

    async def serve(self) -> None:
        """Return after the goodbye when stop() asks; raise when the link fails."""
        try:
            await self._serve()
        finally:
            self._puback.close()

    async def _serve(self) -> None:
        pub = self.pub
        async with self.tg:
            watcher = self.tg.create_task(self._watch_link(), name="mqtt-link-watch")
            pub._status_due.clear()
            await self._publish(pub.status_topic, pub.status_payload("online"), retain=True)
            pub._connected_ok()
            if pub.on_command is not None:
                await self._subscribe_commands()
            loops = [self.tg.create_task(self._status_loop(), name="mqtt-status"),
                     self.tg.create_task(self._drain(), name="mqtt-drain")]
            await pub._stop_requested.wait()
            for task in loops:
                task.cancel()
            timeout = max(0.1, pub._stop_deadline - asyncio.get_running_loop().time())
            await self._publish(pub.status_topic, pub.status_payload("offline"), retain=True,
                                timeout=timeout)
            for task in (*self.sends, *self.commands, watcher):  # PUBACKs come in order: the sends are done
                task.cancel()

    async def _watch_link(self) -> None:
        """Fail the session the moment paho reports the link lost (publish() alone would not)."""
        try:
            async for message in self.client.messages:  # iterating is what surfaces the disconnect
                self._command(message)  # only remote commands are subscribed to
        except aiomqtt.MqttError as exc:
            rc = getattr(exc.__cause__, "rc", None)
            if self.paho_log.socket_error:
                raise LinkDead(f"connection lost: {self.paho_log.socket_error}") from exc
            if getattr(rc, "value", 128) != 128:  # 128 is "Unspecified error": says nothing
                raise LinkDead(f"connection lost: {rc}") from exc
            raise LinkDead("connection closed by the broker or the network") from exc

    async def _subscribe_commands(self) -> None:
        """Subscribe (QoS 1) to remote commands; a refusal (broker ACL) leaves them off, logged."""
        pub = self.pub
        try:
            async with asyncio.timeout(pub.mqtt.publish_timeout):
                granted = await self.client.subscribe(pub.command_topic, qos=1, timeout=math.inf)
        except TimeoutError:
            raise LinkDead(f"no SUBACK within {pub.mqtt.publish_timeout:g} s") from None
        code = granted[0] if granted else 128
        if getattr(code, "is_failure", False) or getattr(code, "value", code) == 128:
            log.error("the broker refused the subscription to %s (its ACL?): no remote commands on this connection",
                      pub.command_topic)
            return
        pub._commands_session = pub.connects
        log.debug("subscribed to remote commands on %s", pub.command_topic)

    def _command(self, message: aiomqtt.Message) -> None:
        """Answer a remote command in a task of its own: the link watch and the drain never wait for it."""
        pub = self.pub
        if pub.on_command is None or not message.topic.matches(pub.command_topic):
            return
        topic = message.topic.value
        if len(self.commands) >= MAX_COMMANDS:
            log.warning("command on %r dropped unanswered: %d commands in progress", topic, len(self.commands))
            return
        device = topic[len(pub.command_topic) - len("+/cmd"):-len("/cmd")]
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        task = self.tg.create_task(self._answer(device, payload, message.retain, f"{topic}/result"))
        self.commands.add(task)
        task.add_done_callback(self.commands.discard)

    async def _answer(self, device: str, payload: bytes, retained: bool, topic: str) -> None:
        assert self.pub.on_command is not None
        try:
            result = await self.pub.on_command(device, payload, retained)
        except Exception:  # a bug in the handler must not end the session
            log.exception("remote command for %r failed", device)
            return
        await self._publish(topic, _json(result))  # QoS 1, not retained

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False,
                       timeout: float | None = None, slot_taken: bool = False) -> None:
        """Publish QoS 1 in a slot of the in-flight window; LinkDead when no PUBACK in time."""
        limit = self.pub.mqtt.publish_timeout if timeout is None else timeout
        # The usual limit is one timer for every message in flight (gateway.timers), not one per message.
        guard = self._puback if timeout is None else asyncio.timeout(timeout)
        if not slot_taken:
            await self.window.acquire()
        try:
            async with guard:
                await self.client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf)
        except TimeoutError:
            raise LinkDead(f"no PUBACK within {limit:g} s") from None
        finally:
            self.window.release()

    async def _status_loop(self) -> None:
        pub = self.pub
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pub._status_due.wait(), pub.status_period)
            pub._status_due.clear()
            await self._publish(pub.status_topic, pub.status_payload("online"), retain=True)
            await asyncio.sleep(STATUS_MIN_GAP)

    async def _drain(self) -> None:
        """Send every committed row after the cursor, in row order; then wait for the next commit.

        A device's fetched batches are held until they fill a message (``batch.max_readings``)
        or the oldest has waited ``batch.linger``; with linger 0 everything fetched goes at once.
        """
        pub = self.pub
        linger = pub.mqtt.batch.linger
        loop = asyncio.get_running_loop()
        cursor = 0  # a new connection resends whatever is still un-acked
        held: dict[str, list[StoredBatch]] = {}  # fetched, not yet sent, per device
        since: dict[str, float] = {}  # loop time the device's oldest held batch was fetched
        self._yielded = loop.time()
        while True:
            pub._wake.clear()
            fetched = await pub._buffer.fetch(cursor, self.fetch_readings)
            batches = pub.clock.release(fetched)  # readings of an unsynced clock wait for it
            now = loop.time()
            for batch in batches:
                held.setdefault(batch.device, []).append(batch)
                since.setdefault(batch.device, now)
            if batches:
                cursor = batches[-1].row
            for device in list(held):
                keep = await self._send_ready(device, held[device], now - since[device] >= linger)
                if keep:
                    held[device] = keep
                else:
                    del held[device], since[device]
            if batches:
                continue  # more may be committed already
            timeout = min((since[d] + linger - loop.time() for d in held), default=None)
            if fetched and (timeout is None or timeout > HOLD_RECHECK):  # held back by the clock
                timeout = HOLD_RECHECK
            if timeout is None:
                await pub._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pub._wake.wait(), max(timeout, 0.0))

    async def _send_ready(self, device: str, batches: list[StoredBatch], due: bool) -> list[StoredBatch]:
        """Send the full messages of ``batches`` (all of them if ``due``); return what is left."""
        limit = self.pub.mqtt.batch.max_readings
        groups = [group for _, group in messages_of(batches, limit)]
        if not due and sum(len(b) for b in groups[-1]) < limit:
            groups, keep = groups[:-1], groups[-1]
        else:
            keep = []
        loop = asyncio.get_running_loop()
        for group in groups:
            for part, payload in self.pub.payloads.of(device, group):
                await self._pace(sum(len(b) for b in part))
                # Take the window slot here, so the tasks start (and call paho) in creation order.
                await self.window.acquire()
                task = self.tg.create_task(self._send(device, part, payload))
                self.sends.add(task)
                task.add_done_callback(self.sends.discard)
                if loop.time() - self._yielded >= YIELD_EVERY:  # a long backlog must not starve the polls
                    await asyncio.sleep(0)
                    self._yielded = loop.time()
        return keep

    async def _pace(self, readings: int) -> None:
        """Keep to ``mqtt.max_rate`` readings per second (a token bucket of one second or one message)."""
        rate = self.pub.mqtt.max_rate
        if rate is None:
            return
        loop = asyncio.get_running_loop()
        burst = self._burst
        now = loop.time()
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < readings:
            await asyncio.sleep((min(readings, burst) - self._tokens) / rate)
            self._tokens, self._refilled = min(readings, burst), loop.time()
        self._tokens -= readings

    async def _send(self, device: str, group: list[StoredBatch], payload: bytes) -> None:
        """Publish one telemetry message (window slot already taken); ack its rows on PUBACK."""
        await self._publish(self.pub.telemetry_topic.format(device=device), payload, slot_taken=True)
        self.pub._buffer.ack([b.row for b in group])
        self.pub.messages_sent += 1
        self.pub.readings_sent += sum(len(b.values) for b in group)


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
