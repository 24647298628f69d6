"""The MQTT publisher: connect, status and will, publish buffered batches with QoS 1, ack, reconnect.

One connection is a Session (gateway.publish.session); the Publisher makes one per attempt and
keeps what outlives it: the reconnect loop and its backoff, the broker's log lines, the counters,
and the move between the broker's nodes (``mqtt.servers``, gateway.publish.servers): a failed node
is left for the next at once, without backoff; only a round in which no node answered backs off.
After ``failover.fail_back_after`` on another node the primary is probed (TCP/TLS handshake only)
and, if it answers, the session hands over between two messages and the primary is next.

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
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import aiomqtt

from gateway.config.settings import MqttSection, ServerAddress
from gateway.model import StoredBatch
from gateway.publish import servers
from gateway.publish.clock import WallClock
from gateway.publish.fleetlink import FleetHandler
from gateway.publish.fleetlink import topics as fleet_topics
from gateway.publish.grouping import Grouping
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
from gateway.publish.outbox import Outbox
from gateway.publish.payloads import Payloads, json_payload
from gateway.publish.session import CommandHandler, Session, Signals
from gateway.publish.tls import tls_context

log = logging.getLogger(__name__)


OFFLINE: dict[str, Any] = {"schema": 1, "state": "offline"}
TEARDOWN_TIMEOUT = 1.0  # seconds a failed or cancelled session may spend saying goodbye
LOG_EVERY = 20  # while the broker stays away, one reminder line per this many failed attempts
STABLE_AFTER = 30.0  # seconds a connection must last to reset the failure count and the backoff
REFUSED_FACTOR = 4  # every node refused the login: back off this much longer (a wrong password must not hammer)


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
                 on_command: CommandHandler | None = None, clock: WallClock | None = None,
                 on_fleet: FleetHandler | None = None, outbox: Outbox | None = None) -> None:
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
        # Fleet requests (off when None): config/set and config/get; the outbox's messages go out on every session
        self.on_fleet, self.outbox = on_fleet, outbox
        self.fleet_topics = fleet_topics(mqtt.topic_prefix, gateway_id)
        self.status_acks = 0  # status messages the broker took (a fleet trial waits for one)
        self._session: Session | None = None  # the current or last connection
        self.messages_sent = self.readings_sent = self.connects = 0
        self.last_error: str | None = None
        self._buffer = buffer
        self._status = status
        self._connected = False
        self._signals = Signals()  # to the session: new rows, status due, stop
        self._run_task: asyncio.Task[None] | None = None
        self._failures = 0  # failed attempts since the last stable connection
        self._good_since: float | None = None  # loop time the current session's status got a PUBACK
        self._reported_up = False  # what the log last said about the broker
        self._logged_reason: str | None = None  # the failure last logged (repeats are only counted)
        self.servers = [str(node) for node in mqtt.nodes]  # as configured, for the status
        self._rotation = servers.Rotation(servers.node_order(mqtt.nodes, mqtt.failover.order, gateway_id))
        self._node: ServerAddress | None = None  # the node of the current (or last) attempt
        self._last_node: ServerAddress | None = None  # the node of the last session (CONNACK)
        self._left: tuple[ServerAddress, str] | None = None  # the node a session was lost on, and why
        self.failovers = 0  # moves to another node since start
        self.payloads = Payloads(mqtt, gateway_id, buffer)  # messages from batches: size, poison
        # several devices per message (mqtt.batch.devices > 1), else None: one device per message
        self.grouping = Grouping(mqtt, gateway_id, self.payloads) if mqtt.batch.devices > 1 else None

    @property
    def connected(self) -> bool:
        """True while a session with the broker is up (CONNACK received, not yet lost)."""
        return self._connected

    @property
    def server(self) -> str | None:
        """The node in use (``host:port``), None while not connected."""
        return str(self._node) if self._connected and self._node is not None else None

    @property
    def commands_subscribed(self) -> bool:
        """True while the current session is subscribed to remote commands."""
        session = self._session
        return self._connected and self.on_command is not None and session is not None and session.commands_on

    def status_changed(self) -> None:
        """Ask for the status to be republished soon (at most once per STATUS_MIN_GAP)."""
        self._signals.status_due.set()

    async def run(self) -> None:
        """Publish until cancelled or stopped: connect, drain the buffer, reconnect with backoff."""
        self._run_task = asyncio.current_task()
        self._buffer.on_commit = self._signals.wake.set
        try:
            while not self._signals.stop.is_set():
                if await self._round():
                    return  # the session ended because stop() asked for it
                await self._backoff(refused=self._rotation.all_refused())
                self._rotation.restart()
        finally:
            self._connected = False
            self._run_task = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye and end ``run()``: retained ``offline`` status (QoS 1), then a clean DISCONNECT.

        Without a connection ``run()`` is just cancelled. Returns in about ``timeout`` + 1 s at most.
        """
        self._signals.stop_deadline = asyncio.get_running_loop().time() + timeout
        self._signals.stop.set()
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        if self._connected:
            await asyncio.wait({task}, timeout=timeout)  # run() returns after the goodbye
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=TEARDOWN_TIMEOUT + 1.0)

    # -- the nodes -------------------------------------------------------------------------------

    async def _round(self) -> bool:
        """Try the nodes in turn until one serves; True once a session ended because stop() asked,
        False when every node failed this round (logged; the caller backs off)."""
        rotation = self._rotation
        while (node := rotation.next()) is not None:
            self._node = node
            try:
                await self._serve_node(node)
            except Exception as exc:
                if not is_link_error(exc):  # a bug or a buffer failure, not the network
                    rotation.failed(node, describe(exc))
                    self._note_failure(exc, describe(exc))
                    return False
                self._node_failed(node, exc)
                continue
            if self._signals.stop.is_set():
                return True
            self._left = (node, "left for the primary (fail-back)")  # the session handed over
            self._session_over()
            rotation.restart()
        reason = rotation.summary()
        self._note_failure(None, reason, refused=rotation.all_refused())
        self._left = None
        return False

    def _node_failed(self, node: ServerAddress, exc: Exception) -> None:
        """The attempt on ``node`` failed, or its session was lost: on to the next node, at once."""
        reason = describe(exc)
        if self.last_error is None:  # the first news; a round that fails says it all (_note_failure)
            self.last_error = reason
        if self._good_since is not None:  # a session was up on it
            self._left = (node, f"unreachable ({reason})")
        if self._session_over():
            self._rotation.restart(at=node)  # it served well: the other nodes get a fresh round
        self._rotation.failed(node, reason, refused=any(login_refused(e) for e in leaves(exc)))

    def _session_over(self) -> bool:
        """The session ended (or none came up); True if it had lasted STABLE_AFTER, which resets the
        failure count (and so the backoff)."""
        stable = self._good_since is not None and asyncio.get_running_loop().time() - self._good_since >= STABLE_AFTER
        if stable:
            self._failures, self._logged_reason = 0, None
        self._good_since = None
        return stable

    async def _serve_node(self, node: ServerAddress) -> None:
        """Connect to ``node`` (each of its addresses, resolved now, until one answers) and serve;
        return when stop() or a fail-back ended the session."""
        tls = await asyncio.to_thread(tls_context, self.mqtt.tls) if self.mqtt.tls else None
        try:
            async with asyncio.timeout(self.mqtt.publish_timeout):
                addresses = await servers.resolve(node.host, node.port)
        except (OSError, TimeoutError) as exc:
            raise LinkDead(f"cannot resolve {node.host}: {exc or 'no answer'}") from None
        if not addresses:
            raise LinkDead(f"{node.host} has no address")
        for i, address in enumerate(addresses):
            connects = self.connects
            try:
                await self._connect_and_serve(node, address, tls)
                return
            except Exception as exc:
                # Another address of the node only when this one did not answer at all.
                if self.connects != connects or i == len(addresses) - 1 or any(map(login_refused, leaves(exc))):
                    raise

    async def _fail_back(self, tls: ssl.SSLContext | None) -> None:
        """On a secondary: every ``fail_back_after``, probe the primary; once it answers, ask for the move."""
        primary = self._rotation.primary
        while True:
            await asyncio.sleep(self.mqtt.failover.fail_back_after)
            why = await servers.probe(primary, tls, self.mqtt.publish_timeout)
            if why is None:
                self._signals.move.set()
                return
            log.debug("fail-back: the primary %s does not answer yet: %s", primary, why)

    # -- one connection --------------------------------------------------------------------------

    async def _connect_and_serve(self, node: ServerAddress, address: str, tls: ssl.SSLContext | None) -> None:
        paho_log = PahoLog()
        client = self._new_client(tls, paho_log, node, address)
        entered = False
        fail_back: asyncio.Task[None] | None = None
        try:
            async with client:
                entered = self._connected = True
                self.connects += 1
                if self._last_node is not None and node != self._last_node:
                    self.failovers += 1  # counted with the CONNACK, as broker.server changes
                self._last_node = node
                try:
                    self._signals.move.clear()
                    if node != self._rotation.primary and self.mqtt.failover.fail_back_after > 0:
                        fail_back = asyncio.create_task(self._fail_back(tls), name="mqtt-fail-back")
                    self._session = Session(self, client, paho_log, buffer=self._buffer, signals=self._signals,
                                            on_up=self._connected_ok)
                    await self._session.serve()
                except BaseException as exc:
                    client.timeout = TEARDOWN_TIMEOUT  # bounds the DISCONNECT wait on a dead link
                    if isinstance(exc, Exception):  # the reason now, not after that wait: a status
                        self.last_error = describe(exc)  # never says "disconnected" without one
                    raise
                finally:
                    self._connected = False
                    if fail_back is not None:
                        fail_back.cancel()
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

    def _new_client(self, tls: ssl.SSLContext | None, paho_log: logging.Logger, node: ServerAddress,
                    address: str) -> aiomqtt.Client:
        m = self.mqtt
        client = GatewayClient(
            node.host, node.port, address=address,
            identifier=self.client_id,
            username=m.username,
            password=m.secret_password(),
            will=aiomqtt.Will(self.status_topic, json_payload(OFFLINE), qos=1, retain=True),
            clean_session=True,
            keepalive=max(1, round(m.keepalive)),
            timeout=m.publish_timeout,  # CONNACK and DISCONNECT waits
            # 0: paho keeps no limit of its own. Every QoS 1 publish already waits for a slot of the
            # session's window (mqtt.max_inflight), and with a limit paho walks all its messages in
            # flight on every PUBACK (_update_inflight): ~10 µs a message at 20 in flight.
            max_inflight_messages=0,
            tls_context=tls,
            socket_options=socket_options(m.publish_timeout),
            logger=paho_log,
        )
        client.pending_calls_threshold = m.max_inflight + 2
        return client

    def _connected_ok(self) -> None:
        """The broker took our first status: log it (or the move) if the last line said otherwise."""
        node, left = self._node, self._left
        if left is not None and left[0] != node:
            level = logging.INFO if left[1].startswith("left for the primary") else logging.WARNING
            log.log(level, "broker moved: %s %s, now on %s", left[0], left[1], node)
        elif left is not None and node != self._rotation.primary and self._rotation.failures:
            why = self._rotation.failures.get(self._rotation.primary, ("?", False))[0]
            log.info("broker: fail-back to the primary %s failed (%s); staying on %s", self._rotation.primary,
                     why, node)
        elif self._reported_up is not True:
            after = f" (after {self._failures} failed attempts)" if self._failures else ""
            log.info("broker connected %s%s", node, after)
        self._left = None
        self._reported_up = True
        self.status_acks += 1
        self._good_since = asyncio.get_running_loop().time()

    def _note_failure(self, exc: BaseException | None, reason: str, *, refused: bool = False) -> None:
        """Count a failed attempt and log what changed; a repeat is only counted (reminder lines).

        Only a connection that stayed up STABLE_AFTER seconds resets the count (and the backoff):
        a broker that accepts and drops us at once is retried ever more slowly, not in a loop.
        """
        self.last_error = reason
        self._session_over()
        self._failures += 1
        if reason == self._logged_reason and not self._reported_up:  # after "connected", a loss is news
            if self._failures % LOG_EVERY == 0:
                log.warning("broker still failing after %d attempts: %s", self._failures, reason)
            return
        nodes = ", ".join(self.servers)
        if exc is not None:  # a bug or a buffer failure, not the network: show where
            log.error("publisher failed: %s; retrying", reason, exc_info=exc)
        elif refused:  # a human must act: say what to check
            log.error("broker %s refused the login as %r (%s): check mqtt.username and the password;"
                      " readings are kept in the buffer, retrying", nodes, self.mqtt.username, reason)
        elif self._reported_up:
            log.warning("broker lost: %s; readings are kept in the buffer", reason)
        else:
            log.warning("broker %s unreachable: %s; readings are kept in the buffer", nodes, reason)
        self._reported_up, self._logged_reason = False, reason

    async def _backoff(self, *, refused: bool = False) -> None:
        """Sleep a capped, exponential, jittered delay (longer when every node refused the login);
        return early when stop() is called."""
        exponent = min(max(self._failures - 1, 0), 30)
        factor = REFUSED_FACTOR if refused else 1
        ceiling = min(self.backoff_max * factor, self.backoff_initial * factor * 2**exponent)
        delay = random.uniform(ceiling / 2, ceiling)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signals.stop.wait(), delay)

    def status_payload(self, state: str) -> bytes:
        """The status document as JSON: ``status()`` with schema and state filled in."""
        try:
            doc = {"schema": 1, "state": state, **self._status()}
        except Exception:
            log.exception("building the status document failed")
            doc = {"schema": 1, "state": state}
        if state == "offline":
            doc["state"] = state
        return json_payload(doc)
