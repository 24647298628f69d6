"""`gateway demo`: a local broker, simulated devices, and the readings printed as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from gateway.bench.broker import free_port, start_broker, wait_port

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


async def _print_readings(port: int) -> None:
    import aiomqtt

    from gateway.wire.encoding import decode_telemetry

    async with aiomqtt.Client("127.0.0.1", port, identifier="gateway-demo-viewer") as client:
        await client.subscribe("city/#", qos=1)
        async for message in client.messages:
            topic = str(message.topic)
            if topic.endswith("/status"):
                print(f"[status] {message.payload.decode()[:200]}", flush=True)
                continue
            doc = decode_telemetry(bytes(message.payload))
            for r in doc["readings"]:
                value = r["value"] if "error" not in r else f"ERROR {r['error']}"
                unit = f" {r['unit']}" if r.get("unit") else ""
                print(f"{doc['device']:>8} seq {r['seq']:>5}  {r['point']:<6} = {value}{unit}", flush=True)


async def _demo(config_path: Path, port: int, duration: float | None) -> int:
    from gateway.config.load import load_config
    from gateway.daemon.daemon import Daemon

    config = load_config(config_path)
    daemon = Daemon(config)
    viewer = asyncio.create_task(_print_readings(port))
    run = asyncio.create_task(daemon.run())
    if duration is not None:
        asyncio.get_running_loop().call_later(duration, daemon.request_stop)
    status = await run
    viewer.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await viewer
    return status


def run_demo(config: str | None, duration: float | None) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds). Returns the exit status."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        workdir = Path(tmp)
        os.environ["DEMO_PORT"] = str(port)
        os.environ["DEMO_DATA_DIR"] = str(workdir / "data")
        try:
            broker = start_broker(workdir, port)
        except RuntimeError as exc:
            print(f"gateway demo: {exc}", file=sys.stderr)
            return 1
        try:
            asyncio.run(wait_port(port, broker))
            print(f"demo: broker on 127.0.0.1:{port}, readings below (Ctrl-C to stop)", flush=True)
            return asyncio.run(_demo(Path(config) if config else DEFAULT_DEMO_CONFIG, port, duration))
        finally:
            broker.terminate()
            broker.wait(timeout=10)
