"""Files beside the buffer database: the per-device seq high-water marks, the witness of the last
commit, setting a bad database file aside, and the room the filesystem leaves it.

The buffer database can be lost (deleted, moved aside because it is corrupt, restored from an older
copy, or cut back to an older state by a lost WAL); these marks cannot, so a seq once committed is
never handed to another reading. The file is replaced atomically (gateway.atomic.write_atomic) and
only when a device crosses its mark, which the buffer raises in blocks so the file is rarely
written; a clean close trims it back to what was committed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from gateway.atomic import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

FORMAT = 1  # every later format keeps "next_seq" (device -> lowest seq not reserved) as it is
SEQ_RESERVE = 10_000  # seqs reserved per device each time seq.json is rewritten
_DB_SUFFIXES = ("", "-wal", "-shm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_WITNESS_LEN = 96  # fixed: every write replaces the whole content in place


def load_marks(path: Path) -> dict[str, int] | None:
    """Return the marks stored in ``path``: device -> lowest seq not yet reserved.

    Returns None when the file is missing, or unreadable (logged), so the caller rebuilds it.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        # A later format keeps next_seq as it is: an older gateway, rolled back to, still numbers above it.
        if not isinstance(doc["format"], int) or doc["format"] < FORMAT:
            raise ValueError(f"unknown format {doc['format']!r}")
        return {str(dev): int(seq) for dev, seq in doc["next_seq"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.error("seq marks file %s is unreadable (%s); rebuilding it", path, exc)
        return None


def save_marks(path: Path, marks: Mapping[str, int]) -> None:
    """Replace ``path`` with ``marks`` so that a power cut leaves either the old or the new file."""
    data = json.dumps({"format": FORMAT, "next_seq": dict(sorted(marks.items()))}, indent=0)
    write_atomic(path, data.encode("utf-8"))


class Marks:
    """The marks this run keeps in ``seq.json``: device -> the lowest seq not yet reserved.

    Every seq a commit gives (and so every one published) is below its device's mark: the store
    reserves seqs in blocks of SEQ_RESERVE, fsynced before the commit that uses them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: dict[str, int] = {}
        self._rewrite = False  # the file was missing or unreadable: cover() writes it

    def ahead_of(self, next_seq: Mapping[str, int], *, complete: bool) -> dict[str, int]:
        """Read the file; return the devices whose seq must continue at their mark instead of the
        database's ``next_seq`` (the database went back in time, or was lost). Where the database
        is ``complete`` (the witness shows it lost no commit) only the devices it does not know."""
        loaded = load_marks(self.path)
        self.current, self._rewrite = loaded or {}, loaded is None
        return {dev: seq for dev, seq in self.current.items()
                if seq > next_seq.get(dev, 0) and not (complete and dev in next_seq)}

    def cover(self, next_seq: Mapping[str, int]) -> None:
        """After ``ahead_of``: raise the marks to the database's ``next_seq``; write the file if that
        changed them or it was missing."""
        marks = self.current
        self.current = marks | {d: max(s, marks.get(d, 0)) for d, s in next_seq.items()}
        if self._rewrite or marks != self.current:
            save_marks(self.path, self.current)

    def reserve(self, next_seq: Mapping[str, int]) -> None:
        """Raise the marks (fsynced) before a commit would use seqs above them."""
        over = {dev: seq for dev, seq in next_seq.items() if seq > self.current.get(dev, 0)}
        if over:
            marks = dict(self.current)
            marks.update({dev: seq + SEQ_RESERVE for dev, seq in over.items()})
            save_marks(self.path, marks)
            self.current = marks

    def trim(self, next_seq: Mapping[str, int]) -> None:
        """Lower the marks to the seqs committed, so the next start continues without a gap.

        Only after the last commit: every seq committed (and so every one published) is below
        ``next_seq``, durable in the database, so a trimmed mark still covers it. Raises OSError
        if the file cannot be written (the higher marks stay: safe, only a gap at the next start).
        """
        trimmed = {dev: next_seq.get(dev, mark) for dev, mark in self.current.items()}
        if trimmed != self.current:
            save_marks(self.path, trimmed)
            self.current = trimmed


def set_aside(db: Path, tag: str) -> Path | None:
    """Rename ``db`` and its -wal/-shm to ``<db>.<tag>-<UTC time>``; return the new name, if any moved."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base, k = Path(f"{db}.{tag}-{stamp}"), 1
    while any(Path(f"{base}{s}").exists() for s in _DB_SUFFIXES):
        base, k = Path(f"{db}.{tag}-{stamp}.{k}"), k + 1
    moved = [s for s in _DB_SUFFIXES if Path(f"{db}{s}").exists()]
    for suffix in moved:
        Path(f"{db}{suffix}").rename(f"{base}{suffix}")
    if moved:
        fsync_dir(db.parent)
    return base if moved else None


def fs_allowance(db: Path, reserve: int) -> int | None:
    """Bytes of pages the database ``db`` may use: what its filesystem has free, plus its own files
    (database and WAL), less ``reserve``; may be negative. None when the sizes cannot be read.

    Within that, the database file grows to at most the allowance plus one commit, and the WAL
    (up to about its journal_size_limit) eats into the reserve, which must be larger.
    """
    try:
        st = os.statvfs(db.parent)
        on_disk = os.stat(db).st_size
        wal = Path(f"{db}-wal")
        wal_size = os.stat(wal).st_size if wal.exists() else 0
    except OSError:
        return None
    return st.f_bavail * st.f_frsize + on_disk + wal_size - reserve


def boot_id() -> str | None:
    """This boot's id (Linux), or None where it cannot be read."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class Witness:
    """The row count the last commit of this boot reached, in a small file written without fsync.

    A write survives a crash of the process (the kernel holds it) but not always a power cut, so
    the file is believed only within the boot that wrote it: a database that reaches it then lost
    no commit, and seqs continue from the database instead of above the reserved marks (no gap).
    A write that fails removes the file: a stale witness would vouch for a database that lost commits.
    """

    def __init__(self, path: Path, boot: str | None) -> None:
        self.path, self.boot = path, boot
        self._fd: int | None = None

    def reached(self, db_id: int) -> int | None:
        """The next_row written for database ``db_id`` in this boot, or None (no such witness)."""
        try:
            boot, ident, next_row = self.path.read_text(encoding="ascii").split()
            if self.boot is not None and boot == self.boot and int(ident) == db_id:
                return int(next_row)
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        return None

    def write(self, db_id: int, next_row: int) -> None:
        """Record that database ``db_id`` committed every row below ``next_row``."""
        if self.boot is None:
            return
        line = f"{self.boot} {db_id} {next_row}".ljust(_WITNESS_LEN - 1) + "\n"
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            os.pwrite(self._fd, line.encode("ascii"), 0)
        except OSError as exc:
            logger.warning("seq witness %s cannot be written (%s); removed (the next start after a"
                           " crash continues seq above the marks)", self.path, exc)
            self.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
