"""The many scenario's floor: what the MQTT client alone costs per message on this machine.

With one message per device per commit, a small device's poll can never cost less than one QoS 1
publish and its PUBACK. ``run_floor`` measures that in a process of its own, with nothing of the
gateway around it: an aiomqtt client (the gateway's), telemetry handed straight to paho as the
gateway's publisher does (gateway.publish.inflight), at most ``inflight`` messages awaiting their
PUBACK (the gateway's ``mqtt.max_inflight``, default 20, kept by a semaphore; paho keeps no limit of
its own, as in the gateway), ``rate`` messages a second sent in one
burst on each whole second of the monotonic clock (as a commit releases them), each message of
``payload`` bytes on a device topic of its own. The figure is the child's CPU time per message
acked in the window.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from gateway.bench.run import LOOPBACK, BenchError, child_json, child_main, child_parser

FLOOR_INFLIGHT = 20  # the gateway's default mqtt.max_inflight
FLOOR_TOPICS = 1000  # distinct device topics the messages go to, in turn


def run_floor(port: int, rate: int, payload: int, *, host: str = LOOPBACK, inflight: int = FLOOR_INFLIGHT,
              warmup: float = 1.0, window: float = 5.0) -> dict[str, Any]:
    """Publish ``rate`` QoS 1 messages of ``payload`` bytes a second to the broker at ``host:port``
    from a child process; return its CPU per message over ``window`` after ``warmup``.

    The result: ``messages`` acked in the window, ``cpu_s`` and ``cpu_us_per_message``.
    BenchError when the child fails or the broker does not ack in time.
    """
    argv = [sys.executable, "-m", "gateway.bench.mqttfloor", "--host", host, "--port", str(port),
            "--rate", str(rate), "--payload", str(payload), "--inflight", str(inflight),
            "--warmup", str(warmup), "--window", str(window)]
    return child_json(argv, "mqtt floor", warmup + window + 30.0)


async def _floor(host: str, port: int, rate: int, payload: int, inflight: int,
                 warmup: float, window: float) -> dict[str, Any]:
    import aiomqtt  # the child's only import of it

    loop = asyncio.get_running_loop()
    body = bytes(range(256)) * (payload // 256 + 1)
    body = body[:payload]
    topics = [f"bench/floor/dev{i:04d}/telemetry" for i in range(FLOOR_TOPICS)]
    slots = asyncio.Semaphore(inflight)
    acked = 0

    def on_publish(client: object, userdata: object, mid: int, *rest: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()

    async with aiomqtt.Client(host, port, identifier="bench-floor", max_inflight_messages=0) as client:
        paho = client._client  # as gateway.publish.inflight does: no task or Event per message
        paho.on_publish = on_publish
        start = loop.time() + warmup
        end = start + window
        cpu0: float | None = None
        acked0 = sent = 0
        due = float(int(loop.time()) + 1)
        while due < end:
            woken = loop.create_future()
            loop.call_at(due, woken.set_result, None)
            await woken
            if cpu0 is None and due >= start:  # the window opens at a burst
                cpu0, acked0 = time.process_time(), acked
            for _ in range(rate):
                await slots.acquire()
                info = paho.publish(topics[sent % FLOOR_TOPICS], body, 1, False)
                if info.rc != 0:
                    raise BenchError(f"publish refused (rc {info.rc})")
                sent += 1
            due += 1.0
        async with asyncio.timeout(10.0):  # the last burst's PUBACKs
            while acked < sent:
                await asyncio.sleep(0.01)
        cpu = 0.0 if cpu0 is None else time.process_time() - cpu0
    messages = acked - acked0
    return {"messages": messages, "rate": rate, "payload_bytes": payload, "inflight": inflight, "cpu_s": cpu,
            "cpu_us_per_message": cpu / max(messages, 1) * 1e6}


def _floor_cli(argv: list[str]) -> int:
    ap = child_parser("python -m gateway.bench.mqttfloor",
                      "The many scenario's floor: QoS 1 publishes with no gateway; prints JSON.")
    ap.add_argument("--host", default=LOOPBACK)
    ap.add_argument("--rate", type=int, required=True, help="messages per second, sent once a second")
    ap.add_argument("--payload", type=int, default=100, help="bytes per message")
    ap.add_argument("--inflight", type=int, default=FLOOR_INFLIGHT)
    a = ap.parse_args(argv)
    return child_main(_floor(a.host, a.port, a.rate, a.payload, a.inflight, a.warmup, a.window))


if __name__ == "__main__":
    sys.exit(_floor_cli(sys.argv[1:]))
