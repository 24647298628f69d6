"""The buffer's SQLite side, run only on the buffer's writer thread (see gateway.buffer.queue):
one connection, one fsynced transaction per commit, seqs assigned in it.

On disk (``buffer.db``, WAL mode, synchronous=FULL; ``PRAGMA user_version``: its schema version,
see gateway.buffer.schema for what an older gateway does with a newer file)::

    meta(key TEXT PRIMARY KEY, value INTEGER)  -- format, id, pending, bytes, evicted, next_row,
                                               -- quarantined, and "seq:<device>": the device's next seq
    pointset(id INTEGER PRIMARY KEY, device TEXT, names_units BLOB)   -- cbor [names, units]
    batch(row INTEGER PRIMARY KEY, ps INTEGER, seq0 INTEGER, n INTEGER, ts INTEGER,
          v BLOB, e BLOB, c BLOB)              -- cbor values; cbor errors or NULL; cbor
                                               -- [monotonic ms, boot id] if read before the clock synced
    quarantine(row INTEGER PRIMARY KEY, device TEXT, seq0 INTEGER, n INTEGER, ts INTEGER,
               names_units BLOB, v BLOB, e BLOB, c BLOB, reason TEXT)  -- set aside: not encodable
                                               -- for the wire; self-contained, to be looked at

A row is one batch; its device and point names live once in ``pointset``. A commit dirties few
pages (the last batch page, and meta): what it writes to flash is mostly the payload. Row ids come
from meta's next_row, so they keep growing when the table empties and ``after_row`` skips nothing.
A batch the publisher cannot encode is moved to ``quarantine`` (its bytes still count against
``max_bytes``, and the cap evicts set-aside rows before any reading still to be sent: see
gateway.buffer.cap). Point sets no stored row uses are pruned (gateway.buffer.pointsets).

Seqs resume above both the database and ``seq.json``: the database may have gone back in time (an
older copy put back, a lost WAL) while the marks (gateway.buffer.seqfile.Marks), reserved and fsynced
before use, cannot have. After a crash of the process alone the witness (seqfile.Witness) shows that
the database lost nothing, and a clean close trims the marks to what was committed: then seq
continues without a gap.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from gateway.buffer import schema
from gateway.buffer.cap import Cap, live_bytes
from gateway.buffer.pointsets import PointSets
from gateway.buffer.seqfile import Marks, Witness, boot_id, set_aside
from gateway.model import Batch, PointSet, StoredBatch

logger = logging.getLogger("gateway.buffer.queue")  # one log name for the buffer and its store

DB_NAME = "buffer.db"
MARKS_NAME = "seq.json"
WITNESS_NAME = "seq.witness"
FIRST_SEQ = 1  # a device's first reading; next_seq - 1 is then "the last seq committed" (0: none)
CHECKPOINT_EVERY = 60  # commits between wal_checkpoint(TRUNCATE)
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
# Small pages: a commit rewrites every page it touches (the last data page, meta, page 1, the
# freelist) in the WAL and again at the checkpoint, so the page size is what a commit costs the
# SD card beyond its payload: 1 KiB pages write about a quarter less per reading than 4 KiB ones.
PAGE_SIZE = 1024
# The page cache: commits append at the end and delete at the start, and fetch mostly reads
# what was just written, so a small cache does (SQLite's default is 2 MiB).
CACHE_KIB = 256
# Bytes of the filesystem the database never grows into (the oldest rows are evicted instead): room
# for the WAL (about JOURNAL_SIZE_LIMIT at most) and a catch-up commit, so acks can always be deleted.
FS_RESERVE = 2 * JOURNAL_SIZE_LIMIT
FS_SLACK = 1 << 20  # an eviction episode lasts until the database has this much room again
# SQLite primary result codes that mean "this file cannot be used": IOERR, CORRUPT, NOTADB. At run
# time only the last two: an I/O error there is the disk's (degraded, retried), not the file's.
_UNUSABLE_CODES = frozenset({10, 11, 26})
_CORRUPT_CODES = frozenset({11, 26})

_SCHEMA = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pointset(
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, names_units BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batch(
    row INTEGER PRIMARY KEY, ps INTEGER NOT NULL, seq0 INTEGER NOT NULL,
    n INTEGER NOT NULL, ts INTEGER NOT NULL, v BLOB NOT NULL, e BLOB, c BLOB);
CREATE TABLE IF NOT EXISTS quarantine(
    row INTEGER PRIMARY KEY, device TEXT NOT NULL, seq0 INTEGER NOT NULL, n INTEGER NOT NULL,
    ts INTEGER NOT NULL, names_units BLOB NOT NULL, v BLOB NOT NULL, e BLOB, c BLOB, reason TEXT NOT NULL);
INSERT OR IGNORE INTO meta
    VALUES ('format', {schema.FORMAT}), ('pending', 0), ('bytes', 0), ('evicted', 0), ('next_row', 1),
           ('quarantined', 0);
COMMIT;
"""
_DELETE_ACKED = ("DELETE FROM batch WHERE row IN (SELECT value FROM json_each(?))"
                 " RETURNING n, length(v) + ifnull(length(e), 0), ps")
# Copies batch rows (a JSON object: row -> reason) with their device and point names into quarantine.
_SET_ASIDE = ("INSERT INTO quarantine SELECT b.row, p.device, b.seq0, b.n, b.ts, p.names_units, b.v, b.e, b.c,"
              " r.value FROM json_each(?) AS r JOIN batch AS b ON b.row = CAST(r.key AS INTEGER)"
              " JOIN pointset AS p ON p.id = b.ps RETURNING n, length(v) + ifnull(length(e), 0)")
_UPSERT_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"

# device, points, seq0, n, ts, v, e, c (c: the reading's clock while the wall clock was not synced)
_Row = tuple[str, PointSet, int, int, int, bytes, bytes | None, bytes | None]
_dumps = functools.partial(cbor2.dumps, canonical=True)  # canonical: shortest exact float


class _CorruptError(sqlite3.DatabaseError):
    """The database opened but failed its integrity check, or holds a row that cannot be read."""


def is_corrupt(exc: BaseException) -> bool:
    """True if ``exc`` says the database file is corrupt (not that the disk failed)."""
    if isinstance(exc, _CorruptError):
        return True
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("Could not decode to UTF-8"):
        return True  # raised by Python's sqlite3 for a TEXT value where only numbers and BLOBs were written
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in _CORRUPT_CODES


@dataclass(frozen=True, slots=True)
class Counts:
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
    stored: tuple[StoredBatch, ...] = ()  # the batches this commit stored, as fetch would return them
    evicted_upto: int = 0  # the highest row this commit evicted (0: none)
    quarantined: int = 0  # readings set aside (not encodable for the wire) since the database was created


class Store:
    """The SQLite side of the buffer. Created, used and closed on the writer thread only."""

    def __init__(self, data_dir: Path, max_bytes: int, fs_reserve: int = FS_RESERVE) -> None:
        """Open (or create) the database; a corrupt one is set aside and a fresh one started."""
        self.path, self.marks_path = data_dir / DB_NAME, data_dir / MARKS_NAME
        self.cap = Cap(self.path, max_bytes, fs_reserve)
        self.pointsets = PointSets()
        self.next_seq: dict[str, int] = {}
        self.marks = Marks(self.marks_path)
        self.pending = self.bytes = self.evicted = self.commits = self.next_row = 0
        self.quarantined = self.db_id = 0
        data_dir.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() and (orphan := set_aside(self.path, "orphan")):
            logger.warning("buffer: a WAL without its database was set aside as %s", orphan)
        self.witness = Witness(data_dir / WITNESS_NAME, boot_id())
        self.recovered = False
        newer = False
        try:
            self.conn = self._connect()
        except schema.NewerSchema as exc:
            newer = True
            self._set_aside_newer(exc)
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if not isinstance(exc, _CorruptError) and code not in _UNUSABLE_CODES:
                raise
            self._start_fresh(exc)
        reached = self.witness.reached(self.db_id)
        self._reconcile_marks(complete=reached is not None and self.next_row >= reached, quiet=newer)

    def _start_fresh(self, exc: BaseException, kept: str = "") -> None:
        """Move the unusable file aside (loudly) and open a fresh one in its place."""
        aside = set_aside(self.path, "corrupt")
        logger.error("buffer database %s is unusable (%s): moved aside to %s; started a fresh one,"
                     " %sits unsent readings are not forwarded", self.path, exc, aside, kept)
        self.recovered = True
        self.conn = self._connect()

    def _set_aside_newer(self, exc: schema.NewerSchema) -> None:
        """Keep a newer gateway's file whole for it (one log line) and open a fresh one in its place."""
        aside = set_aside(self.path, "newer")
        logger.error("buffer database %s was written by a newer gateway (%s): set aside, kept whole, as %s;"
                     " its unsent readings are not sent by this version; started a fresh one, seq continues"
                     " above the marks in %s", self.path, exc, aside, self.marks_path)
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)  # autocommit: we BEGIN/COMMIT
        try:
            self._load(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self, conn: sqlite3.Connection) -> None:
        self.pointsets = PointSets()  # forget a bad file
        version = schema.check(conn)  # before anything is written: a newer file stays as it is
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only on a new database
        if (mode := conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]) != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        if (problems := [r[0] for r in conn.execute("PRAGMA quick_check(3)")]) != ["ok"]:
            raise _CorruptError("; ".join(problems))
        conn.executescript(_SCHEMA)
        schema.migrate(conn, version)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (secrets.randbits(62),))  # this file's
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        self.pending, self.bytes, self.evicted = meta["pending"], meta["bytes"], meta["evicted"]
        self.next_row, self.quarantined, self.db_id = meta["next_row"], meta["quarantined"], meta["id"]
        self.next_seq = {key[4:]: seq for key, seq in meta.items() if key.startswith("seq:")}
        try:
            self.pointsets.load(conn, self.next_row)
        except ValueError as exc:
            raise _CorruptError(str(exc)) from exc

    def _reconcile_marks(self, *, complete: bool, quiet: bool = False) -> None:
        """Continue each device's seq above the highest of the database and the marks; rebuild marks.
        ``quiet``: the reason (a file set aside) is logged already.

        The marks are reserved and fsynced before a commit uses them, so they cover everything ever
        published, also when the database went back in time (see Marks.ahead_of).
        """
        if ahead := self.marks.ahead_of(self.next_seq, complete=complete):
            with self.conn:  # autocommit mode: the context manager does BEGIN ... COMMIT
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(_UPSERT_META, [(f"seq:{dev}", seq) for dev, seq in ahead.items()])
            self.next_seq.update(ahead)
            if not quiet:
                logger.warning("buffer: the database %s is behind the seq marks in %s for %d devices (a power"
                               " cut, a copy put back or lost writes); their seq continues above the marks",
                               self.path, self.marks_path, len(ahead))
        self.marks.cover(self.next_seq)

    def close(self) -> None:
        """Checkpoint the WAL into the database file, trim the marks to it and close the connection."""
        self._checkpoint()
        try:
            self.marks.trim(self.next_seq)
        except OSError as exc:  # the higher marks stay: safe, only a gap at the next start
            logger.warning("buffer: seq marks %s not trimmed: %s", self.marks_path, exc)
        self.witness.close()
        self.conn.close()

    def _checkpoint(self) -> None:
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the commit itself is safe; the next checkpoint retries
            logger.debug("buffer: checkpoint failed: %s", exc)

    def commit(self, batches: Sequence[Batch], acks: Collection[int], dropped: int,
               aside: Mapping[int, str] | None = None) -> Counts:
        """Store ``batches`` with their seqs, delete ``acks``, add ``dropped`` to evicted, move the
        rows of ``aside`` (row -> reason) to quarantine: one txn."""
        encoded, kept, next_seq, unencodable = self._encode(batches)
        if aside:
            acks = {*acks, *aside}
        self.marks.reserve(next_seq)
        pointsets, prune_pass = self.pointsets, PointSets.pass_due(self.commits)
        ps_ids = [pointsets.id_of(self.conn, dev, ps, self.next_row) for dev, ps, *_ in encoded]
        prune = pointsets.unused(ps_ids) if prune_pass else []
        lost = dropped + sum(n for _, n, _ in unencodable)
        released: list[int] = []  # the point sets of the rows this commit deletes
        with self.conn:  # COMMIT, or ROLLBACK on any error (also when COMMIT itself fails)
            self.conn.execute("BEGIN IMMEDIATE")
            set_aside, aside_bytes = self._set_aside(aside) if aside else (0, 0)
            pending, size, evicted_now = self._write(encoded, ps_ids, acks, next_seq, lost, released, aside_bytes)
            if prune:
                pointsets.delete(self.conn, prune)
        pointsets.committed(enumerate(ps_ids, self.next_row), released, prune,
                            pass_at=self.next_row if prune_pass else None)
        if encoded:  # before the publisher can see these rows: a crash now keeps their seqs
            self.witness.write(self.db_id, self.next_row + len(encoded))
        self.next_seq.update(next_seq)
        self.quarantined += set_aside
        stored = tuple(StoredBatch(self.next_row + i, b.device, seq0, b.ts, b.points.names, b.points.units,
                                   b.values, b.errors, b.unsynced)
                       for i, (b, (_, _, seq0, *_)) in enumerate(zip(kept, encoded, strict=True)))
        self.next_row += len(encoded)
        self.pending, self.bytes, self.evicted = pending, size, self.evicted + lost + evicted_now
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            self._checkpoint()
        return Counts(self.pending, self.bytes, self.evicted, dict(self.next_seq), len(encoded),
                       evicted_now, tuple(unencodable), self.cap.fs_limited, self.cap.fs_headroom, stored,
                       self.cap.evicted_upto, self.quarantined)

    def _encode(self, batches: Sequence[Batch]) -> tuple[list[_Row], list[Batch], dict[str, int], list[Any]]:
        """Pack each batch and give it its seqs, in put order; set aside what CBOR cannot encode."""
        out: list[_Row] = []
        kept: list[Batch] = []
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
            kept.append(b)
        return out, kept, next_seq, unencodable

    def _set_aside(self, aside: Mapping[int, str]) -> tuple[int, int]:
        """Copy the rows of ``aside`` into quarantine (the acks then delete them from batch);
        return the readings and the payload bytes moved (they stay in the buffer's bytes)."""
        moved = self.conn.execute(_SET_ASIDE, (json.dumps(aside),)).fetchall()
        readings = sum(n for n, _ in moved)
        if readings:
            self.conn.execute(_UPSERT_META, ("quarantined", self.quarantined + readings))
        return readings, sum(nbytes for _, nbytes in moved)

    def _write(self, encoded: list[_Row], ps_ids: list[int], acks: Collection[int],
               next_seq: dict[str, int], lost: int, released: list[int],
               aside_bytes: int = 0) -> tuple[int, int, int]:
        """The body of a commit transaction; returns the new pending, bytes and readings evicted, and
        adds the point set of each row it deletes to ``released``. ``aside_bytes``: bytes of acked
        rows that stay stored (moved to quarantine)."""
        conn, stored = self.conn, live_bytes(self.conn)
        conn.executemany("INSERT INTO batch VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(self.next_row + i, ps_id, *rest)
                          for i, (ps_id, (_, _, *rest)) in enumerate(zip(ps_ids, encoded, strict=True))])
        pending = self.pending + sum(r[3] for r in encoded)
        size = self.bytes + aside_bytes + sum(len(r[5]) + len(r[6] or b"") for r in encoded)
        if acks:  # one statement for all: the rows as a JSON array
            for n, nbytes, ps_id in conn.execute(_DELETE_ACKED, (json.dumps(list(acks)),)).fetchall():
                pending, size = pending - n, size - nbytes
                released.append(ps_id)
        evicted_n, evicted_b = self.cap.evict(conn, size, stored, released)
        pending, size = pending - evicted_n, size - evicted_b
        conn.executemany(_UPSERT_META, [
            ("pending", pending), ("bytes", size), ("evicted", self.evicted + lost + evicted_n),
            ("next_row", self.next_row + len(encoded)), *((f"seq:{d}", s) for d, s in next_seq.items())])
        return pending, size, evicted_n

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
                device, points = self.pointsets[ps_id]
                out.append(StoredBatch(row, device, seq0, ts, points.names, points.units,
                                       cbor2.loads(v), None if e is None else cbor2.loads(e),
                                       None if c is None else tuple(cbor2.loads(c))))
                total += n
                if total >= max_readings:
                    break
        except (KeyError, cbor2.CBORError, ValueError, TypeError) as exc:  # not what was written
            raise _CorruptError(f"a stored row cannot be read: {exc!r}") from exc
        finally:
            cur.close()
        return out

    def recover(self, keep: Sequence[StoredBatch], exc: BaseException) -> None:
        """The file turned out corrupt while running: move it aside and start a fresh one, as at open
        (seqs continue above the marks). Row ids go on from where they were (the publisher's cursor
        and acks stay valid) and so does the evicted count; ``keep`` (committed batches not acked
        yet that the buffer still holds in memory) is stored again as it was, same rows and seqs."""
        next_row, evicted = self.next_row, self.evicted
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        # Raises if no fresh file can be opened: the buffer tries again at its next commit.
        self._start_fresh(exc, f"{sum(len(b) for b in keep)} readings held in memory go on; the rest of ")
        self._reconcile_marks(complete=False)
        rows: list[tuple[Any, ...]] = []
        for b in keep:
            points = PointSet(b.names, b.units)
            ps_id = self.pointsets.id_of(self.conn, b.device, points, self.next_row)
            v, e = _dumps(b.values), None if b.errors is None else _dumps(b.errors)
            rows.append((b.row, ps_id, b.seq0, len(b), b.ts, v, e,
                         None if b.unsynced is None else _dumps(list(b.unsynced))))
        pending, size = sum(r[3] for r in rows), sum(len(r[5]) + len(r[6] or b"") for r in rows)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT INTO batch VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.conn.executemany(_UPSERT_META, [("pending", pending), ("bytes", size), ("evicted", evicted),
                                                 ("next_row", max(next_row, self.next_row))])
        self.pointsets.stored((row[0], row[1]) for row in rows)
        self.pending, self.bytes, self.evicted = pending, size, evicted
        self.next_row = self.pointsets.mark = max(next_row, self.next_row)
        self.witness.write(self.db_id, self.next_row)
