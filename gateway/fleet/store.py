"""What the fleet keeps in the data directory (the only place the service may write), crash-safe.

* ``fleet.yaml``: the pushed config in force since it was ``applied``;
* ``fleet-trial.yaml``: the pushed config under trial. Its presence is the trial marker: found at a
  start, the trial was cut short (crash, ``kill -9``, power cut) and is rolled back;
* ``fleet.json``: the highest version ever taken into a trial (so a captured push cannot be
  replayed, also after a restart) and the last result, for the retained state.

Both YAML files begin with one comment line ``# fleet: {"id", "version", "local"}``: the request,
its version and the sha256 of the local config file when the push was taken. The local file wins
as soon as it differs from that (a technician edited it). Applying renames the trial file over
``fleet.yaml``: one atomic step, so a crash leaves either the old copy with the trial marker
(rolled back at start) or the new copy without it (applied).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gateway.atomic import fsync_dir, write_atomic

COPY = "fleet.yaml"
TRIAL = "fleet-trial.yaml"
STATE = "fleet.json"
HEADER = "# fleet: "


def local_digest(path: Path) -> str | None:
    """sha256 of the local config file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def header_of(path: Path) -> dict[str, Any] | None:
    """The ``# fleet:`` line of a pushed copy; None when there is no such file (or line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except OSError:
        return None
    if not first.startswith(HEADER):
        return None
    with contextlib.suppress(ValueError):
        meta = json.loads(first[len(HEADER):])
        if isinstance(meta, dict):
            return meta
    return None


class FleetStore:
    """The fleet's files in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.copy = self.data_dir / COPY
        self.trial = self.data_dir / TRIAL
        self.state_file = self.data_dir / STATE

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, sort_keys=True).encode(), mode=0o600)

    @property
    def highest(self) -> int:
        """The highest version taken into a trial, applied or rolled back (0: none yet)."""
        value = self._state().get("highest", 0)
        return value if isinstance(value, int) else 0

    @property
    def last(self) -> dict[str, Any] | None:
        """The last request's result as the retained state shows it."""
        last = self._state().get("last")
        return last if isinstance(last, dict) else None

    def set_last(self, last: dict[str, Any], *, rolled_back: bool | None = None) -> None:
        state = self._state()
        state["last"] = last
        if rolled_back is not None:
            state["rolled_back"] = rolled_back
        self._save(state)

    @property
    def rolled_back(self) -> bool:
        """True when the last trial ended in a rollback and nothing was applied since."""
        return bool(self._state().get("rolled_back"))

    def begin_trial(self, text: str, meta: dict[str, Any]) -> None:
        """Keep the version first (a replay stays refused whatever happens next), then the trial copy."""
        state = self._state()
        state["highest"] = max(int(meta["version"]), self.highest)
        self._save(state)
        body = HEADER + json.dumps(meta, sort_keys=True) + "\n" + text
        write_atomic(self.trial, body.encode("utf-8"), mode=0o600)  # it may hold a password

    def trial_meta(self) -> dict[str, Any] | None:
        """The header of the trial under way (or cut short); None when there is none."""
        return header_of(self.trial) if self.trial.exists() else None

    def commit_trial(self) -> None:
        """The trial proved itself: its copy becomes the one in force (atomically)."""
        os.replace(self.trial, self.copy)
        fsync_dir(self.data_dir)

    def abandon_trial(self) -> None:
        """Roll back on disk: the trial copy goes, the copy in force (if any) stays."""
        with contextlib.suppress(FileNotFoundError):
            self.trial.unlink()
            fsync_dir(self.data_dir)

    def copy_meta(self) -> dict[str, Any] | None:
        return header_of(self.copy)

    def in_force(self, local_path: Path) -> Path | None:
        """The fleet copy, when it exists and the local file is unchanged since it was pushed."""
        meta = self.copy_meta()
        if meta is None or meta.get("local") != local_digest(local_path):
            return None
        return self.copy

    def retire_copy(self) -> bool:
        """Forget the fleet copy (the local file wins from now on); True when there was one."""
        try:
            self.copy.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.data_dir)
        return True
