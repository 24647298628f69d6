"""The status document (schema 1) of a running daemon: one place that lists every field the README's
status schema defines, read from the daemon's parts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.daemon.buildinfo import build_info

if TYPE_CHECKING:
    from gateway.daemon.daemon import Daemon
    from gateway.poll.device import DeviceTask


def status_document(daemon: Daemon) -> dict[str, Any]:
    """The status document, as published on the retained status topic."""
    stats = daemon.buffer.stats()
    return {
        "schema": 1,
        "state": "online",
        "version": __version__,
        "build": build_info(),
        "ts": int(time.time() * 1000),
        "started_ts": daemon.started_ts,
        "clean_start": daemon.clean_start,
        "config_hash": daemon.config.hash,
        "clock": {"synced": daemon.clock.synced(), "check": daemon.clock.check},
        "config": {
            "path": str(daemon.config.path),
            "fallback": daemon.config.fallback,
            "reload_error": daemon.reload_error,
            "restart_pending": daemon.restart_pending,
            "source": daemon.fleet.source if daemon.fleet is not None else "local",
            "fleet_version": daemon.fleet.version if daemon.fleet is not None else None,
        },
        "buffer": {
            "state": stats.state,
            "reason": stats.reason,
            "pending": stats.pending,
            "evicted": stats.evicted,
            "bytes": stats.bytes,
            "recovered_corrupt": stats.recovered_corrupt,
            "quarantined": stats.quarantined,
        },
        "broker": {
            "connected": daemon.publisher.connected,
            "last_error": daemon.publisher.last_error,
            "messages_sent": daemon.publisher.messages_sent,
            "readings_sent": daemon.publisher.readings_sent,
            "connects": daemon.publisher.connects,
            "server": daemon.publisher.server,
            "failovers": daemon.publisher.failovers,
            "servers": daemon.publisher.servers,
        },
        "devices": _devices(daemon),
        "commands": {
            "enabled": daemon.config.commands.enabled,
            "subscribed": daemon.publisher.commands_subscribed,
            **daemon.commands.counters,
        },
    }


def _devices(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {name: _entry(daemon, name, task) for name, task in daemon.scheduler.tasks.items()}


def device_entry(daemon: Daemon, name: str) -> dict[str, Any] | None:
    """One polled device's entry of the document's ``devices`` (None: no such device), on its own:
    what the technician's page shows of a device once a second, without the whole document."""
    task = daemon.scheduler.tasks.get(name)
    return None if task is None else _entry(daemon, name, task)


def _entry(daemon: Daemon, name: str, task: DeviceTask) -> dict[str, Any]:
    entry: dict[str, Any] = task.health.as_dict()
    entry["seq"] = daemon.buffer.next_seq(name) - 1  # the last number given to a committed reading
    counters = getattr(task.driver, "counters", None)
    if counters:
        entry["counters"] = dict(counters)
    return entry
