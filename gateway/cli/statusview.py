"""Renders the status document as a few lines a technician can read at the cabinet."""

from __future__ import annotations

import time
from typing import Any


def _ago(ts_ms: int | None, now_ms: int) -> str:
    if not ts_ms:
        return "never"
    seconds = max(0, (now_ms - ts_ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _connected(broker: dict[str, Any]) -> str:
    """``connected``, with the node in use and the moves when the broker is a cluster."""
    text = "connected" + (f" to {broker['server']}" if broker.get("server") else "")
    if len(broker.get("servers") or ()) > 1:
        text += f" (nodes: {', '.join(broker['servers'])}; {broker.get('failovers', 0)} failovers)"
    return text


def render(status: dict[str, Any]) -> str:
    """A short human summary of a status document."""
    now = int(time.time() * 1000)
    buf = status.get("buffer", {})
    broker = status.get("broker", {})
    uptime = _ago(status.get("started_ts"), now).replace(" ago", "")
    lines = [
        f"gateway {status.get('version')}  up {uptime}  config {status.get('config_hash')}"
        + ("" if status.get("clean_start", True) else "  (last run did not stop cleanly)"),
        "broker   " + (_connected(broker) if broker.get("connected")
                       else f"NOT connected ({broker.get('last_error')})"),
        f"buffer   {buf.get('state')}  pending {buf.get('pending')} readings, {buf.get('bytes')} bytes, "
        f"evicted {buf.get('evicted')}" + (f", quarantined {buf['quarantined']}" if buf.get("quarantined") else "")
        + (f"  ({buf['reason']})" if buf.get("reason") else ""),
    ]
    clock = status.get("clock") or {}
    if clock and not clock.get("synced", True):
        lines.append(f"clock    NOT synchronized (check: {clock.get('check')}): readings are held back until it is")
    config = status.get("config") or {}
    if config.get("source") == "fleet":
        version = config.get("fleet_version")
        lines.append(f"config   from the fleet: version {version}, hash {status.get('config_hash')}")
    elif config.get("source"):
        lines.append(f"config   from the local file {config.get('path')}, hash {status.get('config_hash')}")
    if config.get("fallback"):
        lines.append(f"config   FALLBACK: {config['fallback']}")
    if config.get("reload_error"):
        first = str(config["reload_error"]).splitlines()[0]
        lines.append(f"config   last reload refused: {first}")
    if config.get("restart_pending"):
        lines.append(f"config   changes to {', '.join(config['restart_pending'])} wait for a restart")
    commands = status.get("commands") or {}
    if commands.get("enabled"):
        lines.append(f"commands enabled, {'subscribed' if commands.get('subscribed') else 'NOT subscribed'}: "
                     f"{commands.get('ok', 0)} ok, {commands.get('refused', 0)} refused, "
                     f"{commands.get('failed', 0)} failed")
    devices = status.get("devices", {})
    width = max((len(name) for name in devices), default=6)
    for name, dev in sorted(devices.items()):
        line = (f"device   {name:<{width}}  {dev.get('state'):<8} last read {_ago(dev.get('last_read_ts'), now)}, "
                f"polls {dev.get('polls')}, errors {dev.get('errors')}, overruns {dev.get('overruns')}")
        if dev.get("last_error"):
            line += f"  last error: {dev['last_error']}"
        lines.append(line)
    return "\n".join(lines)
