"""Files beside the buffer database: the per-device seq high-water marks, setting a bad database
file aside, and the room the filesystem leaves it.

The buffer database can be lost (deleted, or moved aside because it is corrupt); these marks
cannot, so a seq once committed is never handed to another reading. The file is replaced
atomically (write a temp file, fsync, rename, fsync the directory) and only when a device
crosses its mark, which the buffer raises in blocks so the file is rarely written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

FORMAT = 1
_DB_SUFFIXES = ("", "-wal", "-shm")


def load_marks(path: Path) -> dict[str, int] | None:
    """Return the marks stored in ``path``: device -> lowest seq not yet reserved.

    Returns None when the file is missing, or unreadable (logged), so the caller rebuilds it.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc["format"] != FORMAT:
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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames and new files in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
