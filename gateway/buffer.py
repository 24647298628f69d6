"""The store-and-forward queue: every batch is kept in SQLite until the broker acknowledged it.

``put`` only appends to a list on the event loop. About every ``commit_interval`` the waiting
batches and the acks go to the database in one fsynced transaction, on the one writer thread that
owns the only connection. Seqs are assigned in that transaction; the per-device high-water marks
in ``seq.json`` are raised first, so a seq never stands for two readings, even if the file is lost.

On disk (``buffer.db``, WAL mode, synchronous=FULL)::

    meta(key TEXT PRIMARY KEY, value INTEGER)  -- format, pending, bytes, evicted, next_row,
                                               -- and "seq:<device>": the device's next seq
    pointset(id INTEGER PRIMARY KEY, device TEXT, names_units BLOB)   -- cbor [names, units]
    batch(row INTEGER PRIMARY KEY, ps INTEGER, seq0 INTEGER, n INTEGER, ts INTEGER,
          v BLOB, e BLOB)                      -- cbor values; cbor errors or NULL

A row is one batch; its device and point names live once in ``pointset``. A commit dirties few
pages (the last batch page, and meta): what it writes to flash is mostly the payload. Row ids come
from meta's next_row, so they keep growing when the table empties and ``after_row`` skips nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import cbor2

from gateway.model import Batch, PointSet, StoredBatch
from gateway.seqfile import fs_allowance, load_marks, save_marks, set_aside

logger = logging.getLogger(__name__)

DB_NAME = "buffer.db"
MARKS_NAME = "seq.json"
FORMAT = 1
FIRST_SEQ = 1  # a device's first reading; next_seq - 1 is then "the last seq committed" (0: none)
SEQ_RESERVE = 10_000  # seqs reserved per device each time seq.json is rewritten
CHECKPOINT_EVERY = 60  # commits between wal_checkpoint(TRUNCATE)
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
EVICT_CHUNK = 256
# Bytes of the filesystem the database never grows into (the oldest rows are evicted instead): room
# for the WAL (about JOURNAL_SIZE_LIMIT at most) and a catch-up commit, so acks can always be deleted.
FS_RESERVE = 2 * JOURNAL_SIZE_LIMIT
FS_SLACK = 1 << 20  # an eviction episode lasts until the database has this much room again
# SQLite primary result codes that mean "this file cannot be used": IOERR, CORRUPT, NOTADB.
_UNUSABLE_CODES = frozenset({10, 11, 26})

_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pointset(
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, names_units BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batch(
    row INTEGER PRIMARY KEY, ps INTEGER NOT NULL, seq0 INTEGER NOT NULL,
    n INTEGER NOT NULL, ts INTEGER NOT NULL, v BLOB NOT NULL, e BLOB, c BLOB);
INSERT OR IGNORE INTO meta
    VALUES ('format', 1), ('pending', 0), ('bytes', 0), ('evicted', 0), ('next_row', 1);
COMMIT;
"""
_UPSERT_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"

T = TypeVar("T")
# device, points, seq0, n, ts, v, e, c (c: the reading's clock while the wall clock was not synced)
_Row = tuple[str, PointSet, int, int, int, bytes, bytes | None, bytes | None]
_dumps = functools.partial(cbor2.dumps, canonical=True)  # canonical: shortest exact float


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A cheap snapshot of the buffer for status reports."""

    state: Literal["ok", "degraded"]
    reason: str | None
    pending: int  # readings not yet acked: committed, plus waiting for the next commit
    evicted: int  # readings evicted (cap) or dropped (disk stalled) since the buffer was created
    bytes: int  # payload bytes stored
    recovered_corrupt: int  # corrupt database files moved aside in this run


class _CorruptError(sqlite3.DatabaseError):
    """The database opened but failed its integrity check."""


@dataclass(frozen=True, slots=True)
class _Counts:
    """The store's counters after open or a commit, and what that commit did."""

    pending: int = 0
    bytes: int = 0
    evicted: int = 0
    next_seq: dict[str, int] = field(default_factory=dict)
    rows_added: int = 0
    evicted_now: int = 0  # readings evicted by the size cap in this commit
    unencodable: tuple[tuple[str, int, str], ...] = ()  # (device, readings, reason) dropped
    fs_limited: bool = False  # this commit's eviction was for the filesystem, not for max_bytes
    fs_headroom: int = 0  # bytes the database may still grow by on its filesystem


class _Store:
    """The SQLite side of the buffer. Created, used and closed on the writer thread only."""

    def __init__(self, data_dir: Path, max_bytes: int, fs_reserve: int = FS_RESERVE) -> None:
        """Open (or create) the database; a corrupt one is set aside and a fresh one started."""
        self.path, self.marks_path, self.max_bytes = data_dir / DB_NAME, data_dir / MARKS_NAME, max_bytes
        self.fs_reserve, self.fs_limited, self.fs_headroom, self.fs_floor = fs_reserve, False, 0, 0
        self.ps_ids: dict[tuple[str, PointSet], int] = {}
        self.ps_info: dict[int, tuple[str, PointSet]] = {}
        self.next_seq: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.pending = self.bytes = self.evicted = self.commits = self.next_row = 0
        data_dir.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() and (orphan := set_aside(self.path, "orphan")):
            logger.warning("buffer: a WAL without its database was set aside as %s", orphan)
        self.recovered = False
        try:
            self.conn = self._connect()
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if not isinstance(exc, _CorruptError) and code not in _UNUSABLE_CODES:
                raise
            aside = set_aside(self.path, "corrupt")
            logger.error("buffer database %s is unusable (%s): moved aside to %s; started a fresh one,"
                         " its unsent readings are not forwarded", self.path, exc, aside)
            self.recovered = True
            self.conn = self._connect()
        self._reconcile_marks()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)  # autocommit: we BEGIN/COMMIT
        try:
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self, conn: sqlite3.Connection) -> None:
        self.ps_ids, self.ps_info = {}, {}  # forget what a bad file held
        if (mode := conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]) != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        if (problems := [r[0] for r in conn.execute("PRAGMA quick_check(3)")]) != ["ok"]:
            raise _CorruptError("; ".join(problems))
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if meta["format"] != FORMAT:
            raise RuntimeError(f"{self.path}: unknown buffer format {meta['format']}")
        self.pending, self.bytes, self.evicted = meta["pending"], meta["bytes"], meta["evicted"]
        self.next_row = meta["next_row"]
        self.next_seq = {key[4:]: seq for key, seq in meta.items() if key.startswith("seq:")}
        for ps_id, device, blob in conn.execute("SELECT id, device, names_units FROM pointset"):
            try:
                points = PointSet(*(tuple(x) for x in cbor2.loads(blob)))
            except (cbor2.CBORError, ValueError, TypeError) as exc:
                raise _CorruptError(f"point set {ps_id} unreadable: {exc}") from exc
            self.ps_ids[(device, points)], self.ps_info[ps_id] = ps_id, (device, points)

    def _reconcile_marks(self) -> None:
        """Continue seqs above the marks for devices the database does not know; rebuild marks."""
        marks = load_marks(self.marks_path)
        lost = {dev: seq for dev, seq in (marks or {}).items() if dev not in self.next_seq}
        if lost:
            with self.conn:  # autocommit mode: the context manager does BEGIN ... COMMIT
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(_UPSERT_META, [(f"seq:{dev}", seq) for dev, seq in lost.items()])
            self.next_seq.update(lost)
            logger.warning("buffer: %d devices missing from the database; their seq continues from"
                           " the high-water marks in %s", len(lost), self.marks_path)
        self.marks = (marks or {}) | {d: max(s, (marks or {}).get(d, 0)) for d, s in self.next_seq.items()}
        if marks != self.marks:
            save_marks(self.marks_path, self.marks)

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close the connection."""
        self._checkpoint()
        self.conn.close()

    def _checkpoint(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the commit itself is safe; the next checkpoint retries
            logger.debug("buffer: checkpoint failed: %s", exc)

    def commit(self, batches: Sequence[Batch], acks: Iterable[int], dropped: int) -> _Counts:
        """Store ``batches`` with their seqs, delete ``acks``, add ``dropped`` to evicted: one txn."""
        encoded, next_seq, unencodable = self._encode(batches)
        self._reserve(next_seq)
        ps_ids = [self.ps_ids.get((dev, ps)) or self._add_pointset(dev, ps) for dev, ps, *_ in encoded]
        lost = dropped + sum(n for _, n, _ in unencodable)
        with self.conn:  # COMMIT, or ROLLBACK on any error (also when COMMIT itself fails)
            self.conn.execute("BEGIN IMMEDIATE")
            pending, size, evicted_now = self._write(encoded, ps_ids, acks, next_seq, lost)
        self.next_seq.update(next_seq)
        self.next_row += len(encoded)
        self.pending, self.bytes, self.evicted = pending, size, self.evicted + lost + evicted_now
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            self._checkpoint()
        return _Counts(self.pending, self.bytes, self.evicted, dict(self.next_seq), len(encoded),
                       evicted_now, tuple(unencodable), self.fs_limited, self.fs_headroom)

    def _encode(self, batches: Sequence[Batch]) -> tuple[list[_Row], dict[str, int], list[Any]]:
        """Pack each batch and give it its seqs, in put order; set aside what CBOR cannot encode."""
        out: list[_Row] = []
        next_seq: dict[str, int] = {}
        unencodable: list[tuple[str, int, str]] = []
        for b in batches:
            n = len(b.values)
            try:
                v = _dumps(b.values)
                e = None if b.errors is None else _dumps(b.errors)
            except (cbor2.CBORError, ValueError, TypeError) as exc:
                unencodable.append((b.device, n, str(exc)))
                continue
            seq0 = next_seq.get(b.device, self.next_seq.get(b.device, FIRST_SEQ))
            next_seq[b.device] = seq0 + n
            c = None if b.unsynced is None else _dumps(list(b.unsynced))
            out.append((b.device, b.points, seq0, n, b.ts, v, e, c))
        return out, next_seq, unencodable

    def _reserve(self, next_seq: dict[str, int]) -> None:
        """Raise the marks in seq.json (fsynced) before a commit would use seqs above them."""
        over = {dev: seq for dev, seq in next_seq.items() if seq > self.marks.get(dev, 0)}
        if over:
            marks = dict(self.marks)
            marks.update({dev: seq + SEQ_RESERVE for dev, seq in over.items()})
            save_marks(self.marks_path, marks)
            self.marks = marks

    def _write(self, encoded: list[_Row], ps_ids: list[int], acks: Iterable[int],
               next_seq: dict[str, int], lost: int) -> tuple[int, int, int]:
        """The body of a commit transaction; returns the new pending, bytes and readings evicted."""
        conn, stored = self.conn, self._live_bytes()
        conn.executemany("INSERT INTO batch VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(self.next_row + i, ps_id, *rest)
                          for i, (ps_id, (_, _, *rest)) in enumerate(zip(ps_ids, encoded, strict=True))])
        pending = self.pending + sum(r[3] for r in encoded)
        size = self.bytes + sum(len(r[5]) + len(r[6] or b"") for r in encoded)
        for row in acks:
            hit = conn.execute("DELETE FROM batch WHERE row = ? RETURNING n,"
                               " length(v) + ifnull(length(e), 0)", (row,)).fetchone()
            if hit:
                pending, size = pending - hit[0], size - hit[1]
        evicted_n, evicted_b = self._evict(size, stored)
        pending, size = pending - evicted_n, size - evicted_b
        conn.executemany(_UPSERT_META, [
            ("pending", pending), ("bytes", size), ("evicted", self.evicted + lost + evicted_n),
            ("next_row", self.next_row + len(encoded)), *((f"seq:{d}", s) for d, s in next_seq.items())])
        return pending, size, evicted_n

    def _add_pointset(self, device: str, points: PointSet) -> int:
        """Store a device's new point set once, in its own (autocommit) transaction."""
        blob = _dumps([list(points.names), list(points.units)])
        ps_id = self.conn.execute("INSERT INTO pointset(device, names_units) VALUES (?, ?)",
                                  (device, blob)).lastrowid or 0
        self.ps_ids[(device, points)], self.ps_info[ps_id] = ps_id, (device, points)
        return ps_id

    def _evict(self, size: int, stored: int) -> tuple[int, int]:
        """Delete the oldest rows until the payload fits in max_bytes and the live pages in what the
        filesystem can give, or in ``stored`` (live bytes before the commit) if that is more; return
        readings, bytes. Evicted pages stay in the file for later commits: a filesystem filled by
        anything else stops the growth without costing the rows already stored."""
        conn = self.conn
        readings = freed = last = 0
        allowed = fs_allowance(self.path, self.fs_reserve)
        if allowed is None:  # cannot tell: only max_bytes applies
            allowed = 1 << 62
        elif allowed < stored:  # others took the room: hold what the file holds, no less (nor growth)
            allowed = self.fs_floor = max(stored, self.fs_floor)
        else:
            self.fs_floor = 0
        self.fs_limited = False
        while True:
            over, short = size - freed - self.max_bytes, self._live_bytes() - allowed
            self.fs_headroom = -short
            if over <= 0 and short <= 0:
                break
            self.fs_limited = self.fs_limited or short > over
            chunk = conn.execute("SELECT row, n, length(v) + ifnull(length(e), 0) FROM batch"
                                 " ORDER BY row LIMIT ?", (EVICT_CHUNK,)).fetchall()
            if not chunk:
                break
            excess = max(over, short)  # a payload byte takes at least a byte of a page
            for row, n, nbytes in chunk:
                readings, freed, last, excess = readings + n, freed + nbytes, row, excess - nbytes
                if excess <= 0:
                    break
            conn.execute("DELETE FROM batch WHERE row <= ?", (last,))
        return readings, freed

    def _live_bytes(self) -> int:
        """Bytes of the database's pages in use (its size less its free pages)."""
        pages = [self.conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")]
        return (pages[0] - pages[1]) * pages[2]

    def fetch(self, after_row: int, max_readings: int, skip: frozenset[int]) -> list[StoredBatch]:
        """Rows after ``after_row`` in row order, up to ``max_readings`` readings (at least one row)."""
        out: list[StoredBatch] = []
        total = 0
        cur = self.conn.execute(
            "SELECT row, ps, seq0, n, ts, v, e, c FROM batch WHERE row > ? ORDER BY row", (after_row,))
        try:
            for row, ps_id, seq0, n, ts, v, e, c in cur:
                if row in skip:
                    continue
                if out and total + n > max_readings:
                    break
                device, points = self.ps_info[ps_id]
                out.append(StoredBatch(row, device, seq0, ts, points.names, points.units,
                                       cbor2.loads(v), None if e is None else cbor2.loads(e),
                                       None if c is None else tuple(cbor2.loads(c))))
                total += n
                if total >= max_readings:
                    break
        finally:
            cur.close()
        return out


class Buffer:
    """The durable store-and-forward queue between the scheduler and the publisher.

    ``put``, ``ack``, ``stats`` and ``next_seq`` are plain calls on the event loop and never
    touch the disk; ``open``, ``fetch``, ``flush`` and ``close`` await the writer thread.
    """

    def __init__(self, data_dir: Path, *, max_bytes: int, commit_interval: float,
                 max_pending_readings: int = 200_000, fs_reserve: int = FS_RESERVE) -> None:
        self.on_commit: Callable[[], None] | None = None
        self.on_state_change: Callable[[], None] | None = None  # degraded <-> ok: republish the status
        self._data_dir, self._max_bytes, self._fs_reserve = Path(data_dir), max_bytes, fs_reserve
        self._interval, self._max_pending = commit_interval, max_pending_readings
        self._store: _Store | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one commit at a time
        self._commits: set[asyncio.Task[None]] = set()
        self._counts = _Counts()
        self._waiting: deque[Batch] = deque()  # put, not yet handed to a commit
        self._waiting_n = self._inflight_n = 0  # readings waiting / in the commit now running
        self._acks: set[int] = set()  # acked, not yet handed to a commit
        self._acks_inflight: frozenset[int] = frozenset()
        self._dropped = 0  # dropped while the disk stalled, not yet added to meta's evicted
        self._recovered = 0
        self._closed = self._dropping = self._evicting = False
        self._bad_devices: set[str] = set()  # devices whose unencodable batch was logged
        self._state: Literal["ok", "degraded"] = "ok"
        self._reason: str | None = None

    async def open(self) -> None:
        """Open or create ``data_dir/buffer.db`` (a corrupt one is set aside), start the commit timer."""
        if self._executor is not None:
            raise RuntimeError("buffer already opened")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-writer")
        try:
            store = self._store = await self._run(_Store, self._data_dir, self._max_bytes, self._fs_reserve)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._counts = _Counts(store.pending, store.bytes, store.evicted, dict(store.next_seq))
        self._recovered += store.recovered
        self._timer = asyncio.create_task(self._tick(), name="buffer-commit")

    def put(self, batch: Batch) -> None:
        """Queue ``batch`` for the next commit. Never blocks; sheds the oldest if the disk stalls."""
        if self._closed:
            raise RuntimeError("buffer is closed")
        self._waiting.append(batch)
        self._waiting_n += len(batch.values)
        if self._waiting_n + self._inflight_n > self._max_pending:
            self._shed()

    async def fetch(self, after_row: int, max_readings: int) -> list[StoredBatch]:
        """Committed, unacked batches with row > ``after_row``, in row order.

        Adds batches while the total stays within ``max_readings``, but always returns the first
        one if any exists. Raises sqlite3.Error if the database cannot be read.
        """
        skip = frozenset(self._acks | self._acks_inflight)
        got = await self._run(_Store.fetch, self._store, after_row, max_readings, skip)
        if self._acks or self._acks_inflight:  # acked while the query ran
            got = [b for b in got if b.row not in self._acks and b.row not in self._acks_inflight]
        return got

    def ack(self, rows: Iterable[int]) -> None:
        """The broker took these rows: fetch no longer returns them; the next commit deletes them."""
        self._acks.update(rows)

    async def flush(self) -> None:
        """Commit everything put so far and apply acks; returns once fsynced.

        If the disk fails, returns anyway with the batches kept in memory: see ``stats().state``.
        """
        await self._commit()

    async def close(self) -> None:
        """Flush, checkpoint the WAL, stop the writer thread and close the database."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        if self._store is None or self._executor is None:
            return
        try:
            await self._commit()
            if self._waiting_n:
                logger.error("buffer: closing with %d readings that could not be committed (lost)",
                             self._waiting_n)
            await self._run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)
            self._store, self._executor = None, None

    def congested(self) -> bool:
        """True while commits are succeeding but more than half the in-memory bound waits for them.

        The scheduler then skips polls (counted as overruns) instead of making readings the buffer
        would have to drop: past its capacity, the gateway reads less rather than losing more.
        """
        return self._state == "ok" and self._waiting_n + self._inflight_n > self._max_pending // 2

    def stats(self) -> BufferStats:
        """Counters from memory; cheap enough for every status report."""
        c = self._counts
        return BufferStats(self._state, self._reason, c.pending + self._waiting_n + self._inflight_n,
                           c.evicted + self._dropped, c.bytes, self._recovered)

    def next_seq(self, device: str) -> int:
        """The seq the next committed reading of ``device`` will get (seqs are given at commit).

        Starts at 1, so ``next_seq(device) - 1`` is the last seq committed (0: none yet).
        """
        return self._counts.next_seq.get(device, FIRST_SEQ)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("buffer is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _call(self, fn: Callable[[_Store], T]) -> T:
        """Run ``fn(store)`` on the writer thread (a test hook)."""
        return await self._run(fn, self._store)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._commit()
            except Exception:  # a bug here must not stop committing for good
                logger.exception("buffer: commit failed unexpectedly")

    async def _commit(self) -> None:
        # Shielded: a cancelled caller must not abandon a transaction the thread still runs.
        task = asyncio.create_task(self._commit_locked(), name="buffer-commit-once")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def _commit_locked(self) -> None:
        async with self._lock:
            if not (self._waiting or self._acks or self._dropped) or self._store is None:
                return
            batches, dropped = list(self._waiting), self._dropped
            self._waiting.clear()
            self._inflight_n, self._waiting_n = self._waiting_n, 0
            acks = self._acks_inflight = frozenset(self._acks)
            self._acks = set()
            try:
                done = await self._run(self._store.commit, batches, acks, dropped)
            except Exception as exc:  # disk full, I/O error, seq.json unwritable: keep all, retry
                self._waiting.extendleft(reversed(batches))
                self._waiting_n, self._inflight_n = self._waiting_n + self._inflight_n, 0
                self._acks, self._acks_inflight = self._acks | acks, frozenset()
                self._shed()
                self._set_state("degraded", f"commit failed: {exc}")
                return
            self._committed(done, dropped)

    def _committed(self, done: _Counts, dropped: int) -> None:
        self._counts, self._dropped = done, self._dropped - dropped
        self._inflight_n, self._acks_inflight = 0, frozenset()
        for device, n, why in done.unencodable:
            if device not in self._bad_devices:
                self._bad_devices.add(device)
                logger.error("buffer: a batch of device %s cannot be encoded (%s); dropped %d readings"
                             " (counted as evicted; logged once per device)", device, why, n)
        self._set_state("ok", None)
        if self._dropping and self._waiting_n <= self._max_pending:
            self._dropping = False
            logger.warning("buffer: commits succeed again; stopped dropping readings")
        if done.evicted_now and not self._evicting:
            cap = (f"filesystem's limit (it keeps {self._fs_reserve >> 20} MB free)" if done.fs_limited
                   else f"{self._max_bytes}-byte cap")
            logger.warning("buffer: over its %s; evicting the oldest readings", cap)
        if done.rows_added:  # an episode ends with a commit that added rows, evicted none, left room
            self._evicting = bool(done.evicted_now) or (self._evicting and done.fs_headroom < FS_SLACK)
            try:
                if self.on_commit is not None:
                    self.on_commit()
            except Exception:
                logger.exception("buffer: on_commit callback failed")

    def _shed(self) -> None:
        """Drop the oldest waiting batches while more than max_pending_readings are uncommitted."""
        while self._waiting and self._waiting_n + self._inflight_n > self._max_pending:
            b = self._waiting.popleft()
            n = len(b.values)
            self._waiting_n, self._dropped = self._waiting_n - n, self._dropped + n
            if not self._dropping:
                self._dropping = True
                logger.warning("buffer: more than %d readings waiting for the disk; dropping the oldest"
                               " (counted as evicted)", self._max_pending)

    def _set_state(self, state: Literal["ok", "degraded"], reason: str | None) -> None:
        if state == "degraded" and self._state == "ok":
            logger.error("buffer degraded: %s; keeping readings in memory and retrying", reason)
        elif state == "ok" and self._state == "degraded":
            logger.warning("buffer ok again: commits succeed")
        changed = state != self._state
        self._state, self._reason = state, reason
        if changed and self.on_state_change is not None:
            self.on_state_change()
