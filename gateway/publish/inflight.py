"""Telemetry messages awaiting their PUBACK: a QoS 1 publish without a task, an Event or a timer per message.

``aiomqtt.Client.publish`` costs a task (the caller's), an ``asyncio.Event``, an ``asyncio.wait_for``
and a pass through its outgoing-call bookkeeping per message; with one message per device per
commit that was the larger part of a small device's poll. Here a telemetry message is handed to
paho at once and registered, by its packet id, in the place where aiomqtt looks up what to tell
when a PUBACK comes (its pending publishes: it calls ``set()`` on what it finds). The record's
``set()`` acks the message's rows there and then, in paho's read callback on the event loop.

What a session must still know, it still knows: a message without a PUBACK within ``timeout``
means a dead link (``watch`` raises LinkDead; one wake-up per ``timeout`` at most, for the oldest
message); a publish paho refuses (the link is gone) raises LinkDead at once; and a session that ends
drops its records with its client, so un-acked rows are sent again by the next one (SQLite stays
the source of truth, as before). PUBACKs come in the order of the publishes, per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt
import paho.mqtt.client as mqtt

from gateway.publish.mqttlink import LinkDead
from gateway.timers import sleep_until


class Sent:
    """One telemetry message awaiting its PUBACK; aiomqtt calls ``set()`` when the PUBACK comes."""

    __slots__ = ("at", "mid", "owner", "readings", "rows")

    def __init__(self, owner: InFlight, mid: int, rows: list[int], readings: int, at: float) -> None:
        self.owner, self.mid, self.rows, self.readings, self.at = owner, mid, rows, readings, at

    def set(self) -> None:
        """The PUBACK of this message came (called by aiomqtt's on_publish, on the event loop)."""
        self.owner.acked(self)


class InFlight:
    """The telemetry messages of one connection awaiting a PUBACK, oldest first.

    ``on_puback(sent)`` is called once per message when its PUBACK comes. The caller bounds how
    many are in flight (the session's window) before ``publish``.
    """

    def __init__(self, client: aiomqtt.Client, *, timeout: float, on_puback: Callable[[Sent], None]) -> None:
        self.timeout = timeout
        self.sent: dict[int, Sent] = {}  # by packet id, in publish order
        self._paho = client._client
        # aiomqtt 2.5: on PUBACK it pops the packet id from this dict and calls set() on the value.
        self._pending: dict[int, Sent] = client._pending_publishes  # type: ignore[assignment]
        self._on_puback = on_puback
        self._first = asyncio.Event()  # set while something is in flight
        self._empty = asyncio.Event()  # set while nothing is in flight (a fail-back waits for it)
        self._empty.set()
        self._loop = asyncio.get_running_loop()

    def publish(self, topic: str, payload: bytes, rows: list[int], readings: int) -> Sent:
        """Hand one QoS 1 message to paho; LinkDead if paho refuses it (no connection)."""
        info = self._paho.publish(topic, payload, 1, False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkDead(f"publish refused: {mqtt.error_string(info.rc)}")
        sent = Sent(self, info.mid, rows, readings, self._loop.time())
        self._pending[info.mid] = sent
        self.sent[info.mid] = sent
        self._empty.clear()
        if not self._first.is_set():
            self._first.set()
        return sent

    def acked(self, sent: Sent) -> None:
        """``sent`` got its PUBACK: forget it and tell ``on_puback``."""
        if self.sent.pop(sent.mid, None) is sent:
            self._on_puback(sent)
            if not self.sent:
                self._empty.set()

    async def drained(self) -> None:
        """Return once every message handed to paho has its PUBACK (the hand-over of a fail-back)."""
        await self._empty.wait()

    async def watch(self) -> None:
        """Raise LinkDead once the oldest message has waited ``timeout`` for its PUBACK (runs until then)."""
        while True:
            if not self.sent:
                self._first.clear()
                await self._first.wait()
                continue
            oldest = next(iter(self.sent.values()))
            await sleep_until(oldest.at + self.timeout)
            if self.sent.get(oldest.mid) is oldest:
                raise LinkDead(f"no PUBACK within {self.timeout:g} s")
