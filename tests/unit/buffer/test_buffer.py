"""The store-and-forward buffer: seq numbering, durability, acks, cap, corruption and disk errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.buffer import seqfile
from gateway.buffer import store as buffer_mod
from gateway.buffer.pointsets import PRUNE_EVERY
from gateway.buffer.queue import Buffer
from gateway.buffer.seqfile import SEQ_RESERVE
from gateway.buffer.store import Store
from gateway.model import Batch, PointSet, StoredBatch

POINTS = PointSet(("temp", "hum", "ok", "label", "raw"), ("degC", "%", None, None, None))
NEVER = 3600.0  # commit interval for tests that commit by flush() only


def batch(device: str = "dev1", n: int = 5, ts: int = 1_700_000_000_000, base: int = 0) -> Batch:
    """A batch of ``n`` readings; ``base`` makes values distinguishable."""
    if n == len(POINTS.names):
        points = POINTS
    else:
        points = PointSet(tuple(f"p{i}" for i in range(n)), tuple("V" for _ in range(n)))
    return Batch(device, ts, points, [base + i for i in range(n)])


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Open buffers on ``tmp_path`` (or another dir); every one still open is closed at the end."""
    opened: list[Buffer] = []

    async def _make(data_dir: Path | None = None, **kw: Any) -> Buffer:
        kw.setdefault("max_bytes", 10**9)
        kw.setdefault("commit_interval", NEVER)
        buf = Buffer(data_dir or tmp_path, **kw)
        await buf.open()
        opened.append(buf)
        return buf

    yield _make
    for buf in opened:
        await buf.close()


async def drain(buf: Buffer) -> list[StoredBatch]:
    return await buf.fetch(0, 10**9)


def seqs(batches: list[StoredBatch], device: str = "dev1") -> list[int]:
    return [b.seq0 + i for b in batches if b.device == device for i in range(len(b))]


def upto(n: int) -> list[int]:
    """Seqs 1..n: a device's first reading gets seq 1."""
    return list(range(1, n + 1))


class Writer:
    """The buffer's writer thread, seen through the public Store it runs there (its ``commit`` and
    ``fetch`` are spied on): the store last used, code to run there before its next commit or
    fetch, and a stalled disk (the thread held there)."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.fetches = 0  # reads that went to the database
        self.idle = threading.Event()  # set while no commit or fetch runs
        self.idle.set()
        self._next: list[Callable[[Store], Any]] = []

    def spy(self, real: Callable[..., Any], *, reads: bool = False) -> Callable[..., Any]:
        def spied(store: Store, *args: Any) -> Any:
            self.idle.clear()
            try:
                self.store = store
                self.fetches += reads
                while self._next:
                    self._next.pop(0)(store)
                return real(store, *args)
            finally:
                self.idle.set()
        return spied

    def before_next(self, fn: Callable[[Store], Any]) -> None:
        """Run ``fn(store)`` on the writer thread before its next commit or fetch."""
        self._next.append(fn)

    def stall(self) -> tuple[threading.Event, threading.Event]:
        """Hold the writer thread at its next commit or fetch (a disk that stopped answering) until
        the second event returned is set; the first is set once it is held."""
        held, release = threading.Event(), threading.Event()

        def hold(_: Store) -> None:
            held.set()
            release.wait(10)

        self.before_next(hold)
        return held, release


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> Writer:
    spy = Writer()
    monkeypatch.setattr(Store, "commit", spy.spy(Store.commit))
    monkeypatch.setattr(Store, "fetch", spy.spy(Store.fetch, reads=True))
    return spy


async def held(event: threading.Event) -> None:
    """Wait (10 s at most) until the writer thread set ``event``."""
    assert await asyncio.to_thread(event.wait, 10), "the writer thread never got there"


def query(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the buffer database in a connection of its own (a reader beside the buffer)."""
    with contextlib.closing(sqlite3.connect(data_dir / "buffer.db")) as conn:
        return conn.execute(sql, args).fetchall()


def fill_disk(s: Store) -> None:
    """The disk is full: the database cannot grow by a page."""
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count={pages}")


def free_disk(s: Store) -> None:
    s.conn.execute("PRAGMA max_page_count=1073741823")


BIG = Batch("dev1", 2, PointSet(("blob",), (None,)), ["x" * 20_000])  # needs new pages


def snapshot(src: Path, dst: Path) -> Path:
    """Copy the data dir as a power cut would leave it (db + WAL, no close, no checkpoint)."""
    shutil.copytree(src, dst)
    return dst


# -- seq, round trip, fetch ----------------------------------------------------------------------


async def test_round_trip_keeps_values_errors_names_units(make: Callable[..., Any]) -> None:
    buf = await make()
    values = [21.5, 0.1, True, "door open", None]
    buf.put(Batch("dev1", 1234, POINTS, values, {4: "timeout"}))
    buf.put(Batch("dev1", 1235, POINTS, [1, -(2**40), False, "", 3.25]))
    await buf.flush()
    got = await drain(buf)
    assert [(b.device, b.seq0, b.ts, b.values, b.errors) for b in got] == [
        ("dev1", 1, 1234, values, {4: "timeout"}),
        ("dev1", 6, 1235, [1, -(2**40), False, "", 3.25], None),
    ]
    assert got[0].names == POINTS.names and got[0].units == POINTS.units
    assert type(got[1].values[0]) is int and type(got[0].values[2]) is bool


async def test_seq_per_device_in_put_order(make: Callable[..., Any]) -> None:
    buf = await make()
    for i in range(3):
        buf.put(batch("a", 2, base=i))
        buf.put(batch("b", 3, base=i))
    assert (buf.next_seq("a"), buf.next_seq("b")) == (1, 1)  # seqs are given at commit
    await buf.flush()
    got = await drain(buf)
    assert [b.seq0 for b in got if b.device == "a"] == [1, 3, 5]
    assert [b.seq0 for b in got if b.device == "b"] == [1, 4, 7]
    assert [b.values[0] for b in got if b.device == "a"] == [0, 1, 2]
    assert (buf.next_seq("a"), buf.next_seq("b"), buf.next_seq("new")) == (7, 10, 1)


async def test_fetch_pages_by_row_and_reading_limit(make: Callable[..., Any]) -> None:
    buf = await make()
    for i in range(10):
        buf.put(batch(n=3, base=i))
    await buf.flush()
    page = await buf.fetch(0, 7)  # a third batch would make 9 > 7
    assert [b.values[0] for b in page] == [0, 1]
    page2 = await buf.fetch(page[-1].row, 6)
    assert [b.values[0] for b in page2] == [2, 3]
    assert [b.values[0] for b in await buf.fetch(page2[-1].row, 1)] == [4]  # at least one batch
    rows = [b.row for b in await drain(buf)]
    assert rows == sorted(rows) and len(rows) == 10
    assert await buf.fetch(rows[-1], 100) == []


async def test_fetch_uses_the_rowid_index(make: Callable[..., Any], tmp_path: Path) -> None:
    await make()
    sql = "EXPLAIN QUERY PLAN SELECT row, ps, seq0, n, ts, v, e FROM batch WHERE row > ? ORDER BY row"
    plan = query(tmp_path, sql, 5)
    assert "USING INTEGER PRIMARY KEY (rowid>?)" in str(plan) and "TEMP B-TREE" not in str(plan)


# -- ack -----------------------------------------------------------------------------------------


async def test_ack_hides_at_once_and_deletes_at_next_commit(make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    for i in range(4):
        buf.put(batch(base=i))
    await buf.flush()
    rows = [b.row for b in await drain(buf)]
    buf.ack(rows[:2])
    assert [b.row for b in await drain(buf)] == rows[2:]  # before any commit
    assert [b.row for b in await buf.fetch(0, 1)] == rows[2:3]
    await buf.flush()
    assert buf.stats().pending == 10
    assert query(tmp_path, "SELECT row FROM batch") == [(r,) for r in rows[2:]]
    buf.ack(rows[2:] + rows[:1])  # acking a deleted row again is harmless
    await buf.flush()
    assert buf.stats().pending == 0 and buf.stats().bytes == 0
    assert await drain(buf) == []


async def test_ack_while_a_fetch_runs_hides_the_row(make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    for i in range(3):
        buf.put(batch(base=i))
    await buf.close()
    buf = await make()  # reopened: the rows come from the database, not from memory
    rows = [b.row for b in await drain(buf)]
    reading, release = writer.stall()
    fetching = asyncio.ensure_future(drain(buf))
    await held(reading)  # the fetch's query runs on the (stalled) writer thread
    buf.ack(rows[:1])
    release.set()
    assert [b.row for b in await fetching] == rows[1:]


async def test_row_ids_never_reused_after_the_table_empties(make: Callable[..., Any]) -> None:
    buf = await make()
    buf.put(batch())
    await buf.flush()
    (first,) = await drain(buf)
    buf.ack([first.row])
    await buf.flush()
    buf.put(batch())
    await buf.flush()
    assert [b.row for b in await buf.fetch(first.row, 100)] == [first.row + 1]


async def test_one_transaction_per_commit_with_puts_and_acks(make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    for i in range(5):
        buf.put(batch(base=i))
    await buf.flush()
    rows = [b.row for b in await drain(buf)]
    statements: list[str] = []
    writer.before_next(lambda s: s.conn.set_trace_callback(statements.append))
    for i in range(50):
        buf.put(batch(base=i))
    buf.ack(rows)
    await buf.flush()
    writer.before_next(lambda s: s.conn.set_trace_callback(None))
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s == "COMMIT" for s in statements) == 1
    assert not any("count(" in s.lower() for s in statements)
    assert buf.stats().pending == 250


# -- durability ----------------------------------------------------------------------------------


async def test_pragmas_and_one_writer_thread(make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    probed: list[tuple[Any, ...]] = []

    def probe(s: Store) -> None:
        q = s.conn.execute
        probed.append((q("PRAGMA journal_mode").fetchone()[0], q("PRAGMA synchronous").fetchone()[0],
                       q("PRAGMA journal_size_limit").fetchone()[0], threading.current_thread().name))

    writer.before_next(probe)
    buf.put(batch())
    await buf.flush()
    ((mode, sync, limit, thread),) = probed
    assert (mode, sync, limit) == ("wal", 2, buffer_mod.JOURNAL_SIZE_LIMIT)  # 2 = FULL
    assert thread.startswith("buffer-writer") and thread != threading.current_thread().name
    assert writer.store is not None
    with pytest.raises(sqlite3.ProgrammingError):  # the connection refuses any other thread
        writer.store.conn.execute("SELECT 1")


async def test_put_never_waits_for_a_stalled_disk(make: Callable[..., Any], caplog: Any, writer: Writer) -> None:
    buf = await make(max_pending_readings=20)
    committing, release = writer.stall()  # the writer is stuck
    buf.put(batch(base=100))
    buf.put(batch(base=101))
    flushing = asyncio.ensure_future(buf.flush())
    await held(committing)  # the commit has taken them and waits for the disk
    for i in range(10):
        buf.put(batch(base=i))  # returns at once although the thread is busy
    assert buf.stats().pending == 20 and buf.stats().evicted == 40  # 10 in flight + 10 waiting
    assert buf.next_seq("dev1") == 1  # nothing committed yet
    assert sum("dropping the oldest" in r.message for r in caplog.records) == 1  # once per episode
    release.set()
    await flushing
    await buf.flush()
    got = await drain(buf)
    assert [b.values[0] for b in got] == [100, 101, 8, 9] and seqs(got) == upto(20)
    assert buf.stats().evicted == 40
    await buf.close()
    assert (await make(max_pending_readings=20)).stats().evicted == 40  # persisted in meta


async def test_cancelled_flush_still_completes_its_commit(make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    committing, release = writer.stall()
    buf.put(batch())
    flushing = asyncio.ensure_future(buf.flush())
    await held(committing)
    flushing.cancel()  # e.g. a shutdown timeout: the transaction is already running on the thread
    release.set()
    await buf.flush()
    assert buf.stats().pending == 5 and buf.next_seq("dev1") == 6
    assert seqs(await drain(buf)) == upto(5)


async def test_close_gives_up_on_a_stalled_disk_within_its_timeout(
        make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    buf.put(batch())
    await buf.flush()
    (stored,) = await drain(buf)
    buf.ack([stored.row])
    _, release = writer.stall()  # the writer gets stuck in the next commit
    buf.put(batch(base=1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await buf.close(timeout=0.3) is False
    assert loop.time() - started < 2.0
    assert buf.uncommitted == (5, 1)  # the readings a power cut would cost, the acks not applied
    release.set()
    await held(writer.idle)  # the thread left behind finishes (the disk answered after all)


async def test_restart_keeps_unacked_rows_and_continues_seq(make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    for i in range(3):
        buf.put(batch(base=i))
    await buf.flush()
    buf.ack([(await drain(buf))[0].row])
    await buf.close()
    buf2 = await make()
    got = await drain(buf2)
    assert [b.values[0] for b in got] == [1, 2]
    assert buf2.stats().pending == 10 and buf2.next_seq("dev1") == 16
    buf2.put(batch())
    await buf2.flush()
    assert (await drain(buf2))[-1].seq0 == 16


async def test_power_cut_keeps_flushed_rows_loses_unflushed_without_seq_reuse(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make(tmp_path / "a")
    for i in range(3):
        buf.put(batch(base=i))
    await buf.flush()
    buf.put(batch(base=99))  # never committed
    cut = snapshot(tmp_path / "a", tmp_path / "cut")
    assert (cut / "buffer.db-wal").stat().st_size > 0  # the rows are only in the WAL
    after = await make(cut)
    assert [b.values[0] for b in await drain(after)] == [0, 1, 2]
    assert after.next_seq("dev1") == 16  # 16.. never reached the platform: no reuse
    after.put(batch(base=7))
    await after.flush()
    assert seqs(await drain(after)) == upto(20)


async def test_killed_process_keeps_what_flush_returned(tmp_path: Path, make: Callable[..., Any]) -> None:
    script = """
import asyncio, os, sys
from pathlib import Path
from gateway.buffer.queue import Buffer
from gateway.model import Batch, PointSet
async def main():
    buf = Buffer(Path(sys.argv[1]), max_bytes=10**9, commit_interval=3600)
    await buf.open()
    for i in range(50):
        buf.put(Batch("dev1", i, PointSet(("a", "b"), (None, None)), [i, i]))
    await buf.flush()
    buf.put(Batch("dev1", 99, PointSet(("a", "b"), (None, None)), [99, 99]))
    os._exit(0)
asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(tmp_path))
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    buf = await make()
    got = await drain(buf)
    assert [b.ts for b in got] == list(range(50)) and seqs(got) == upto(100)


# -- seq high-water marks ------------------------------------------------------------------------


async def test_deleted_database_continues_seq_above_committed(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    buf.put(batch())
    await buf.flush()
    await buf.close()
    (tmp_path / "buffer.db").unlink()
    buf2 = await make()
    assert buf2.next_seq("dev1") == 6  # the clean close trimmed the marks to what it committed
    buf2.put(batch())
    await buf2.flush()
    await buf2.close()
    buf3 = await make()  # the fresh database now remembers it
    assert buf3.next_seq("dev1") == 11


async def test_deleted_database_with_stale_wal_after_power_cut(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make(tmp_path / "a")
    buf.put(batch())
    await buf.flush()
    cut = snapshot(tmp_path / "a", tmp_path / "cut")
    (cut / "buffer.db").unlink()  # the WAL stays behind
    after = await make(cut)
    assert after.next_seq("dev1") == 6 + SEQ_RESERVE and after.stats().pending == 0
    assert [f for f in os.listdir(cut) if f.startswith("buffer.db.orphan-") and f.endswith("-wal")]


async def test_marks_are_raised_before_the_commit_that_needs_them(
        make: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = await make()
    writes: list[dict[str, int]] = []
    real = seqfile.save_marks

    def spy(path: Path, marks: dict[str, int]) -> None:
        writes.append(dict(marks))
        real(path, marks)

    monkeypatch.setattr(seqfile, "save_marks", spy)
    for i in range(100):  # 100 commits of 5 readings: one reservation covers them all
        buf.put(batch(base=i))
        await buf.flush()
    assert writes == [{"dev1": 6 + SEQ_RESERVE}]
    on_disk = json.loads((tmp_path / "seq.json").read_text())["next_seq"]
    assert on_disk == {"dev1": 6 + SEQ_RESERVE}

    def failing(path: Path, marks: dict[str, int]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seqfile, "save_marks", failing)
    buf.put(batch(n=SEQ_RESERVE))  # would cross the mark: the commit must not happen
    await buf.flush()
    assert buf.stats().state == "degraded" and len(await drain(buf)) == 100
    monkeypatch.setattr(seqfile, "save_marks", real)
    await buf.flush()
    assert buf.stats().state == "ok" and len(await drain(buf)) == 101


async def test_missing_marks_file_is_rebuilt_from_the_database(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    buf.put(batch())
    await buf.flush()
    await buf.close()
    (tmp_path / "seq.json").unlink()
    buf2 = await make()
    assert buf2.next_seq("dev1") == 6  # the database is fine: no gap
    assert json.loads((tmp_path / "seq.json").read_text())["next_seq"] == {"dev1": 6}


async def _flushed(buf: Buffer, batches: int) -> None:
    for i in range(batches):
        buf.put(batch(base=i))
        await buf.flush()


async def test_database_put_back_in_time_never_gives_a_seq_again(
        make: Callable[..., Any], tmp_path: Path, caplog: Any) -> None:
    """A clean stop, a copy of buffer.db, a run that commits more, a crash, the old copy put back
    (without -wal/-shm): the seqs of the lost run are never given to other readings."""
    buf = await make(tmp_path / "a")
    await _flushed(buf, 1)  # seq 1..5
    await buf.close()
    old = (tmp_path / "a" / "buffer.db").read_bytes()
    buf2 = await make(tmp_path / "a")
    await _flushed(buf2, 3)  # seq 6..20, published (the marks were raised to 11 + SEQ_RESERVE first)
    crashed = snapshot(tmp_path / "a", tmp_path / "crashed")
    (crashed / "buffer.db").write_bytes(old)
    for suffix in ("-wal", "-shm"):
        (crashed / f"buffer.db{suffix}").unlink()
    caplog.set_level(logging.WARNING, logger="gateway.buffer.queue")
    after = await make(crashed)
    assert after.next_seq("dev1") == 11 + SEQ_RESERVE
    assert len([r for r in caplog.records if "behind the seq marks" in r.message]) == 1
    after.put(batch(base=9))
    await after.flush()
    assert seqs(await drain(after)) == [*upto(5), *range(11 + SEQ_RESERVE, 16 + SEQ_RESERVE)]


async def test_database_put_back_after_a_clean_stop_continues_without_a_gap(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    await _flushed(buf, 1)
    await buf.close()
    old = (tmp_path / "buffer.db").read_bytes()
    buf2 = await make()
    await _flushed(buf2, 3)
    await buf2.close()  # trims the marks to 21: exactly what was committed
    (tmp_path / "buffer.db").write_bytes(old)
    after = await make()
    assert after.next_seq("dev1") == 21


async def test_lost_wal_never_gives_a_seq_again(make: Callable[..., Any], tmp_path: Path) -> None:
    """The -wal of a running buffer is lost (deleted, or not written back before a power cut): the
    database goes back to its last checkpoint, which knows the device at an older seq."""
    buf = await make(tmp_path / "a")
    await _flushed(buf, 1)
    await buf.close()  # checkpointed: the database file says dev1 is at 6
    buf2 = await make(tmp_path / "a")
    await _flushed(buf2, 3)  # 6..20 only in the WAL
    cut = snapshot(tmp_path / "a", tmp_path / "cut")
    (cut / "buffer.db-wal").unlink()
    (cut / "buffer.db-shm").unlink()
    after = await make(cut)
    assert after.next_seq("dev1") == 11 + SEQ_RESERVE and seqs(await drain(after)) == upto(5)


async def test_after_a_reboot_seq_continues_above_the_marks_unless_stopped_cleanly(
        make: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one boot the witness shows a database that lost nothing: a crash leaves no gap. After
    a power cut it cannot (the card may have lost the last writes): the gap is the reserved block."""
    buf = await make(tmp_path / "a")
    await _flushed(buf, 3)
    crashed = snapshot(tmp_path / "a", tmp_path / "crashed")
    await buf.close()
    assert (await make(snapshot(crashed, tmp_path / "same-boot"))).next_seq("dev1") == 16
    monkeypatch.setattr(buffer_mod, "boot_id", lambda: "another boot")
    assert (await make(crashed)).next_seq("dev1") == 6 + SEQ_RESERVE
    assert (await make(tmp_path / "a")).next_seq("dev1") == 16  # stopped cleanly before the reboot

# -- corruption ----------------------------------------------------------------------------------


async def _committed_then_closed(make: Callable[..., Any], n_batches: int) -> None:
    buf = await make()
    for i in range(n_batches):
        buf.put(batch(base=i))
    await buf.flush()
    await buf.close()


@pytest.mark.parametrize("damage", ["random", "truncated", "garbled"])
async def test_corrupt_database_is_moved_aside(
        make: Callable[..., Any], tmp_path: Path, caplog: Any, damage: str) -> None:
    await _committed_then_closed(make, 2000)
    db = tmp_path / "buffer.db"
    size = db.stat().st_size
    if damage == "random":
        db.write_bytes(os.urandom(8192))
    elif damage == "truncated":
        os.truncate(db, size // 2)
    else:
        with db.open("r+b") as f:  # overwrite pages in the middle of the table
            f.seek(size // 2)
            f.write(os.urandom(16384))
    caplog.set_level(logging.ERROR, logger="gateway.buffer.queue")
    buf = await make()
    assert buf.stats().recovered_corrupt == 1 and buf.stats().pending == 0
    assert len([f for f in os.listdir(tmp_path) if f.startswith("buffer.db.corrupt-")]) == 1
    assert len([r for r in caplog.records if "unusable" in r.message]) == 1
    assert buf.next_seq("dev1") == 10_001  # the marks, trimmed by the clean close
    buf.put(batch())
    await buf.flush()
    assert (await drain(buf))[0].seq0 == 10_001


@pytest.mark.parametrize("damage", ["garbled pages, found by a read", "not a database, found by a commit"])
async def test_corruption_found_while_running_starts_a_fresh_file_at_once(
        make: Callable[..., Any], tmp_path: Path, caplog: Any, damage: str, writer: Writer) -> None:
    """The file is damaged under a running buffer: the read or commit that finds it moves it aside
    and goes on in a fresh file, without a restart. What the buffer still held in memory (the batch
    waiting for the commit, the committed one not yet acked) is kept; the older backlog only the
    file held is lost; new seqs continue above the marks."""
    await _committed_then_closed(make, 2000)  # seq 1..10000: a backlog in the database file alone
    buf = await make()
    buf.put(batch(base=7))
    await buf.flush()  # seq 10001..10005, also in memory; the marks are now 20006
    db = tmp_path / "buffer.db"
    with db.open("r+b") as f:
        if damage.startswith("garbled"):
            f.seek(db.stat().st_size // 3)
            f.write(random.Random(1).randbytes(db.stat().st_size // 3))
        else:
            f.write(b"this is no SQLite file!" * 8)
    writer.before_next(lambda s: s.conn.execute("PRAGMA shrink_memory"))  # SQLite reads the file again
    caplog.set_level(logging.ERROR, logger="gateway.buffer.queue")
    buf.put(batch(base=8))
    if damage.startswith("garbled"):
        assert seqs(await drain(buf)) == list(range(10_001, 10_006))  # the read found it
        await buf.flush()
    else:
        await buf.flush()  # the commit found it
    st = buf.stats()
    assert st.recovered_corrupt == 1 and st.state == "ok" and st.pending == 10
    assert len([f for f in os.listdir(tmp_path) if re.fullmatch(r"buffer\.db\.corrupt-\d{8}T\d{6}Z", f)]) == 1
    assert len([r for r in caplog.records if "unusable" in r.message]) == 1
    got = await drain(buf)
    assert [b.values[0] for b in got] == [7, 8]
    assert seqs(got) == [*range(10_001, 10_006), *range(10_006 + SEQ_RESERVE, 10_011 + SEQ_RESERVE)]
    buf.ack([got[0].row])
    buf.put(batch(base=9))
    await buf.flush()
    assert [b.values[0] for b in await drain(buf)] == [8, 9] and buf.stats().pending == 10
    await buf.close()
    reopened = await make()
    assert reopened.stats().recovered_corrupt == 0 and [b.values[0] for b in await drain(reopened)] == [8, 9]


# -- point sets ----------------------------------------------------------------------------------


async def test_point_sets_no_stored_batch_uses_are_pruned(
        make: Callable[..., Any], tmp_path: Path, writer: Writer) -> None:
    """Report by exception makes a new point set for each poll; once their batches are acked they
    go (table and memory), but not one a stored batch still uses, nor a device's current one."""
    buf = await make()
    kept = Batch("dev1", 1, PointSet(("kept",), ("V",)), [1.5])
    buf.put(kept)  # never acked
    steady = PointSet(("a", "b"), (None, None))

    async def poll_and_ack(points: PointSet, i: int) -> None:
        buf.put(Batch("dev1", 2 + i, points, [i, i]))
        await buf.flush()
        buf.ack([b.row for b in await buf.fetch(1, 10**6)])

    for i in range(2 * PRUNE_EVERY):
        await poll_and_ack(PointSet((f"changed{i}", "b"), (None, None)), i)

    def sizes() -> tuple[int, int, int]:  # in the table; in the memory of the store in use
        assert writer.store is not None
        ((stored,),) = query(tmp_path, "SELECT count(*) FROM pointset")
        return stored, len(writer.store.pointsets.ids), len(writer.store.pointsets.info)

    assert sizes()[0] > PRUNE_EVERY
    for i in range(2 * PRUNE_EVERY):
        await poll_and_ack(steady, i)
    assert sizes() == (2, 2, 2)
    (first,) = await drain(buf)
    assert (first.names, first.units, first.values) == (("kept",), ("V",), [1.5])
    await buf.close()
    buf = await make()
    (first,) = await drain(buf)  # read from the database: by the store of the reopened buffer
    assert sizes() == (2, 2, 2)
    assert (first.names, first.units, first.values) == (("kept",), ("V",), [1.5])

# -- cap and eviction ----------------------------------------------------------------------------


async def test_cap_evicts_oldest_and_counts_readings(make: Callable[..., Any]) -> None:
    buf = await make(max_bytes=60)  # a batch of 5 small ints packs to ~6 bytes
    for i in range(20):
        buf.put(batch(base=i))
    await buf.flush()
    st = buf.stats()
    got = await drain(buf)
    assert st.bytes <= 60 and st.pending == 5 * len(got)
    assert st.evicted == 100 - st.pending
    assert [b.values[0] for b in got] == list(range(20 - len(got), 20))  # the newest survive
    await buf.close()
    buf2 = await make(max_bytes=60)
    assert buf2.stats().evicted == st.evicted and buf2.stats().bytes == st.bytes


async def test_unencodable_batch_is_dropped_and_counted(make: Callable[..., Any], caplog: Any) -> None:
    buf = await make()
    buf.put(batch(base=1))
    buf.put(Batch("dev1", 1, POINTS, [object()] * 5))
    buf.put(batch(base=2))
    await buf.flush()
    assert seqs(await drain(buf)) == upto(10)
    assert buf.stats().evicted == 5 and buf.stats().state == "ok"
    assert sum("cannot be encoded" in r.message for r in caplog.records) == 1


def qbatch(base: int) -> Batch:
    """A batch of 5 ints that each pack to 3 bytes: every such batch takes the same room."""
    return Batch("dev1", 1_700_000_000_000 + base, POINTS, [1000 + base * 10 + i for i in range(5)])


def quarantine_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    return query(data_dir, "SELECT row, device, seq0, n, ts, names_units, v, reason FROM quarantine ORDER BY row")


async def test_a_set_aside_batch_leaves_the_stream_and_stays_in_the_file(
        make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    for i in range(3):
        buf.put(qbatch(i))
    await buf.flush()
    bytes_before = buf.stats().bytes
    first, poison, last = await drain(buf)
    buf.quarantine({poison.row: "TypeError: not for JSON"})
    assert [b.row for b in await drain(buf)] == [first.row, last.row]  # at once, before a commit
    await buf.flush()
    st = buf.stats()
    assert (st.pending, st.quarantined, st.evicted, st.bytes) == (10, 5, 0, bytes_before)
    await buf.close()

    (row,) = quarantine_rows(tmp_path)
    assert row[:5] == (poison.row, "dev1", 6, 5, poison.ts) and row[7] == "TypeError: not for JSON"
    assert cbor2.loads(row[5]) == [list(POINTS.names), list(POINTS.units)] and cbor2.loads(row[6]) == poison.values
    again = await make()  # counted across a restart; the database no longer hands it out
    assert again.stats().quarantined == 5 and again.stats().pending == 10
    assert [b.seq0 for b in await drain(again)] == [1, 11]


async def test_the_cap_evicts_set_aside_rows_before_any_reading_to_send(make: Callable[..., Any]) -> None:
    probe = await make()
    probe.put(qbatch(0))
    await probe.flush()
    one = probe.stats().bytes  # the payload bytes of one batch
    (stored,) = await drain(probe)
    probe.ack([stored.row])
    await probe.close()

    buf = await make(max_bytes=4 * one)
    for i in range(1, 5):
        buf.put(qbatch(i))
    await buf.flush()
    got = await drain(buf)
    buf.quarantine({got[1].row: "poison"})
    await buf.flush()
    assert buf.stats().bytes == 4 * one and buf.stats().quarantined == 5
    buf.put(qbatch(5))  # one batch over the cap: the set-aside row makes room, no reading is evicted
    await buf.flush()
    st = buf.stats()
    assert (st.evicted, st.pending, st.bytes) == (0, 20, 4 * one)
    assert [b.values[0] for b in await drain(buf)] == [1010, 1030, 1040, 1050]
    buf.put(qbatch(6))  # nothing set aside left: now the oldest reading goes
    await buf.flush()
    assert buf.stats().evicted == 5 and [b.values[0] for b in await drain(buf)] == [1030, 1040, 1050, 1060]


async def test_a_failed_commit_keeps_the_set_aside_for_the_retry(
        make: Callable[..., Any], tmp_path: Path, writer: Writer) -> None:
    buf = await make()
    buf.put(qbatch(1))
    await buf.flush()
    (stored,) = await drain(buf)
    writer.before_next(fill_disk)
    buf.quarantine({stored.row: "poison"})
    buf.put(BIG)  # fails the transaction after the row was copied to quarantine
    await buf.flush()
    assert buf.stats().state == "degraded" and buf.stats().quarantined == 0
    writer.before_next(free_disk)
    await buf.flush()
    assert buf.stats().state == "ok" and buf.stats().quarantined == 5 and buf.stats().pending == 1
    await buf.close()
    assert [r[0] for r in quarantine_rows(tmp_path)] == [stored.row]


# -- disk errors ---------------------------------------------------------------------------------


async def test_disk_full_degrades_keeps_batches_and_recovers(
        make: Callable[..., Any], caplog: Any, writer: Writer) -> None:
    buf = await make()
    buf.put(batch(base=0))
    await buf.flush()
    writer.before_next(fill_disk)
    buf.put(BIG)
    await buf.flush()
    buf.put(batch(base=3))
    await buf.flush()  # still full: retried, not logged again
    st = buf.stats()
    assert st.state == "degraded" and "full" in (st.reason or "") and st.pending == 11
    assert len(await drain(buf)) == 1 and buf.next_seq("dev1") == 6
    assert sum("degraded" in r.message for r in caplog.records) == 1
    writer.before_next(free_disk)
    await buf.flush()
    got = await drain(buf)
    assert buf.stats().state == "ok" and buf.stats().reason is None
    assert seqs(got) == upto(11) and got[1].values == BIG.values
    assert sum("ok again" in r.message for r in caplog.records) == 1


async def test_insert_error_keeps_acks_for_the_retry(make: Callable[..., Any], writer: Writer) -> None:
    buf = await make()
    buf.put(batch())
    await buf.flush()
    (first,) = await drain(buf)
    writer.before_next(fill_disk)
    buf.ack([first.row])
    buf.put(BIG)  # its insert fails: the disk is full
    await buf.flush()
    assert buf.stats().state == "degraded" and await drain(buf) == []
    writer.before_next(free_disk)
    await buf.flush()
    got = await drain(buf)
    assert [b.seq0 for b in got] == [6] and buf.stats().pending == 1


# -- timer and callback --------------------------------------------------------------------------


async def test_timer_commits_and_wakes_the_publisher(make: Callable[..., Any]) -> None:
    buf = await make(commit_interval=0.01)
    woke = asyncio.Event()
    calls: list[int] = []
    buf.on_commit = lambda: (calls.append(1), woke.set())
    buf.put(batch())
    await asyncio.wait_for(woke.wait(), 5)
    assert len(await drain(buf)) == 1
    buf.ack([b.row for b in await drain(buf)])
    await buf.flush()  # an ack-only commit adds no rows: no wake-up
    assert len(calls) == 1


async def test_close_commits_what_was_put(make: Callable[..., Any]) -> None:
    buf = await make()
    buf.put(batch())
    await buf.close()
    with pytest.raises(RuntimeError):
        buf.put(batch())
    buf2 = await make()
    assert len(await drain(buf2)) == 1


async def test_row_per_batch_and_point_names_stored_once(make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    for i in range(100):
        buf.put(batch(base=i))
    await buf.flush()
    await buf.close()
    with sqlite3.connect(tmp_path / "buffer.db") as conn:
        assert conn.execute("SELECT count(*), sum(n) FROM batch").fetchone() == (100, 500)
        assert conn.execute("SELECT count(*) FROM pointset").fetchone() == (1,)
        assert conn.execute("SELECT value FROM meta WHERE key = 'pending'").fetchone() == (500,)
        names = conn.execute("SELECT count(*) FROM batch WHERE instr(v, 'temp')").fetchone()
    assert names == (0,)


async def test_congested_past_half_the_memory_bound_until_committed(make: Callable[..., Any]) -> None:
    buf = await make(max_pending_readings=100)
    for _ in range(10):
        buf.put(batch(n=5))
    assert not buf.flow.congested()  # 50 waiting: at the half, not past it
    buf.put(batch(n=5))
    assert buf.flow.congested()
    await buf.flush()
    assert not buf.flow.congested()
    assert buf.stats().evicted == 0


def _same(a: list[StoredBatch], b: list[StoredBatch]) -> None:
    assert [(x.row, x.device, x.seq0, x.ts, x.names, x.units, x.values, x.errors, x.unsynced) for x in a] == \
        [(x.row, x.device, x.seq0, x.ts, x.names, x.units, x.values, x.errors, x.unsynced) for x in b]


async def test_memory_serves_what_the_database_would(make: Callable[..., Any], tmp_path: Path) -> None:
    buf = await make()
    buf.put(batch(base=1))
    buf.put(Batch("dev2", 5, POINTS, [1.5, None, True, "x", -2], {1: "timeout"}, (123, "boot-1")))
    buf.put(batch(n=2, base=7))
    await buf.flush()
    buf.put(batch(base=20))
    await buf.flush()
    from_memory = await drain(buf)
    assert len(from_memory) == 4
    pages = [await buf.fetch(0, 6), await buf.fetch(from_memory[1].row, 1)]
    buf.ack([from_memory[0].row])
    after_ack = await drain(buf)
    await buf.close()
    again = await make()
    from_disk = await drain(again)
    _same(after_ack, from_disk)
    _same(from_memory[1:], from_disk)
    _same(pages[0], from_memory[:1])  # 5 + 5 > 6: one batch
    _same(pages[1], from_memory[2:3])  # always at least one


async def test_memory_keeps_at_most_the_in_memory_bound_and_the_database_the_rest(
        make: Callable[..., Any], writer: Writer) -> None:
    buf = await make(max_pending_readings=40)
    for i in range(30):  # 150 readings, committed 5 at a time: far more than 40 kept in memory
        buf.put(batch(base=i))
        await buf.flush()
    rows = [b.row for b in await buf.fetch(0, 10**6)]
    assert writer.fetches == 1  # the oldest rows: read from the database
    assert len(await buf.fetch(rows[-10], 10**6)) == 9 and writer.fetches == 2  # 45 readings: not in memory
    got = await drain(buf)  # from the database first, then from memory
    cursor = 0
    everything: list[StoredBatch] = []
    while page := await buf.fetch(cursor, 10):
        everything += page
        cursor = page[-1].row
    assert seqs(got) == seqs(everything) == upto(150)


async def test_a_quarter_of_the_bound_waiting_commits_before_the_interval(make: Callable[..., Any]) -> None:
    buf = await make(max_pending_readings=40)  # commit_interval: an hour
    committed = asyncio.Event()
    buf.on_commit = committed.set
    buf.put(batch(base=0))  # 5 waiting: not yet
    assert not buf.flow.commit_soon.is_set()
    buf.put(batch(base=1))  # 10 >= 40 // 4
    await asyncio.wait_for(committed.wait(), 10)
    assert seqs(await drain(buf)) == upto(10)


async def test_congested_while_publishing_when_a_busy_gateway_lags_and_relieved_once_fetched(
        make: Callable[..., Any]) -> None:
    buf = await make(max_pending_readings=40)
    for i in range(5):  # 25 committed, not yet fetched: past half of 40
        buf.put(batch(base=i))
        await buf.flush()
    buf.flow.busy = 1.0  # the event loop thread was on CPU all the last interval
    assert buf.flow.congested(publishing=True)
    assert not buf.flow.congested(publishing=False)  # the broker away: keep polling, the disk holds it
    buf.flow.busy = 0.1  # an idle gateway: the link is slow, not the CPU; readings are kept
    assert not buf.flow.congested(publishing=True)
    buf.flow.busy = 1.0
    relieved = asyncio.ensure_future(buf.flow.relief(publishing=True))
    await asyncio.sleep(0)  # relief() starts waiting
    await buf.fetch(0, 10)  # 10 handed out: 15 left, under the half
    await asyncio.wait_for(relieved, 5)  # the commit interval is an hour: fetch relieved it
    assert not buf.flow.congested(publishing=True)


@pytest.mark.serial_only  # measures the CPU share of the loop thread: tests beside it take CPU from it
async def test_busy_share_of_the_loop_thread_is_measured(make: Callable[..., Any]) -> None:
    """flow.busy is the loop thread's CPU time over the wall time of the last commit interval. A thread
    that spins gets a whole core only on an idle machine (on a shared one, far less): compare with
    what this thread, the loop's, was given over the same interval, not with a constant."""
    # Whole seconds: the test sees a new figure a little after the buffer measured it, and on a loaded
    # machine that lag is tens of milliseconds, small against a second, large against 250 ms.
    buf = await make(commit_interval=1.0)
    loop = asyncio.get_running_loop()
    seen = buf.flow.busy
    marks: list[tuple[float, float]] = []  # (wall, thread CPU) where the buffer measured anew
    async with asyncio.timeout(20):
        while len(marks) < 3:  # the loop thread on CPU for part of two whole measured intervals
            buf.put(batch())
            sum(range(20_000))
            await asyncio.sleep(0.001)  # and off it for a while: CPU time, not wall time, is measured
            if buf.flow.busy != seen:
                seen = buf.flow.busy
                marks.append((loop.time(), time.thread_time()))
    (wall0, cpu0), (wall1, cpu1) = marks[-2:]
    assert buf.flow.busy == pytest.approx((cpu1 - cpu0) / (wall1 - wall0), abs=0.12)
