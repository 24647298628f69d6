"""The fleet in a running daemon: answers ``config/set`` and ``config/get``, runs a push as a trial,
and keeps the retained ``config/state`` true.

A push is judged and taken inside the daemon's one reload queue (so it is diffed against what
really runs, and never beside a SIGHUP); the trial then waits outside the queue for a status the
broker took through the settings now in force. Its end (``applied`` or the rollback to the config
that ran before) is queued again, so a SIGHUP that came first ends the trial as ``rolled_back``
("local reload") and the late end does nothing. Secrets are scrubbed from every answer and log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.config import lastgood
from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import Config
from gateway.fleet.checks import check_body, pushed_config, request_id
from gateway.fleet.envelope import Refused, load_trust, open_envelope
from gateway.fleet.redact import redacted_yaml, secret_values
from gateway.fleet.store import FleetStore, local_digest

log = logging.getLogger(__name__)

PROVEN_CHECK = 0.2  # seconds between looks at the status counter during a trial
TRIAL_SENT_WAIT = 2.0  # seconds the "trial" answer may take to leave before the pushed broker settings apply


class _Queue(Protocol):
    def submit(self, job: Callable[[], Awaitable[bool]], *, key: str | None = None) -> asyncio.Future[bool]: ...


class _Clock(Protocol):
    def synced(self) -> bool: ...


class _Outbox(Protocol):
    def put(self, key: str, topic: str, payload: bytes, *, retain: bool = False) -> None: ...

    async def wait_sent(self, timeout: float) -> bool: ...


class _Publisher(Protocol):
    status_acks: int  # status messages the broker took
    last_error: str | None  # why the last session ended or failed


class Host(Protocol):
    """What the fleet needs of the daemon (gateway.daemon.daemon.Daemon)."""

    config: Config
    reload_error: str | None
    reloads: _Queue  # the one serialized queue of config changes
    clock: _Clock
    outbox: _Outbox  # sent on whichever broker session is up
    publisher: _Publisher  # the one in force

    async def apply_config(self, new: Config) -> bool: ...


@dataclass(slots=True)
class Trial:
    id: str
    version: int
    hash: str
    previous: Config


class Fleet:
    """One daemon's fleet side. ``startup`` picks the config to run; ``handle`` answers requests."""

    def __init__(self, host: Host, data_dir: Path, local_path: Path) -> None:
        self.host = host
        self.store = FleetStore(data_dir)
        self.local_path = local_path
        self.trial: Trial | None = None
        self.last = self.store.last
        self._results = 0
        self._watch: asyncio.Task[None] | None = None
        # Requests are judged one at a time in the order they arrived: each is answered in a task of
        # its own, and reading the keys in a thread would otherwise let a later push overtake an
        # earlier one (the earlier then refused as "another push is in its trial").
        self._in_order = asyncio.Lock()

    # -- which config runs ----------------------------------------------------------------------

    def startup(self, local: Config) -> Config:
        """At start: roll back a trial a crash cut short, then the fleet copy if still in force, else ``local``."""
        cut = self.store.trial_meta() or ({"id": None, "version": None} if self.store.trial.exists() else None)
        if cut is not None:
            self.store.abandon_trial()
            reason = "the gateway restarted during the trial (crash, kill or power cut); the previous config runs"
            log.error("fleet push %s (version %s) rolled back: %s", cut.get("id"), cut.get("version"), reason)
            self._result(cut.get("id"), "rolled_back", cut.get("version"), None, reason, persist=True,
                         rolled_back=True)
        path = self.config_file()
        if path != self.store.copy:
            return local
        try:
            return load_config(path)
        except ConfigFileError as exc:
            log.error("the fleet copy %s does not load (%s); running the local file", path, exc)
            return local

    def config_file(self) -> Path:
        """The file to run now: the fleet copy while the local file is unchanged since it was pushed."""
        copy = self.store.in_force(self.local_path)
        if copy is not None:
            return copy
        meta = self.store.copy_meta()
        if meta is not None and self.store.retire_copy():
            log.warning("the local file %s changed since fleet push %s (version %s): the local file wins",
                        self.local_path, meta.get("id"), meta.get("version"))
        return self.local_path

    async def before_reload(self) -> Path:
        """A local reload (SIGHUP) ends a trial as rolled back; returns the file to reload."""
        if self.trial is not None:
            await self._roll_back(self.trial, "local reload")
        return self.config_file()

    async def to_local(self) -> None:
        """``gateway fleet local``: end a trial, forget the fleet copy; the daemon then reloads."""
        if self.trial is not None:
            await self._roll_back(self.trial, "returned to the local file")
        if self.store.retire_copy():
            log.warning("fleet copy retired: running the local file %s", self.local_path)
        self.store.set_last(self.last or {}, rolled_back=False)
        self.publish_state()

    # -- what the platform sees -----------------------------------------------------------------

    @property
    def source(self) -> str:
        path = self.host.config.path
        return "fleet" if path in (self.store.copy, self.store.trial) and not self.host.config.fallback else "local"

    @property
    def version(self) -> int | None:
        if self.trial is not None:
            return self.trial.version
        meta = self.store.copy_meta() if self.source == "fleet" else None
        return meta.get("version") if meta else None

    def state(self) -> dict[str, Any]:
        state = "trial" if self.trial else "rolled_back" if self.store.rolled_back else "running"
        return {"schema": 1, "source": self.source, "version": self.version, "hash": self.host.config.hash,
                "state": state, "last": self.last}

    def publish_state(self) -> None:
        self.host.outbox.put("state", "config/state", _json(self.state()), retain=True)

    # -- requests -------------------------------------------------------------------------------

    async def handle(self, kind: str, payload: bytes, retained: bool) -> None:
        """Answer one request (through the outbox); a push is taken into a trial or refused. Requests
        are taken in the order they arrived (asyncio.Lock wakes its waiters first come, first served)."""
        async with self._in_order:
            await self._handle(kind, payload, retained)

    async def _handle(self, kind: str, payload: bytes, retained: bool) -> None:
        version: Any = None
        id: str | None = None
        try:
            try:
                keys = await asyncio.to_thread(load_trust, list(self.host.config.fleet.trust))
            except ValueError as exc:
                raise Refused(f"the gateway cannot read its trusted keys: {exc}") from None
            body = open_envelope(payload, keys)
            id = request_id(body)
            version = body.get("version") if kind == "set" else None
            if retained:
                raise Refused("a retained request is never executed (publish with retain false)", id)
            check_body(kind, body, id, gateway_id=self.host.config.gateway.id, synced=self.host.clock.synced())
            if kind == "get":
                self._answer({"id": id, "result": "config", "config": redacted_yaml(self.host.config)})
                log.info("fleet get %s answered", id)
                return
            # Judged and taken in the queue; its answers go through the outbox (the request's session
            # may end meanwhile, when the push changes the broker settings).
            self.host.reloads.submit(lambda: self._take(body, id))
        except Refused as exc:
            self._refuse(exc.id if exc.id is not None else id, version if isinstance(version, int) else None,
                         str(exc))

    async def _take(self, body: dict[str, Any], id: str) -> bool:
        """In the reload queue: the checks against what runs, then the trial (or a refusal)."""
        running, version = self.host.config, body["version"]
        try:
            if self.trial is not None:
                raise Refused(f"push {self.trial.id} (version {self.trial.version}) is still in its trial", id)
            if version <= self.store.highest:
                raise Refused(f"version {version} is not above {self.store.highest}, the highest this gateway "
                              "has taken (a replay?)", id)
            if body["expect"] != running.hash:
                raise Refused(f"expect {body['expect']!r} is not the running config {running.hash!r} "
                              "(changed meanwhile?)", id)
            text, _ = await asyncio.to_thread(pushed_config, body["config"], id, running, self.store.data_dir)
            await asyncio.to_thread(self.store.begin_trial, text, {"id": id, "version": version,
                                                                   "local": local_digest(self.local_path)})
        except Refused as exc:
            self._refuse(id, version, str(exc))
            return False
        except OSError as exc:  # a full or read-only data directory: nothing was tried
            with contextlib.suppress(OSError):
                self.store.abandon_trial()
            self._refuse(id, version, f"cannot write the pushed config to the data directory: {exc}")
            return False
        return await self._start_trial(id, version, running)

    async def _start_trial(self, id: str, version: int, running: Config) -> bool:
        """The pushed file is on disk as the trial copy: apply it and watch it."""
        try:
            new = await asyncio.to_thread(load_config, self.store.trial)
        except ConfigFileError as exc:  # cannot happen: it was checked as written
            self.store.abandon_trial()
            self._refuse(id, version, str(exc))
            return False
        trial = self.trial = Trial(id, version, new.hash, running)
        trial_s = running.fleet.trial
        log.info("fleet push %s (version %d) taken into a %gs trial: config %s", id, version, trial_s, new.hash)
        self._result(id, "trial", version, new.hash, None, persist=True)
        await self.host.outbox.wait_sent(TRIAL_SENT_WAIT)  # told before the (maybe new) broker settings apply
        if not await self.host.apply_config(new):
            reason = self.host.reload_error or "the config could not be applied"
            self._end(trial, "rolled_back", running.hash, f"not applied: {reason}")
            return False
        self._watch = asyncio.create_task(self._watch_trial(trial, trial_s), name="fleet-trial")
        return True

    async def _watch_trial(self, trial: Trial, seconds: float) -> None:
        """Wait for a status the broker took through the settings in force; then end the trial (queued)."""
        publisher = self.host.publisher
        mark = publisher.status_acks
        proven = False
        deadline = asyncio.get_running_loop().time() + seconds
        while self.trial is trial and asyncio.get_running_loop().time() < deadline:
            now = self.host.publisher
            if now.status_acks > (mark if now is publisher else 0):
                proven = True
                break
            await asyncio.sleep(PROVEN_CHECK)
        self.host.reloads.submit(lambda: self._conclude(trial, proven, seconds))

    async def _conclude(self, trial: Trial, proven: bool, seconds: float) -> bool:
        if self.trial is not trial:  # a local reload ended it first
            return False
        if not proven:
            reason = f"no status reached the broker through the pushed settings within {seconds:g}s"
            if self.host.publisher.last_error:
                reason += f" ({self.host.publisher.last_error})"
            await self._roll_back(trial, reason)
            return True
        await asyncio.to_thread(self.store.commit_trial)
        self.host.config = replace(self.host.config, path=self.store.copy)
        try:
            await asyncio.to_thread(lastgood.save, self.store.data_dir, self.host.config.source)
        except OSError as exc:
            log.warning("could not keep the last good config: %s", exc)
        log.info("fleet push %s (version %d) applied: config %s", trial.id, trial.version, trial.hash)
        self._end(trial, "applied", trial.hash, None)
        return True

    async def _roll_back(self, trial: Trial, reason: str) -> None:
        """Back to the config that ran before the push, by the reload path (inside the queue)."""
        self.trial = None  # apply_config must not see a trial any more: its last-good keeper may run
        await self.host.apply_config(trial.previous)
        await asyncio.to_thread(self.store.abandon_trial)
        log.warning("fleet push %s (version %d) rolled back: %s", trial.id, trial.version, reason)
        self._end(trial, "rolled_back", self.host.config.hash, reason)

    def _end(self, trial: Trial, result: str, hash: str, error: str | None) -> None:
        self.trial = None
        self._result(trial.id, result, trial.version, hash, error, persist=True, rolled_back=result == "rolled_back")

    # -- answers --------------------------------------------------------------------------------

    def _refuse(self, id: str | None, version: int | None, reason: str) -> None:
        reason = self._scrub(reason)
        log.warning("fleet request %s refused: %s", id, reason.replace("\n", "; "))
        self._result(id, "refused", version, self.host.config.hash, reason)

    def _result(self, id: str | None, result: str, version: int | None, hash: str | None, error: str | None,
                *, persist: bool = False, rolled_back: bool | None = None) -> None:
        error = self._scrub(error) if error else None
        self._answer({"id": id, "result": result, "version": version, "hash": hash, "error": error})
        self.last = {"id": id, "result": result, "error": error, "ts": int(time.time() * 1000)}
        if persist:
            try:
                self.store.set_last(self.last, rolled_back=rolled_back)
            except OSError as exc:
                log.warning("could not keep the fleet state: %s", exc)
        self.publish_state()

    def _answer(self, doc: dict[str, Any]) -> None:
        self._results += 1
        self.host.outbox.put(f"result-{self._results}", "config/result", _json(doc))

    def _scrub(self, text: str) -> str:
        """``text`` with every literal secret of the running config (and of a trial's) masked."""
        configs = [self.host.config] + ([self.trial.previous] if self.trial else [])
        for config in configs:
            for secret in secret_values(config):
                if secret:
                    text = text.replace(secret, "***")
        return text


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
