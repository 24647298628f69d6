"""Messages the daemon wants sent on the broker link it has at the moment, e.g. fleet results.

An entry stays until a session got its PUBACK, so a result or state put while the broker is away
(or while a pushed broker setting is tried) goes out once a session is up, on whichever broker the
config in force names. Topics are relative to ``{topic_prefix}/{gateway.id}/``. An entry put
again under its key before it was sent replaces it (a retained state: only the newest matters).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    key: str
    topic: str  # relative to {topic_prefix}/{gateway.id}/
    payload: bytes
    retain: bool


class Outbox:
    """Pending messages in the order they were put, newest per key."""

    def __init__(self) -> None:
        self._pending: dict[str, Message] = {}
        self.ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, key: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._pending.pop(key, None)  # a replaced entry moves to the end: order of puts holds
        self._pending[key] = Message(key, topic, payload, retain)
        self.ready.set()
        self._empty.clear()

    def pending(self) -> list[Message]:
        return list(self._pending.values())

    def sent(self, message: Message) -> None:
        """``message`` got its PUBACK: drop it, unless it was replaced meanwhile."""
        if self._pending.get(message.key) is message:
            del self._pending[message.key]
        if not self._pending:
            self._empty.set()

    async def wait_sent(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything put so far was sent; True if it was."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True
