"""The fleet's side of a publisher session: subscribe to ``config/set`` and ``config/get``, hand
requests to the daemon's fleet, and send the outbox (results, the retained state).

Kept apart from gateway.publish.session so that a session without fleet is unchanged; the
requests themselves are judged in gateway.fleet (imported by the daemon, never here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiomqtt

if TYPE_CHECKING:
    from gateway.publish.session import Session

log = logging.getLogger("gateway.publish.publisher")

KINDS = ("set", "get")
# A fleet request: (kind "set" or "get", payload, retained); answers go through the outbox.
FleetHandler = Callable[[str, bytes, bool], Awaitable[None]]


def topics(prefix: str, gateway_id: str) -> dict[str, str]:
    """Request topic -> kind."""
    return {f"{prefix}/{gateway_id}/config/{kind}": kind for kind in KINDS}


async def subscribe(session: Session) -> None:
    """Subscribe (QoS 1) to the fleet's request topics; a refusal (broker ACL) is logged."""
    for topic in session.pub.fleet_topics:
        await session.subscribe(topic, "fleet requests")


def take(session: Session, message: aiomqtt.Message) -> bool:
    """Start answering ``message`` if it is a fleet request (True), in a task of the session."""
    pub = session.pub
    kind = pub.fleet_topics.get(message.topic.value) if pub.on_fleet is not None else None
    if kind is None:
        return False
    raw = message.payload
    payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
    handler = pub.on_fleet
    assert handler is not None
    session.tg.create_task(_handle(handler, kind, payload, message.retain), name=f"fleet-{kind}")
    return True


async def _handle(handler: FleetHandler, kind: str, payload: bytes, retained: bool) -> None:
    try:
        await handler(kind, payload, retained)
    except Exception:  # a bug in the handler must not end the session
        log.exception("fleet %s request failed", kind)


async def send_outbox(session: Session) -> None:
    """Publish what the outbox holds, in order, and wait for more (a task of the session)."""
    pub = session.pub
    outbox = pub.outbox
    assert outbox is not None
    base = f"{pub.mqtt.topic_prefix}/{pub.gateway_id}/"
    while True:
        outbox.ready.clear()
        for message in outbox.pending():
            await session._publish(base + message.topic, message.payload, retain=message.retain)
            outbox.sent(message)
        if not outbox.pending():
            await outbox.ready.wait()
