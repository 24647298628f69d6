"""`gateway demo`: a local broker, simulated devices, and the readings printed as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with status {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a private Mosquitto on 127.0.0.1:port (its config in workdir)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise RuntimeError("mosquitto is not installed: sudo apt-get install mosquitto")
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 0"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    return subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _print_readings(port: int) -> None:
    import aiomqtt

    from gateway.encoding import decode_telemetry

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
    from gateway.config import load_config
    from gateway.daemon import Daemon

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
    port = _free_port()
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
            asyncio.run(_wait_port(port, broker))
            print(f"demo: broker on 127.0.0.1:{port}, readings below (Ctrl-C to stop)", flush=True)
            return asyncio.run(_demo(Path(config) if config else DEFAULT_DEMO_CONFIG, port, duration))
        finally:
            broker.terminate()
            broker.wait(timeout=10)
