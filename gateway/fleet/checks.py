"""The checks of a fleet request that need no running daemon: the body's shape, its gateway, its
time, and the pushed config itself (as ``gateway check`` would judge it, plus what a push may not
change). Each failure is a :class:`~gateway.fleet.envelope.Refused` with a reason a person reads.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.atomic import write_atomic
from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import Config
from gateway.fleet.envelope import Refused
from gateway.fleet.redact import has_mask, keep_current

MAX_AHEAD_MS = 3600 * 1000  # a request may not expire more than an hour ahead of our clock
MAX_ID = 128
SET_KEYS = frozenset({"gateway", "id", "version", "expect", "expires", "config"})
GET_KEYS = frozenset({"gateway", "id", "expires"})
SCRATCH = "fleet-push.yaml"  # where a pushed config is checked before anything changes


def request_id(body: dict[str, Any]) -> str:
    """The request's id; Refused (with no id) when it cannot be read."""
    id = body.get("id")
    if not isinstance(id, str) or not 0 < len(id) <= MAX_ID:
        raise Refused(f"the request needs an id: a string of 1 to {MAX_ID} characters")
    return id


def check_body(kind: str, body: dict[str, Any], id: str, *, gateway_id: str, synced: bool,
               now_ms: int | None = None) -> None:
    """Shape, gateway and time of a ``set`` or ``get`` body; Refused when wrong."""
    keys = SET_KEYS if kind == "set" else GET_KEYS
    unknown = sorted(set(body) - keys)
    if unknown:
        raise Refused(f"unknown key {', '.join(map(repr, unknown))} in a {kind} request", id)
    missing = sorted(keys - set(body))
    if missing:
        raise Refused(f"a {kind} request needs {', '.join(missing)}", id)
    if body["gateway"] != gateway_id:
        raise Refused(f"the request is for gateway {body['gateway']!r}, this is {gateway_id!r}", id)
    if not synced:
        raise Refused("this gateway's clock is not synchronized, so the request's expiry cannot be judged", id)
    expires = body["expires"]
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise Refused("expires must be a UTC time in epoch milliseconds", id)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if expires <= now:
        raise Refused(f"the request expired {(now - expires) / 1000:.0f} s ago", id)
    if expires > now + MAX_AHEAD_MS:
        raise Refused("the request expires more than an hour ahead of this gateway's clock", id)
    if kind == "set":
        version = body["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise Refused("version must be a whole number of at least 1", id)
        if not isinstance(body["expect"], str) or not isinstance(body["config"], str):
            raise Refused("expect and config must be text", id)


def pushed_config(text: str, id: str, running: Config, data_dir: Path) -> tuple[str, Config]:
    """The pushed file (``"***"`` filled in from the running config) and its validated Config.

    Refused when ``gateway check`` would reject it (its messages, naming the request, line and
    field), when it uses ``include:``, or changes ``fleet``, ``gateway`` or ``buffer``.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # load_config reports it, with its line
    if isinstance(data, dict) and data.get("include"):
        raise Refused("include: is not allowed in a pushed config (the pushed file lives in the data directory; "
                      "push the devices themselves)", id)
    new = _validate(text, id, data_dir)
    if isinstance(data, dict) and has_mask(data):
        missing = keep_current(data, yaml.safe_load(running.source) or {})
        if missing:
            raise Refused(f'"***" (keep the current value) at {", ".join(missing)}, but the running config '
                          "has no value there", id)
        text = yaml.safe_dump(data, sort_keys=False)
        new = _validate(text, id, data_dir)
    if new.fleet != running.fleet:
        raise Refused("a push cannot change the fleet section (only the local file can)", id)
    for section in ("gateway", "buffer"):
        if getattr(new, section) != getattr(running, section):
            raise Refused(f"the {section} section changed: that takes a restart, so it cannot be pushed", id)
    return text, new


def _validate(text: str, id: str, data_dir: Path) -> Config:
    scratch = data_dir / SCRATCH
    write_atomic(scratch, text.encode("utf-8"), mode=0o600)  # it may hold a password
    try:
        return load_config(scratch)
    except ConfigFileError as exc:
        raise Refused(str(exc).replace(str(scratch), f"push {id}"), id) from None
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
