"""One MQTT session of the publisher: status first, the link watch, remote commands, the drain.

gateway.publish.publisher makes a Session per connection (a new client each time) and owns what
outlives it: the reconnects, the counters, the Signals. A Session publishes the retained status,
fails the moment paho reports the link lost, answers remote commands in tasks of their own, and
sends every committed row after its cursor with a bounded window of PUBACKs in flight (held back
per device for ``batch.linger``, paced to ``max_rate``); a PUBACK acks the rows it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from gateway.model import StoredBatch
from gateway.publish import fleetlink
from gateway.publish.grouping import ready_parts
from gateway.publish.inflight import InFlight, Sent
from gateway.publish.mqttlink import LinkDead, PahoLog, pingresp_overdue
from gateway.publish.payloads import json_payload
from gateway.timers import SharedTimeout, sleep_until

if TYPE_CHECKING:
    from gateway.publish.publisher import BufferLike, Publisher

log = logging.getLogger("gateway.publish.publisher")  # the publisher's decisions, under its name

STATUS_MIN_GAP = 1.0  # status_changed() storms collapse into one publish per this many seconds
# Seconds the drain may run before it lets the rest of the event loop in. Not after every message:
# messages queued in one go leave in one socket write (paho asks the loop to watch for
# writability once per burst, not per message), which at 10 messages a second halves their cost.
YIELD_EVERY = 0.002
HOLD_RECHECK = 1.0  # seconds between looks at the clock while readings are held back
MAX_COMMANDS = 32  # remote commands in progress per session; beyond that one is dropped (logged)
# A remote command: (device, payload, retained) -> the result to publish (see gateway/publish/commands.py)
CommandHandler = Callable[[str, bytes, bool], Awaitable[dict[str, Any]]]


def _is_refusal(code: Any) -> bool:
    """A SUBACK code that refuses (MQTT 5 reason codes from 0x80; 3.1.1's one failure code is 0x80)."""
    return bool(getattr(code, "is_failure", False)) or getattr(code, "value", code) == 128


@dataclass(slots=True)
class Signals:
    """What the publisher tells its session of the moment (and the buffer tells both)."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the buffer committed new rows
    status_due: asyncio.Event = field(default_factory=asyncio.Event)  # a status change wants publishing
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # stop(): say goodbye and end
    move: asyncio.Event = field(default_factory=asyncio.Event)  # fail-back: hand over between two messages
    stop_deadline: float = math.inf  # loop time the goodbye must be done by


class Session:
    """One connection: status first, then drain the buffer with a bounded window in flight.

    ``pub`` lends its settings, topics, payloads and counters; ``signals`` and ``buffer`` are the
    publisher's; ``on_up`` is called once the broker took the first status.
    """

    def __init__(self, pub: Publisher, client: aiomqtt.Client, paho_log: PahoLog, *, buffer: BufferLike,
                 signals: Signals, on_up: Callable[[], None]) -> None:
        self.pub = pub
        self.client = client
        self.paho_log = paho_log
        self.buffer = buffer
        self.signals = signals
        self.on_up = on_up
        self.commands_on = False  # subscribed to remote commands (the broker sent a SUBACK)
        # Subscriptions the broker refused on this connection (topic -> what it is for, its QoS), tried
        # again once per status_period: an ACL fixed later, or a refusal that was the broker's
        # trouble (NATS refuses a QoS 1 subscription whose JetStream consumer it could not make in
        # time, as after a node's death), must not leave commands or fleet requests off until the
        # next reconnect, which may be weeks away.
        self._refused: dict[str, tuple[str, int]] = {}
        self._retry_at = 0.0  # loop time of the next try of the refused ones (set at a first refusal)
        self.window = asyncio.Semaphore(pub.mqtt.max_inflight)
        self._puback = SharedTimeout(pub.mqtt.publish_timeout)  # a PUBACK later than this: link dead
        self.tg = asyncio.TaskGroup()
        # Telemetry awaiting PUBACK: no task per message (gateway.publish.inflight)
        self.inflight = InFlight(client, timeout=pub.mqtt.publish_timeout, on_puback=self._acked)
        self._topics: dict[str, str] = {}  # device -> its telemetry topic
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
            pings = self.tg.create_task(self._watch_pings(), name="mqtt-ping-watch")
            pubacks = self.tg.create_task(self.inflight.watch(), name="mqtt-puback-watch")
            self.signals.status_due.clear()
            await self._publish(pub.status_topic, pub.status_payload("online"), retain=True)
            self.on_up()
            # Not awaited: the drain need not wait for this SUBACK (a lost one still ends the session).
            # QoS 0: on a clean session QoS 1 adds nothing here (a read-back lost is healed by the next
            # periodic status), while a broker may need far more for it: NATS makes a JetStream consumer
            # per QoS 1 subscription, and after a node's death that can hold the SUBACK (and the
            # connection's PUBACKs behind it) for longer than publish_timeout, node after node.
            status_watch = self.tg.create_task(self.subscribe(
                pub.status_topic, "watch of our own status (a late will is not answered)", qos=0,
                level=logging.WARNING))
            if pub.on_command is not None:
                await self.subscribe(pub.command_topic, "remote commands")
            if pub.on_fleet is not None:
                await fleetlink.subscribe(self)
            loops = [self.tg.create_task(self._status_loop(), name="mqtt-status"),
                     self.tg.create_task(self._drain(), name="mqtt-drain")]
            if pub.outbox is not None:  # fleet results and state
                loops.append(self.tg.create_task(fleetlink.send_outbox(self), name="mqtt-outbox"))
            await self._stop_or_move()
            for task in loops:
                task.cancel()
            if self.signals.stop.is_set():
                timeout = max(0.1, self.signals.stop_deadline - asyncio.get_running_loop().time())
                await self._publish(pub.status_topic, pub.status_payload("offline"), retain=True,
                                    timeout=timeout)
            elif self.inflight.sent:  # a move: nothing new is sent; the PUBACKs of what is out, up to publish_timeout
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pub.mqtt.publish_timeout):
                        await self.inflight.drained()
            for task in (*self.commands, watcher, pings, pubacks, status_watch):  # PUBACKs in order: sends done
                task.cancel()

    async def _stop_or_move(self) -> None:
        """Return once stop() asks for the goodbye, or a fail-back for the hand-over."""
        waits = [asyncio.ensure_future(self.signals.stop.wait()), asyncio.ensure_future(self.signals.move.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _watch_link(self) -> None:
        """Fail the session the moment paho reports the link lost (publish() alone would not)."""
        try:
            async for message in self.client.messages:  # iterating is what surfaces the disconnect
                if message.topic.value == self.pub.status_topic:
                    self._status_read_back(message)
                else:
                    self._command(message)
        except aiomqtt.MqttError as exc:
            rc = getattr(exc.__cause__, "rc", None)
            if self.paho_log.socket_error:
                raise LinkDead(f"connection lost: {self.paho_log.socket_error}") from exc
            if getattr(rc, "value", 128) != 128:  # 128 is "Unspecified error": says nothing
                raise LinkDead(f"connection lost: {rc}") from exc
            raise LinkDead("connection closed by the broker or the network") from exc

    async def _watch_pings(self) -> None:
        """LinkDead when a PINGRESP is half a keepalive late: with the PINGREQ sent a keepalive after
        the broker's last word, a frozen node is left within 1.5 keepalives (on whole seconds)."""
        keepalive = max(1, round(self.pub.mqtt.keepalive))
        loop = asyncio.get_running_loop()
        while True:
            await sleep_until(math.floor(loop.time()) + 1.0)
            waited = pingresp_overdue(self.client, keepalive / 2)
            if waited is not None:
                raise LinkDead(f"no PINGRESP within {waited:.0f} s, keepalive {keepalive} s")

    async def subscribe(self, topic: str, what: str, *, qos: int = 1, level: int = logging.ERROR) -> bool:
        """Subscribe to ``topic`` (QoS 1 unless said); False when the broker refused (its ACL), logged at
        ``level`` once on this connection, and tried again with the periodic status."""
        granted = await self._subscribe([(topic, qos)])
        if _is_refusal(granted[0] if granted else 128):
            if not self._refused:  # the first refusal sets the retry; a later one does not push it back
                self._retry_at = asyncio.get_running_loop().time() + self.pub.status_period
            self._refused[topic] = (what, qos)
            log.log(level, "the broker refused the subscription to %s (its ACL?): no %s until it is granted "
                    "(tried again with the periodic status)", topic, what)
            return False
        log.debug("subscribed to %s on %s", what, topic)
        self._granted(topic)
        return True

    def _granted(self, topic: str) -> None:
        if topic == self.pub.command_topic:
            self.commands_on = True
            self.pub.status_changed()  # commands.subscribed in the status (the first one went out before)

    async def _subscribe(self, topics: list[tuple[str, int]]) -> list[Any]:
        """One SUBSCRIBE for ``topics``; their SUBACK's codes, in order."""
        pub = self.pub
        try:
            async with asyncio.timeout(pub.mqtt.publish_timeout):
                return list(await self.client.subscribe(topics, timeout=math.inf))
        except TimeoutError:
            raise LinkDead(f"no SUBACK within {pub.mqtt.publish_timeout:g} s") from None

    async def _retry_refused(self) -> None:
        """Subscribe again, in one SUBSCRIBE, to what the broker refused on this connection, at most
        once per status_period (a broker that holds SUBACKs holds this connection's PUBACKs behind
        them: one request, not one per topic). A refusal again is not logged again."""
        loop, pub = asyncio.get_running_loop(), self.pub
        if not self._refused or loop.time() < self._retry_at:
            return
        self._retry_at = loop.time() + pub.status_period
        tried = list(self._refused.items())
        granted = await self._subscribe([(topic, qos) for topic, (_, qos) in tried])
        for (topic, (what, _)), code in zip(tried, granted, strict=False):
            if _is_refusal(code):
                continue
            del self._refused[topic]
            log.info("subscribed to %s on %s: the broker granted it on a later try", what, topic)
            self._granted(topic)

    def _status_read_back(self, message: aiomqtt.Message) -> None:
        """Our status topic says ``offline`` while we are connected (a will of a node we left, landed
        after our ``online``): publish ``online`` again. Our own goodbye comes back too, after stop()."""
        if self.signals.stop.is_set() or not isinstance(message.payload, bytes | bytearray):
            return
        try:
            state = json.loads(message.payload).get("state")
        except (ValueError, AttributeError):
            return
        if state == "offline":
            log.info("our status read back as offline (an old will): publishing online again")
            self.signals.status_due.set()

    def _command(self, message: aiomqtt.Message) -> None:
        """Answer a remote command in a task of its own: the link watch and the drain never wait for it."""
        pub = self.pub
        if fleetlink.take(self, message):
            return
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
        await self._publish(topic, json_payload(result))  # QoS 1, not retained

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False,
                       timeout: float | None = None) -> None:
        """Publish QoS 1 in a slot of the in-flight window; LinkDead when no PUBACK in time."""
        limit = self.pub.mqtt.publish_timeout if timeout is None else timeout
        # The usual limit is one timer for every message in flight (gateway.timers), not one per message.
        guard = self._puback if timeout is None else asyncio.timeout(timeout)
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
                await asyncio.wait_for(self.signals.status_due.wait(), pub.status_period)
            self.signals.status_due.clear()
            await self._publish(pub.status_topic, pub.status_payload("online"), retain=True)
            pub.status_acks += 1
            await self._retry_refused()
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
            self.signals.wake.clear()
            fetched = await self.buffer.fetch(cursor, self.fetch_readings)
            batches = pub.clock.release(fetched)  # readings of an unsynced clock wait for it
            now = loop.time()
            for batch in batches:
                held.setdefault(batch.device, []).append(batch)
                since.setdefault(batch.device, now)
            if batches:
                cursor = batches[-1].row
            if pub.grouping is not None:  # mqtt.batch.devices > 1: several devices per message
                await self._send_grouped(held, since, now)
            else:
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
                await self.signals.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.signals.wake.wait(), max(timeout, 0.0))

    async def _send_ready(self, device: str, batches: list[StoredBatch], due: bool) -> list[StoredBatch]:
        """Send the full messages of ``batches`` (all of them if ``due``); return what is left."""
        groups, keep = ready_parts(batches, self.pub.mqtt.batch.max_readings, due)
        loop = asyncio.get_running_loop()
        paced = self.pub.mqtt.max_rate is not None
        for group in groups:
            for part, payload in self.pub.payloads.of(device, group):
                if paced:
                    await self._pace(sum(len(b) for b in part))
                await self.window.acquire()  # released by the PUBACK (_acked)
                self._send(device, part, payload)
                if loop.time() - self._yielded >= YIELD_EVERY:  # a long backlog must not starve the polls
                    await asyncio.sleep(0)
                    self._yielded = loop.time()
        return keep

    async def _send_grouped(self, held: dict[str, list[StoredBatch]], since: dict[str, float], now: float) -> None:
        """Send what is ready in ``held`` as group messages (gateway.publish.grouping); the rest stays held."""
        assert self.pub.grouping is not None
        topic = self.pub.grouping.topic
        loop = asyncio.get_running_loop()
        for group, payload in self.pub.grouping.take(held, since, now):
            await self._pace(sum(len(b) for b in group))
            await self.window.acquire()  # released by the PUBACK (_acked)
            self._send("", group, payload, topic=topic)
            if loop.time() - self._yielded >= YIELD_EVERY:
                await asyncio.sleep(0)
                self._yielded = loop.time()

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

    def _send(self, device: str, group: list[StoredBatch], payload: bytes, topic: str | None = None) -> None:
        """Publish one telemetry message (window slot already taken); ``_acked`` acks its rows on PUBACK.

        ``topic`` defaults to the device's telemetry topic.
        """
        topic = topic or self._topics.get(device)
        if topic is None:
            topic = self._topics[device] = self.pub.telemetry_topic.format(device=device)
        try:
            self.inflight.publish(topic, payload, [b.row for b in group], sum(len(b.values) for b in group))
        except BaseException:
            self.window.release()
            raise

    def _acked(self, sent: Sent) -> None:
        """The PUBACK of a telemetry message: its rows leave the buffer, its slot of the window is free."""
        self.window.release()
        self.buffer.ack(sent.rows)
        self.pub.messages_sent += 1
        self.pub.readings_sent += sent.readings
