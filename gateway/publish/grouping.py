"""Group messages: the ready readings of up to ``mqtt.batch.devices`` devices in one message.

Off at the default of 1 (the session then never builds a Grouping). On, the session hands over
what it holds per device; what is ready goes out exactly as it would have alone -- a device's
batches cut at ``batch.max_readings``, held back for ``batch.linger`` until full -- but the parts
of several devices share one message on ``{topic_prefix}/{gateway.id}/telemetry``
(gateway.wire.group). A message takes parts in the order the devices came, until it has
``batch.devices`` devices, ``batch.max_readings`` readings or ``batch.max_bytes`` bytes (before
deflate): a device is in a message once, and its next part starts the next message, so per device
the messages still go out in seq order. One part over the limits goes alone (one poll is never
split). Poison is set aside per batch by gateway.publish.payloads, as for a device's own message.
"""

from __future__ import annotations

from gateway.config.settings import MqttSection
from gateway.model import StoredBatch
from gateway.publish.payloads import Part, Payloads
from gateway.wire.encoding import messages_of
from gateway.wire.group import encode_group, envelope_bytes

GroupMessage = tuple[list[StoredBatch], bytes]  # the batches a message carries (rows to ack) and its payload


def ready_parts(batches: list[StoredBatch], max_readings: int, due: bool
                ) -> tuple[list[list[StoredBatch]], list[StoredBatch]]:
    """A device's held batches cut into messages of ``max_readings``: those ready to go (all if
    ``due``, else only the full ones), and the batches to keep holding."""
    # one poll (the common case of a small device) is one message: no cutting to do
    groups = [batches] if len(batches) == 1 else [group for _, group in messages_of(batches, max_readings)]
    if not due and sum(len(b) for b in groups[-1]) < max_readings:
        return groups[:-1], groups[-1]
    return groups, []


class Grouping:
    """Turns the devices' ready batches into group messages (``mqtt.batch.devices`` > 1)."""

    def __init__(self, mqtt: MqttSection, gateway_id: str, payloads: Payloads) -> None:
        self.mqtt, self.gateway_id, self.payloads = mqtt, gateway_id, payloads
        self.topic = f"{mqtt.topic_prefix}/{gateway_id}/telemetry"  # 3 levels: never matches .../+/telemetry
        self._envelope = envelope_bytes(gateway_id, mqtt.encoding, 0)  # + 1 byte per part

    def take(self, held: dict[str, list[StoredBatch]], since: dict[str, float], now: float) -> list[GroupMessage]:
        """Take what is ready out of ``held`` (per device, oldest fetched at ``since[device]``; both
        updated: a device with nothing left is removed) and return it as group messages, in order."""
        batch = self.mqtt.batch
        ready: list[tuple[str, list[StoredBatch]]] = []
        for device in list(held):
            send, keep = ready_parts(held[device], batch.max_readings, now - since[device] >= batch.linger)
            ready += [(device, group) for group in send]
            if keep:
                held[device] = keep
            else:
                del held[device], since[device]
        return self.messages(ready)

    def messages(self, ready: list[tuple[str, list[StoredBatch]]]) -> list[GroupMessage]:
        """``ready`` (device, batches of one message) packed into group messages, in order."""
        m = self.mqtt
        out: list[GroupMessage] = []
        devices: set[str] = set()
        batches: list[StoredBatch] = []
        parts: list[bytes] = []
        readings = size = 0
        for device, group in ready:
            for part_batches, part in self._parts(device, group):
                n = sum(len(b) for b in part_batches)
                if parts and (device in devices or len(parts) >= m.batch.devices
                              or readings + n > m.batch.max_readings
                              or size + len(part) + self._envelope + len(parts) + 1 > m.batch.max_bytes):
                    out.append((batches, encode_group(self.gateway_id, parts, m.encoding, compress=m.compress)))
                    devices, batches, parts, readings, size = set(), [], [], 0, 0
                devices.add(device)
                batches += part_batches
                parts.append(part)
                readings += n
                size += len(part)
        if parts:
            out.append((batches, encode_group(self.gateway_id, parts, m.encoding, compress=m.compress)))
        return out

    def _parts(self, device: str, group: list[StoredBatch]) -> list[Part]:
        """``group`` as the device's entries: one, unless it holds poison or would make a message over
        ``batch.max_bytes`` with the envelope (then gateway.publish.payloads sets the poison aside and
        halves it, as for a device's own message)."""
        # An entry alone in a message takes the envelope and its slot in the array (1 byte) besides.
        return self.payloads.of(device, group, part=True, limit=self.mqtt.batch.max_bytes - self._envelope - 1)
