"""The store-and-forward queue: every batch is kept in SQLite until the broker acknowledged it.

``put`` only appends to a list on the event loop. Every ``commit_interval`` (sooner when a
quarter of the in-memory bound waits and the disk is ok) the waiting batches and the acks go to
the database in one fsynced transaction, on the one writer thread that owns the only connection.
Seqs are assigned in that transaction; the per-device high-water marks in ``seq.json`` are raised
first, so a seq never stands for two readings, even if the file is lost. How much may wait in
memory, and when polling holds back, is the buffer's flow control (gateway.buffer.flow).

What a commit stored is also kept in memory (``_fresh``) until acked: a publisher that keeps up is
served from there without a query, and reads the database only to catch up on an older backlog.

A database file found corrupt by a commit or a fetch is moved aside and a fresh one started at
once, as at open: what waited for the commit and what ``_fresh`` holds is stored in the new file
(the fresh batches with their rows and seqs); what only the old file held is lost.

The SQLite side (schema, commits, eviction, recovery) is gateway.buffer.store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.buffer.flow import Flow
from gateway.buffer.store import FIRST_SEQ, FS_RESERVE, FS_SLACK, Counts, Store, is_corrupt
from gateway.model import Batch, StoredBatch

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Passes of the event loop a commit on its grid lets run first: polls due at the same instant
# (gateway.poll.scheduler puts them on the grids of their intervals) hand over their batches in them.
POLL_PASSES = 2

@dataclass(frozen=True, slots=True)
class BufferStats:
    """A cheap snapshot of the buffer for status reports."""

    state: Literal["ok", "degraded"]
    reason: str | None
    pending: int  # readings not yet acked: committed, plus waiting for the next commit
    evicted: int  # readings evicted (cap) or dropped (disk stalled) since the buffer was created
    bytes: int  # payload bytes stored
    recovered_corrupt: int  # corrupt database files moved aside in this run
    quarantined: int = 0  # readings set aside (not encodable for the wire) since the buffer was created


class Buffer:
    """The durable store-and-forward queue between the scheduler and the publisher.

    ``put``, ``ack``, ``stats`` and ``next_seq`` are plain calls on the event loop and never
    touch the disk; ``open``, ``fetch``, ``flush`` and ``close`` await the writer thread. ``flow``
    is its flow control: what the scheduler asks whether to poll (``congested``, ``relief``).
    """

    def __init__(self, data_dir: Path, *, max_bytes: int, commit_interval: float,
                 max_pending_readings: int = 200_000, fs_reserve: int = FS_RESERVE) -> None:
        self.on_commit: Callable[[], None] | None = None
        self.on_state_change: Callable[[], None] | None = None  # degraded <-> ok: republish the status
        self._data_dir, self._max_bytes, self._fs_reserve = Path(data_dir), max_bytes, fs_reserve
        self._interval, self._max_pending = commit_interval, max_pending_readings
        self.flow = Flow(max_pending_readings, commit_interval, lambda: self._state == "ok")
        self._store: Store | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one commit at a time
        self._commits: set[asyncio.Task[None]] = set()
        self._counts = Counts()
        # Committed, un-acked batches by row, oldest first: every such row >= _fresh_from is here.
        self._fresh: dict[int, StoredBatch] = {}
        self._fresh_n = 0  # readings in _fresh
        self._fresh_from = 0
        self._acks: set[int] = set()  # acked, not yet handed to a commit
        self._acks_inflight: frozenset[int] = frozenset()
        self._aside: dict[int, str] = {}  # row -> why it cannot be sent; also in _acks (see quarantine)
        self._recovered = 0
        self._corrupt: BaseException | None = None  # the file is corrupt: move it aside before using it
        self._generation = 0  # files started in this run (a fetch that failed on an older one just retries)
        self._closed = self._evicting = False
        self._bad_devices: set[str] = set()  # devices whose unencodable batch was logged
        self._state: Literal["ok", "degraded"] = "ok"
        self._reason: str | None = None

    async def open(self) -> None:
        """Open or create ``data_dir/buffer.db`` (a corrupt one is set aside), start the commit timer."""
        if self._executor is not None:
            raise RuntimeError("buffer already opened")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-writer")
        try:
            store = self._store = await self._run(Store, self._data_dir, self._max_bytes, self._fs_reserve)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._counts = Counts(store.pending, store.bytes, store.evicted, dict(store.next_seq),
                               quarantined=store.quarantined)
        self._fresh_from = store.next_row  # older rows are read from the database
        self.flow.handed_row = store.next_row - 1
        self._recovered += store.recovered
        self._timer = asyncio.create_task(self._tick(), name="buffer-commit")

    def put(self, batch: Batch) -> None:
        """Queue ``batch`` for the next commit. Never blocks; sheds the oldest if the disk stalls."""
        if self._closed:
            raise RuntimeError("buffer is closed")
        self.flow.put(batch)

    async def fetch(self, after_row: int, max_readings: int) -> list[StoredBatch]:
        """Committed, unacked batches with row > ``after_row``, in row order.

        Adds batches while the total stays within ``max_readings``, but always returns the first
        one if any exists. Raises sqlite3.Error if the database cannot be read.
        """
        if after_row >= self._fresh_from - 1:  # every un-acked row after it is in memory
            return self.flow.handed(self._fetch_fresh(after_row, max_readings))
        skip = frozenset(self._acks | self._acks_inflight)
        generation = self._generation
        try:
            got = await self._run(Store.fetch, self._store, after_row, max_readings, skip)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            async with self._lock:  # not while a commit runs; and only if none recovered meanwhile
                if self._generation == generation:
                    self._corrupt = self._corrupt or exc
                    await self._recover()
            got = await self._run(Store.fetch, self._store, after_row, max_readings, skip)
        if self._acks or self._acks_inflight:  # acked while the query ran
            got = [b for b in got if b.row not in self._acks and b.row not in self._acks_inflight]
        return self.flow.handed(got)

    def _fetch_fresh(self, after_row: int, max_readings: int) -> list[StoredBatch]:
        out: list[StoredBatch] = []
        total = 0
        for row, batch in self._fresh.items():
            if row <= after_row:
                continue
            n = len(batch.values)
            if out and total + n > max_readings:
                break
            out.append(batch)
            total += n
            if total >= max_readings:
                break
        return out

    def ack(self, rows: Iterable[int]) -> None:
        """The broker took these rows: fetch no longer returns them; the next commit deletes them."""
        fresh = self._fresh
        for row in rows:
            self._acks.add(row)
            if (batch := fresh.pop(row, None)) is not None:
                self._fresh_n -= len(batch.values)

    def quarantine(self, rows: Mapping[int, str]) -> None:
        """Set these rows (row -> reason) aside: they cannot be sent (a poison batch). fetch no longer
        returns them; the next commit moves them to the quarantine table, where they count against
        max_bytes (and are the first evicted) until the cap needs their room."""
        self._aside.update(rows)
        self.ack(rows)

    async def flush(self) -> None:
        """Commit everything put so far and apply acks; returns once fsynced.

        If the disk fails, returns anyway with the batches kept in memory: see ``stats().state``.
        """
        await self._commit()

    async def close(self, timeout: float | None = None) -> bool:
        """Flush, checkpoint the WAL, stop the writer thread and close the database.

        With ``timeout`` (seconds), gives up when the disk does not finish in time (a stalled SD
        card): returns False, the writer thread is left to its fate (it cannot be interrupted; a
        process must then exit without joining it, see gateway.cli.main), and what was not committed is
        lost as in a power cut (``uncommitted`` tells how much). Returns True once closed.
        """
        if self._closed:
            return True
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        if self._store is None or self._executor is None:
            return True
        gave_up = False
        try:
            async with asyncio.timeout(timeout):
                await self._commit()
                if self.flow.waiting:
                    logger.error("buffer: closing with %d readings that could not be committed (lost)",
                                 self.flow.waiting)
                await self._run(self._store.close)
        except TimeoutError:
            gave_up = True
        finally:
            # A thread stuck in a write cannot be joined, nor interrupted: leave it behind.
            self._executor.shutdown(wait=not gave_up, cancel_futures=gave_up)
            self._store, self._executor = None, None
        return not gave_up

    @property
    def uncommitted(self) -> tuple[int, int]:
        """(readings put but not committed, acked rows not yet deleted): what a power cut now would
        cost (the acked rows would be sent again)."""
        return self.flow.uncommitted, len(self._acks) + len(self._acks_inflight)

    def stats(self) -> BufferStats:
        """Counters from memory; cheap enough for every status report."""
        c = self._counts
        return BufferStats(self._state, self._reason, c.pending + self.flow.uncommitted,
                           c.evicted + self.flow.dropped, c.bytes, self._recovered, c.quarantined)

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

    async def _tick(self) -> None:
        """Commit on a fixed grid of commit_interval, and at once when put() asks (commit_soon)."""
        loop = asyncio.get_running_loop()
        # On the commit interval's grid of the monotonic clock, in the same wake-up as the polls
        # due then (they run on the grids of their intervals, gateway.poll.scheduler), just after them.
        due = math.ceil(loop.time() / self._interval) * self._interval
        self.flow.sample_load(loop.time())
        while True:
            try:
                async with asyncio.timeout_at(due):
                    await self.flow.commit_soon.wait()
            except TimeoutError:
                for _ in range(POLL_PASSES):
                    await asyncio.sleep(0)
            self.flow.commit_soon.clear()
            try:
                await self._commit()
            except Exception:  # a bug here must not stop committing for good
                logger.exception("buffer: commit failed unexpectedly")
            now = loop.time()
            self.flow.sample_load(now)  # the loop thread's load, for congested()
            while due <= now:  # a commit longer than the interval: the next one starts at once
                due += self._interval

    async def _commit(self) -> None:
        # Shielded: a cancelled caller must not abandon a transaction the thread still runs.
        task = asyncio.create_task(self._commit_locked(), name="buffer-commit-once")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def _commit_locked(self) -> None:
        try:
            await self._commit_body()
        finally:
            self.flow.relieve()

    async def _commit_body(self) -> None:
        async with self._lock:
            if not (self.flow.batches or self._acks or self.flow.dropped) or self._store is None:
                return
            batches, dropped = self.flow.take()
            acks = self._acks_inflight = frozenset(self._acks)
            self._acks, aside, self._aside = set(), self._aside, {}
            try:
                done = await self._store_commit(batches, acks, dropped, aside)
            except Exception as exc:  # disk full, I/O error, seq.json unwritable: keep all, retry
                self._acks, self._acks_inflight = self._acks | acks, frozenset()
                self._aside = aside | self._aside
                self.flow.give_back(batches)
                self._set_state("degraded", f"commit failed: {exc}")
                return
            self._committed(done, dropped)

    async def _store_commit(self, batches: list[Batch], acks: frozenset[int], dropped: int,
                            aside: dict[int, str]) -> Counts:
        """One commit; a corrupt file is replaced by a fresh one first, and the commit made there."""
        assert self._store is not None
        if self._corrupt is None:
            try:
                return await self._run(self._store.commit, batches, acks, dropped, aside)
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                self._corrupt = exc
        await self._recover()
        return await self._run(self._store.commit, batches, acks, dropped, aside)

    async def _recover(self) -> None:
        """Move the corrupt file aside and start a fresh one holding what ``_fresh`` holds (under
        the lock). If no fresh file can be opened, raises: the next commit tries again."""
        store = self._store
        assert store is not None and self._corrupt is not None
        await self._run(store.recover, list(self._fresh.values()), self._corrupt)
        self._corrupt = None
        self._generation += 1
        self._recovered += 1
        self._counts = Counts(store.pending, store.bytes, store.evicted, dict(store.next_seq))
        if self.on_state_change is not None:  # recovered_corrupt changed: republish the status
            self.on_state_change()

    def _committed(self, done: Counts, dropped: int) -> None:
        self._counts = done
        self.flow.committed(dropped, done.stored)
        self._keep_fresh(done)
        self._acks_inflight = frozenset()
        for device, n, why in done.unencodable:
            if device not in self._bad_devices:
                self._bad_devices.add(device)
                logger.error("buffer: a batch of device %s cannot be encoded (%s); dropped %d readings"
                             " (counted as evicted; logged once per device)", device, why, n)
        self._set_state("ok", None)
        self.flow.end_dropping()
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

    def _keep_fresh(self, done: Counts) -> None:
        """Add what the commit stored to _fresh (no fetch has seen those rows, so none is acked);
        drop what was evicted, and the oldest while more than max_pending_readings are kept (the
        database still has them)."""
        fresh = self._fresh
        for batch in done.stored:
            fresh[batch.row] = batch
            self._fresh_n += len(batch.values)
        self.flow.evicted(done.evicted_upto, fresh)  # readings evicted before the publisher got them
        while fresh and (self._fresh_n > self._max_pending or next(iter(fresh)) <= done.evicted_upto):
            row, batch = next(iter(fresh.items()))
            del fresh[row]
            self._fresh_n -= len(batch.values)
            self._fresh_from = max(self._fresh_from, row + 1)

    def _set_state(self, state: Literal["ok", "degraded"], reason: str | None) -> None:
        if state == "degraded" and self._state == "ok":
            logger.error("buffer degraded: %s; keeping readings in memory and retrying", reason)
        elif state == "ok" and self._state == "degraded":
            logger.warning("buffer ok again: commits succeed")
        changed = state != self._state
        self._state, self._reason = state, reason
        if changed and self.on_state_change is not None:
            self.on_state_change()
