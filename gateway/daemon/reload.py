"""Live reload: the one serialized queue every config change goes through, and what changed
between two configs, so only the changed devices restart."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.config.settings import Config, DeviceSpec

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[bool]]
"""One config change: applies it whole or not at all, returns True when applied."""

RESTART_SECTIONS = ("gateway", "buffer", "web")  # take effect only at the next start


@dataclass(slots=True)
class ConfigDiff:
    """Devices to stop, to start, and whether the broker session must be renewed."""

    removed: list[str] = field(default_factory=list)
    added: list[DeviceSpec] = field(default_factory=list)
    changed: list[DeviceSpec] = field(default_factory=list)
    mqtt_changed: bool = False
    restart_pending: list[str] = field(default_factory=list)  # sections that need a restart

    def summary(self) -> str:
        parts = [f"{len(self.added)} devices added", f"{len(self.changed)} changed", f"{len(self.removed)} removed"]
        if self.mqtt_changed:
            parts.append("broker settings changed")
        return ", ".join(parts)


def same_device(a: DeviceSpec, b: DeviceSpec) -> bool:
    """True when a running device needs no restart: same driver, timing and validated options.

    Options are compared after validation, so an edited profile file counts as a change and a
    reformatted entry does not.
    """
    keys = ("driver", "interval", "enabled", "options", "deadband", "heartbeat")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def diff(old: Config, new: Config) -> ConfigDiff:
    """What applying ``new`` over the running ``old`` takes."""
    result = ConfigDiff()
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    result.removed = [name for name in before if name not in after]
    for name, spec in after.items():
        if name not in before:
            result.added.append(spec)
        elif not same_device(before[name], spec):
            result.changed.append(spec)
    result.mqtt_changed = old.mqtt != new.mqtt
    result.restart_pending = [s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)]
    return result


@dataclass(slots=True)
class _Waiting:
    job: Job
    key: str | None
    done: asyncio.Future[bool]


class ReloadQueue:
    """Runs config changes one at a time, in the order they were asked for.

    Two changes never interleave at their awaits, so each is diffed against what actually runs.
    A job asked for with a ``key`` while the last job waiting has that key joins it instead of
    queueing again: any number of SIGHUPs during a reload give exactly one more reload, and since
    that one reads the file when it starts, the last file wins.

    ``submit()`` may be called from a signal handler; ``run()`` is the worker (one task; cancel it
    to stop, which cancels what is still waiting).
    """

    def __init__(self) -> None:
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()

    def submit(self, job: Job, *, key: str | None = None) -> asyncio.Future[bool]:
        """Queue ``job``; the future tells whether it applied (False also when it raised)."""
        # Join only the last one waiting: a request never runs before one asked for earlier.
        if key is not None and self._waiting and self._waiting[-1].key == key:
            return self._waiting[-1].done
        item = _Waiting(job, key, asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        self._wake.set()
        return item.done

    async def run(self) -> None:
        """Run the jobs as they come, forever."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    await self._run_one(self._waiting.popleft())
        finally:
            for item in self._waiting:
                item.done.cancel()
            self._waiting.clear()

    @staticmethod
    async def _run_one(item: _Waiting) -> None:
        try:
            applied = await item.job()
        except asyncio.CancelledError:
            item.done.cancel()
            raise
        except Exception as exc:  # a job must not take the queue down with it: the next one still runs
            log.error("config change failed: %s: %s", type(exc).__name__, exc)
            applied = False
        if not item.done.done():
            item.done.set_result(applied)
