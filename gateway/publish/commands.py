"""Remote commands from the platform: write a point of a device, on request over MQTT.

Off unless ``commands.enabled: true``. The publisher's session then subscribes (QoS 1) to
``{topic_prefix}/{gateway.id}/+/cmd`` and hands every message to :meth:`Commands.handle`, which
returns the result the publisher sends (QoS 1, not retained) to ``.../{device}/cmd/result``::

    {"id": "c-17", "point": "setpoint", "value": 21.5}
    -> {"id": "c-17", "ok": true, "point": "setpoint", "written": "holding 10 <- 00D7 (FC6)", "readback": 21.5}
    -> {"id": "c-17", "ok": false, "refused": true, "error": "4 is below the minimum 5 of point 'setpoint'"}
    -> {"id": "c-17", "ok": false, "refused": false, "error": "no response from unit 1 ..."}
    -> (a repeated id: the first result again, with "duplicate": true)

The write itself is the one ``gateway write`` uses through a running daemon
(:func:`gateway.daemon.tools.run_tool_command`): on the daemon's own driver and connection, under
the device's bus lock, refused before anything is sent when the point is unknown, not
``writable`` or the value is out of its ``min``/``max``. ``refused: true`` means nothing was sent;
``refused: false`` means the device was asked and failed (the write may or may not have taken).

A repeated id is not executed again: the last ``remember`` ids of each device are kept in memory
(not across restarts: the session is clean, so the broker redelivers nothing to a new process;
and a retained command, which every new subscription would receive again, is never executed).
A request that could not be read (malformed JSON, no id) is answered but not remembered, nor is
one for a device the gateway does not poll (so made-up device names cannot fill the memory).
Every command is logged on one line: device, id, point, value, result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.fields import NAME_PATTERN

log = logging.getLogger(__name__)

MAX_PAYLOAD = 4096  # bytes; a command is a small JSON object
MAX_ID_LENGTH = 128
MAX_RUNNING = 16  # commands being executed at once; beyond that a command is refused as busy
KEYS = frozenset({"id", "point", "value"})

Runner = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Value = str | int | float | bool


class BadCommand(Exception):
    """A request that cannot be executed as it stands; ``id`` is its id when one could be read."""

    def __init__(self, reason: str, id: str | int | None = None) -> None:
        super().__init__(reason)
        self.id = id


@dataclass(frozen=True, slots=True)
class Command:
    id: str | int
    point: str
    value: Value


def parse(payload: bytes) -> Command:
    """Read a request ``{"id", "point", "value"}``; BadCommand (with the id if any) if it is not one."""
    if len(payload) > MAX_PAYLOAD:
        raise BadCommand(f"request too large ({len(payload)} bytes, at most {MAX_PAYLOAD})")
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadCommand(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadCommand('a command is a JSON object {"id", "point", "value"}')
    id = doc.get("id")
    if not _valid_id(id):
        raise BadCommand(f"the request needs an id: a string of 1 to {MAX_ID_LENGTH} characters or an integer")
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise BadCommand(f"unknown key {', '.join(map(repr, unknown))} (a command has id, point, value)", id)
    point, value = doc.get("point"), doc.get("value")
    if not isinstance(point, str) or not point:
        raise BadCommand("the request needs a point: the name of a point of the device", id)
    if "value" not in doc or not isinstance(value, str | int | float | bool):
        raise BadCommand("the request needs a value: a number, true/false or text", id)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadCommand(f"value {value} is not a finite number", id)
    return Command(id, point, value)


def _valid_id(id: Any) -> bool:
    if isinstance(id, str):
        return 0 < len(id) <= MAX_ID_LENGTH
    return isinstance(id, int) and not isinstance(id, bool)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in JSON")


def refusal(id: str | int | None, reason: str) -> dict[str, Any]:
    """The result of a command refused before anything was sent to the device."""
    return {"id": id, "ok": False, "refused": True, "error": reason}


def result_of(command: Command, answer: dict[str, Any]) -> dict[str, Any]:
    """The result message for ``command``, from ``run_tool_command``'s answer to its write."""
    if answer.get("ok"):
        readback = answer.get("readback")
        value = readback.get("value") if isinstance(readback, dict) and not readback.get("error") else None
        return {"id": command.id, "ok": True, "point": command.point, "written": answer.get("written"),
                "readback": value}
    refused = bool(answer.get("refused") or answer.get("unknown_device"))
    return {"id": command.id, "ok": False, "refused": refused, "error": str(answer.get("error") or "failed")}


class Commands:
    """Runs remote commands through ``run`` (the daemon's write path), once per id.

    ``run(request)`` takes ``{"cmd": "write", "device", "point", "value"}`` and answers like
    :func:`gateway.daemon.tools.run_tool_command`. Each execution runs in a task of its own, so
    a lost broker session does not cut a write in half; its result is kept for duplicates.
    """

    def __init__(self, run: Runner, *, remember: int = 1000, max_running: int = MAX_RUNNING) -> None:
        self._run = run
        self.remember = remember
        self.max_running = max_running
        # Per device, its recent ids (JSON, so 1 and "1" differ), oldest first: a busy device never
        # pushes another device's ids out.
        self._seen: dict[str, OrderedDict[str, asyncio.Future[dict[str, Any]]]] = {}
        self._running: set[asyncio.Task[dict[str, Any]]] = set()
        self._closing = False
        self.counters = {"received": 0, "ok": 0, "refused": 0, "failed": 0, "duplicate": 0}

    async def handle(self, device: str, payload: bytes, retained: bool = False) -> dict[str, Any]:
        """The result of the command ``payload`` for ``device``; executes it unless seen before."""
        self.counters["received"] += 1
        try:
            command = parse(payload)
        except BadCommand as exc:
            return self._done(device, None, refusal(exc.id, str(exc)), f"{len(payload)} bytes")
        what = f"{_show(command.point)} = {_show(command.value)}"
        if retained:
            reason = "a retained command is never executed (publish commands with retain false)"
            return self._done(device, command.id, refusal(command.id, reason), what)
        key = json.dumps(command.id)
        earlier = self._seen.get(device, {}).get(key)
        if earlier is not None:
            first = await asyncio.shield(earlier)
            self.counters["duplicate"] += 1
            log.info("command %s to %s: %s: duplicate, not executed again (first: %s)",
                     _show(command.id), _show(device), what, _outcome(first))
            return {**first, "duplicate": True}
        if self._closing:
            return self._done(device, command.id, refusal(command.id, "the gateway is stopping"), what)
        if len(self._running) >= self.max_running:
            reason = f"busy: {len(self._running)} commands in progress, retry later"
            return self._done(device, command.id, refusal(command.id, reason), what)
        task = asyncio.create_task(self._execute(device, command, what), name=f"command:{device}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        seen = self._seen.setdefault(device, OrderedDict())
        seen[key] = task
        self._forget_oldest(seen)
        return await asyncio.shield(task)  # a lost session does not cut the write (nor its log line)

    async def close(self, timeout: float = 2.0) -> None:
        """Refuse new commands; let running ones finish for ``timeout`` seconds, then cancel them."""
        self._closing = True
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
        for task in list(self._running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _execute(self, device: str, command: Command, what: str) -> dict[str, Any]:
        request = {"cmd": "write", "device": device, "point": command.point, "value": command.value,
                   "via": f"remote command {command.id!r}"}
        try:
            answer = await self._run(request)
        except Exception as exc:  # run_tool_command answers errors itself; anything else is a bug
            log.exception("command %s to %s failed", _show(command.id), _show(device))
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if answer.get("unknown_device"):
            self._forget(device, command.id)
        return self._done(device, command.id, result_of(command, answer), what)

    def _done(self, device: str, id: str | int | None, result: dict[str, Any], what: str) -> dict[str, Any]:
        """Count and log a command's result (one line); returns it."""
        outcome = "ok" if result["ok"] else "refused" if result.get("refused") else "failed"
        self.counters[outcome] += 1
        level = logging.INFO if result["ok"] else logging.WARNING
        shown = "without id" if id is None else _show(id)
        log.log(level, "command %s to %s: %s: %s", shown, _show(device), what, _outcome(result))
        return result

    def _forget_oldest(self, seen: OrderedDict[str, asyncio.Future[dict[str, Any]]]) -> None:
        """Keep at most ``remember`` ids of a device (the oldest finished ones go first)."""
        excess = len(seen) - self.remember
        if excess <= 0:
            return
        for key in [k for k, fut in seen.items() if fut.done()][:excess]:
            del seen[key]

    def _forget(self, device: str, id: str | int) -> None:
        seen = self._seen.get(device)
        if seen is not None:
            seen.pop(json.dumps(id), None)
            if not seen:
                del self._seen[device]


def _outcome(result: dict[str, Any]) -> str:
    if result["ok"]:
        return f"ok, written {result.get('written') or '(no detail)'}, read back {_show(result.get('readback'))}"
    return f"{'refused' if result.get('refused') else 'failed'}: {result.get('error')}"


_SAFE = re.compile(NAME_PATTERN)


def _show(value: Any, limit: int = 64) -> str:
    """``value`` for a log line: a safe name as it is, anything else as a short repr (no line breaks)."""
    if isinstance(value, str) and _SAFE.fullmatch(value):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
