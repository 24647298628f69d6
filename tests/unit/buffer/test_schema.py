"""The buffer database's schema version: a new file is stamped, a 0.1.0 file is migrated, and a file
a newer gateway wrote is either used (its format says this version can) or set aside whole, with one
log line, seqs continuing above the marks."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import schema
from gateway.buffer.queue import Buffer
from gateway.model import Batch, PointSet

POINTS = PointSet(("a", "b"), ("V", None))
NEWER = schema.SCHEMA_VERSION + 1


def _query(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute(sql)]
    finally:
        conn.close()


async def _buffer_with(data: Path, polls: int) -> None:
    """A buffer in ``data`` holding ``polls`` unsent polls of dev1 (2 readings each), cleanly closed."""
    buf = Buffer(data, max_bytes=10**8, commit_interval=3600)
    await buf.open()
    for i in range(polls):
        buf.put(Batch("dev1", 1_700_000_000_000 + i, POINTS, [i, i]))
    await buf.flush()
    await buf.close()


def _stamp(db: Path, version: int, fmt: int | None = None) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
        if fmt is not None:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (fmt,))
    finally:
        conn.close()


def _set_aside(data: Path) -> list[Path]:
    """The database files set aside in ``data`` (without their -wal/-shm)."""
    return [p for p in data.glob("buffer.db.*") if not p.name.endswith(("-wal", "-shm"))]


async def _open(data: Path) -> Buffer:
    buf = Buffer(data, max_bytes=10**8, commit_interval=3600)
    await buf.open()
    return buf


async def test_a_new_file_carries_the_schema_version(tmp_path: Path) -> None:
    await _buffer_with(tmp_path, 1)
    assert _query(tmp_path / "buffer.db", "PRAGMA user_version") == [schema.SCHEMA_VERSION]
    assert _query(tmp_path / "buffer.db", "SELECT value FROM meta WHERE key = 'format'") == [schema.FORMAT]


async def test_a_file_without_a_version_is_read_and_stamped(tmp_path: Path) -> None:
    """0.1.0 set no user_version (0); its layout is version 1: the readings are kept, the file stamped."""
    await _buffer_with(tmp_path, 3)
    _stamp(tmp_path / "buffer.db", 0)
    buf = await _open(tmp_path)
    try:
        assert buf.stats().pending == 6 and buf.next_seq("dev1") == 7
    finally:
        await buf.close()
    assert _query(tmp_path / "buffer.db", "PRAGMA user_version") == [schema.SCHEMA_VERSION]


async def test_a_newer_file_this_version_can_use_is_read_as_it_is(tmp_path: Path, caplog: Any) -> None:
    """A newer layout whose format says older gateways can still use it: read, not set aside, its
    version kept (the newer gateway, upgraded to again, finds its own file)."""
    await _buffer_with(tmp_path, 3)
    _stamp(tmp_path / "buffer.db", NEWER)
    caplog.set_level(logging.WARNING)
    buf = await _open(tmp_path)
    try:
        assert buf.stats().pending == 6 and buf.next_seq("dev1") == 7
        buf.put(Batch("dev1", 1_700_000_001_000, POINTS, [9, 9]))
        await buf.flush()
    finally:
        await buf.close()
    assert _query(tmp_path / "buffer.db", "PRAGMA user_version") == [NEWER]
    assert not _set_aside(tmp_path) and not caplog.records


@pytest.mark.parametrize("layout", ["its format", "no meta table"])
async def test_a_newer_file_this_version_cannot_use_is_set_aside_whole(
        tmp_path: Path, caplog: Any, layout: str) -> None:
    """One log line; the file renamed, every row in it; a fresh file; seq continues above the marks."""
    await _buffer_with(tmp_path, 3)  # seq 1..6 committed, marks trimmed to 7 by the clean close
    db = tmp_path / "buffer.db"
    if layout == "its format":
        _stamp(db, NEWER, NEWER)
    else:
        _stamp(db, NEWER)
        _query(db, "ALTER TABLE meta RENAME TO settings")
    caplog.set_level(logging.INFO)
    buf = await _open(tmp_path)
    try:
        assert buf.stats().pending == 0 and buf.next_seq("dev1") == 7
        buf.put(Batch("dev1", 1_700_000_001_000, POINTS, [9, 9]))
        await buf.flush()
        assert buf.next_seq("dev1") == 9
    finally:
        await buf.close()
    assert [r.levelname for r in caplog.records] == ["ERROR"], caplog.text
    assert "written by a newer gateway" in caplog.records[0].message
    aside = _set_aside(tmp_path)
    assert len(aside) == 1 and aside[0].name.startswith("buffer.db.newer-") and str(aside[0]) in caplog.text
    assert _query(aside[0], "PRAGMA user_version") == [NEWER]
    assert _query(aside[0], "SELECT sum(n) FROM batch") == [6], "the newer file lost readings"
    assert _query(db, "PRAGMA user_version") == [schema.SCHEMA_VERSION]
    assert json.loads((tmp_path / "seq.json").read_text())["next_seq"] == {"dev1": 9}


def test_marks_of_a_later_format_are_read(tmp_path: Path) -> None:
    """seq.json of a newer gateway: its next_seq is what an older one numbers above."""
    from gateway.buffer.seqfile import load_marks

    path = tmp_path / "seq.json"
    path.write_text(json.dumps({"format": 2, "next_seq": {"dev1": 42}, "added": "by a newer gateway"}))
    assert load_marks(path) == {"dev1": 42}
    path.write_text(json.dumps({"format": "x", "next_seq": {"dev1": 42}}))
    assert load_marks(path) is None
