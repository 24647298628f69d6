"""A device's batches as telemetry payloads: within ``batch.max_bytes``, and without poison.

A poison batch is stored in the buffer but cannot be encoded for the wire (a value JSON cannot
carry, say). Sending it would fail the same way after every reconnect and stall everything behind
it, so it is found and set aside (``Buffer.quarantine``): when a message of several batches fails
to encode, each batch is tried alone; only those that fail alone are poison, the rest goes on in
order and the platform sees a seq gap where the poison was.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.config.settings import MqttSection
from gateway.model import StoredBatch
from gateway.wire.encoding import encode_telemetry
from gateway.wire.group import encode_part

log = logging.getLogger("gateway.publish.publisher")  # the publisher's decisions, under its name

Encode = Callable[[Sequence[StoredBatch]], bytes]
Part = tuple[list[StoredBatch], bytes]  # the batches of one message and its payload
Poison = tuple[StoredBatch, str]  # a batch that cannot be encoded, and why


class Quarantine(Protocol):
    def quarantine(self, rows: Mapping[int, str]) -> None: ...


class Payloads:
    """Encodes a device's message for ``mqtt`` (its encoding, compression and ``batch.max_bytes``).

    Lives as long as the publisher, so each warning is said once per device, not per connection.
    """

    def __init__(self, mqtt: MqttSection, gateway_id: str, buffer: Quarantine) -> None:
        self.mqtt, self.gateway_id, self.buffer = mqtt, gateway_id, buffer
        self._oversize_logged: set[str] = set()  # devices whose poll was over batch.max_bytes
        self._poison_logged: set[str] = set()  # devices whose batch could not be encoded

    def of(self, device: str, group: list[StoredBatch], *, part: bool = False, limit: int | None = None) -> list[Part]:
        """``group`` encoded, poison set aside, halved by batches until each message fits ``batch.max_bytes``.

        With ``part``, each is the device's entry of a group message (gateway.wire.group), not deflated,
        and ``limit`` (bytes) is what an entry may take: ``batch.max_bytes`` less the group's envelope.
        """
        m = self.mqtt
        try:  # the common case first (no poison), without the partial and the lists of the general one
            payload = (encode_part(device, group, m.encoding) if part
                       else encode_telemetry(self.gateway_id, device, group, fmt=m.encoding, compress=m.compress))
        except Exception:  # poison somewhere: encode_parts below finds it
            pass
        else:
            return self._fit(device, group, payload, part, limit)
        encode: Encode = (functools.partial(encode_part, device, fmt=m.encoding) if part else functools.partial(
            encode_telemetry, self.gateway_id, device, fmt=m.encoding, compress=m.compress))
        parts, poison = encode_parts(encode, group)
        if poison:
            self._set_aside(device, poison)
        return [fitted for batches, payload in parts for fitted in self._fit(device, batches, payload, part, limit)]

    def _fit(self, device: str, group: list[StoredBatch], payload: bytes, part: bool, limit: int | None) -> list[Part]:
        limit = self.mqtt.batch.max_bytes if limit is None else limit
        if len(payload) <= limit:
            return [(group, payload)]
        if len(group) == 1:  # one poll is never split: it goes alone, said once per device
            if device not in self._oversize_logged:
                self._oversize_logged.add(device)
                room = "" if limit == self.mqtt.batch.max_bytes else ", less a group message's envelope"
                log.warning("one poll of device %s encodes to %d bytes, over mqtt.batch.max_bytes (%d%s):"
                            " sent as one message (logged once per device)", device, len(payload), limit, room)
            return [(group, payload)]
        half = len(group) // 2
        return (self.of(device, group[:half], part=part, limit=limit)
                + self.of(device, group[half:], part=part, limit=limit))

    def _set_aside(self, device: str, poison: list[Poison]) -> None:
        """Keep batches that cannot be encoded out of the stream for good; said once per device."""
        self.buffer.quarantine({batch.row: why for batch, why in poison})
        first = device not in self._poison_logged
        self._poison_logged.add(device)
        ranges = ", ".join(f"{b.seq0}-{b.seq0 + len(b) - 1}" if len(b) > 1 else str(b.seq0) for b, _ in poison)
        log.log(logging.ERROR if first else logging.DEBUG,
                "device %s: seq %s (%d readings) cannot be encoded for the wire (%s): set aside in the"
                " buffer's quarantine table, not sent (logged once per device; counted in buffer.quarantined)",
                device, ranges, sum(len(b) for b, _ in poison), poison[0][1])


def encode_parts(encode: Encode, group: list[StoredBatch]) -> tuple[list[Part], list[Poison]]:
    """``group`` as one encoded message, or, if that fails, its encodable batches (in order) and the
    poison ones with the reason each failed. Any exception counts (a bug in an encoder too): a batch
    that cannot be encoded now will not be later, and waiting on it would stall the rest."""
    try:
        return [(group, encode(group))], []
    except Exception:
        pass
    good: list[Part] = []
    poison: list[Poison] = []
    for batch in group:
        try:
            good.append(([batch], encode([batch])))
        except Exception as exc:
            poison.append((batch, f"{type(exc).__name__}: {exc}"))
    rest = [part[0][0] for part in good]
    if len(rest) > 1:
        try:
            return [(rest, encode(rest))], poison
        except Exception:  # each encodes alone but not together: they go one by one
            pass
    return good, poison


def json_payload(doc: dict[str, Any]) -> bytes:
    """A JSON document (status, will, a command's result) as a compact payload."""
    return json.dumps(doc, separators=(",", ":"), default=str).encode()
