"""The subscriber of `gateway bench`: counts what reaches the broker's other side, by seq.

A paho client on its own loop thread subscribes (QoS 1) to the telemetry of one gateway and, per
device, keeps a bitmap of the seqs received, so the bench can tell readings delivered from
readings lost or duplicated. It also sums payload and MQTT framing bytes, and keeps a histogram of
arrival time minus reading time (1 ms buckets) for the latency percentiles.

Arrival here is the moment the broker's copy reaches this subscriber; the broker forwards a message
to subscribers and acknowledges it to the gateway (PUBACK) at about the same time, so this is the
gateway's read-to-PUBACK latency give or take a millisecond or so on loopback.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.wire.encoding import decode_telemetry, split_devices

PUBACK_BYTES = 4  # fixed header, remaining length, packet id


def mqtt_overhead(topic: str, payload_len: int) -> int:
    """Bytes of MQTT 3.1.1 framing around one QoS 1 PUBLISH of ``payload_len`` bytes, plus its PUBACK.

    Fixed header (1 byte + 1..4 bytes of remaining length), topic (2 + its UTF-8 length), packet id
    (2). TCP/IP headers are not counted.
    """
    remaining = 2 + len(topic.encode()) + 2 + payload_len
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining - payload_len + PUBACK_BYTES


@dataclass(frozen=True, slots=True)
class SubSnapshot:
    """The subscriber's running totals at one moment."""

    t: float  # time.monotonic()
    distinct: int  # readings received at least once (first arrivals)
    readings: int  # readings received, duplicates included
    messages: int
    payload_bytes: int
    overhead_bytes: int


class _Device:
    """What arrived for one device: ``seen[seq]`` is 1 once that seq arrived."""

    __slots__ = ("duplicates", "seen")

    def __init__(self) -> None:
        self.seen = bytearray(1024)
        self.duplicates = 0

    def mark(self, seqs: list[int]) -> int:
        """Record ``seqs``; return how many were new."""
        first, n = seqs[0], len(seqs)
        end = first + n
        if end > len(self.seen):
            self.seen.extend(bytes(max(end - len(self.seen), len(self.seen))))
        if seqs[-1] == end - 1 and first >= 0 and seqs == list(range(first, end)):
            dup = self.seen.count(1, first, end)  # a message carries runs of seqs: one slice op
            self.seen[first:end] = b"\x01" * n
            new = n - dup
        else:
            dup = new = 0
            for seq in seqs:
                if seq < 0:
                    continue  # no reading has such a seq; it shows up as one not delivered
                if seq >= len(self.seen):
                    self.seen.extend(bytes(seq + 1 - len(self.seen)))
                if self.seen[seq]:
                    dup += 1
                else:
                    self.seen[seq] = 1
                    new += 1
        self.duplicates += dup
        return new

    def have(self, first: int, last: int) -> int:
        """How many of the seqs ``first`` .. ``last`` arrived."""
        return self.seen.count(1, first, last + 1) if last >= first else 0

    def beyond(self, last: int) -> int:
        """How many seqs above ``last`` (or below 1) arrived: readings nobody produced."""
        return self.seen.count(1, last + 1) + self.seen.count(1, 0, 1)


class BenchSubscriber:
    """Subscribes to ``<prefix>/<gateway>/+/telemetry``, the group topic ``<prefix>/<gateway>/telemetry``
    (``mqtt.batch.devices``) and the status topic; counts by seq, a group message per device in it.

    ``start()`` connects (retrying while nothing listens, up to ``timeout``) and returns once the
    subscription is acknowledged; ``close()`` disconnects. Counters are safe to read from any thread.
    """

    def __init__(self, host: str, port: int, topic_prefix: str, gateway_id: str, *,
                 also: tuple[tuple[str, int], ...] = ()) -> None:
        self.host, self.port = host, port
        # ``also``: more brokers to subscribe on, counted as one (the failover scenario's independent
        # Mosquittos: each reading reaches only the broker it was published to).
        self.endpoints = [(host, port), *also]
        self.telemetry_topic = f"{topic_prefix}/{gateway_id}/+/telemetry"
        self.group_topic = f"{topic_prefix}/{gateway_id}/telemetry"  # several devices per message
        self.status_topic = f"{topic_prefix}/{gateway_id}/status"
        self.first_arrival: float | None = None  # monotonic time of the first telemetry message
        self.status_was_retained: bool | None = None  # the first status seen was older than our SUBACK
        self.errors: list[str] = []  # payloads that could not be decoded
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._latency: Counter[int] = Counter()
        self._distinct = self._readings = self._messages = self._payload = self._overhead = 0
        self._clients = [self._new_client() for _ in self.endpoints]
        self._started = False

    def _new_client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:10]}",
                             clean_session=True, userdata=threading.Event())  # set on SUBACK
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self, timeout: float = 10.0) -> BenchSubscriber:
        """Connect (retrying every 5 ms while the port refuses) and wait for the SUBACK."""
        deadline = time.monotonic() + timeout
        for client, (host, port) in zip(self._clients, self.endpoints, strict=True):
            while True:
                try:
                    client.connect(host, port, keepalive=30)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise ConnectionError(f"subscriber: no broker at {host}:{port}: {exc}") from exc
                    time.sleep(0.005)
            client.loop_start()
            self._started = True
        for client, (host, port) in zip(self._clients, self.endpoints, strict=True):
            if not client.user_data_get().wait(max(0.1, deadline - time.monotonic())):
                raise ConnectionError(f"subscriber: no SUBACK from {host}:{port}")
        return self

    def close(self) -> None:
        """Disconnect and stop the loop thread."""
        if self._started:
            for client in self._clients:
                client.disconnect()
                client.loop_stop()
            self._started = False

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(self.telemetry_topic, 1), (self.group_topic, 1), (self.status_topic, 1)])

    def _on_subscribe(self, client: paho.Client, userdata: threading.Event, mid: int, reasons: Any,
                      props: Any) -> None:
        userdata.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now_ms = time.time() * 1000.0
        if msg.topic == self.status_topic:
            if self.status_was_retained is None:
                self.status_was_retained = bool(msg.retain)
            return
        payload = msg.payload
        try:
            docs = split_devices(decode_telemetry(payload))
            devices = [(doc["device"], [r["seq"] for r in doc["readings"]]) for doc in docs]
            stamps = Counter([r["ts"] for doc in docs for r in doc["readings"]])
        except (ValueError, KeyError, TypeError) as exc:
            self.errors.append(f"{msg.topic}: {exc}")
            return
        readings = sum(len(seqs) for _, seqs in devices)
        if not readings:
            return
        with self._lock:
            if self.first_arrival is None:
                self.first_arrival = time.monotonic()
            for device, seqs in devices:
                if not seqs:
                    continue
                tally = self._devices.get(device)
                if tally is None:
                    tally = self._devices[device] = _Device()
                self._distinct += tally.mark(seqs)
            self._readings += readings
            self._messages += 1
            self._payload += len(payload)
            self._overhead += mqtt_overhead(msg.topic, len(payload))
            latency = self._latency
            for ts, n in stamps.items():
                latency[max(0, int(now_ms - ts))] += n

    def snapshot(self) -> SubSnapshot:
        """The running totals now."""
        with self._lock:
            return SubSnapshot(time.monotonic(), self._distinct, self._readings, self._messages,
                               self._payload, self._overhead)

    def reset_latency(self) -> None:
        """Forget the latencies so far (call at the start of a measurement window)."""
        with self._lock:
            self._latency = Counter()

    def latency_ms(self, quantiles: tuple[float, ...] = (0.5, 0.99)) -> dict[str, float | None]:
        """Arrival minus reading time, in ms, at ``quantiles`` (keys ``p50``, ``p99``) and ``max``."""
        with self._lock:
            hist = sorted(self._latency.items())
        total = sum(n for _, n in hist)
        out: dict[str, float | None] = {}
        for q in quantiles:
            out[f"p{q * 100:g}"] = _quantile(hist, total, q)
        out["max"] = float(hist[-1][0]) if hist else None
        return out

    def received(self, device: str, last: int) -> int:
        """How many of ``device``'s seqs 1 .. ``last`` arrived."""
        with self._lock:
            tally = self._devices.get(device)
            return tally.have(1, last) if tally else 0

    def tally(self, produced: dict[str, int]) -> dict[str, int]:
        """Against ``produced`` (device -> last seq): delivered, missing, duplicates, extra."""
        with self._lock:
            delivered = extra = 0
            for device, last in produced.items():
                tally = self._devices.get(device)
                delivered += tally.have(1, last) if tally else 0
                extra += tally.beyond(last) if tally else 0
            extra += sum(t.have(0, len(t.seen)) for d, t in self._devices.items() if d not in produced)
            duplicates = sum(t.duplicates for t in self._devices.values())
        return {"produced": sum(produced.values()), "delivered": delivered,
                "missing": sum(produced.values()) - delivered, "duplicates": duplicates, "extra": extra}


def _quantile(hist: list[tuple[int, int]], total: int, q: float) -> float | None:
    """The ``q`` quantile of a sorted (value, count) histogram; None when empty."""
    if total == 0:
        return None
    rank = q * (total - 1)
    seen = 0
    for value, n in hist:
        seen += n
        if seen > rank:
            return float(value)
    return float(hist[-1][0])
