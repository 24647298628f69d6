"""The store-and-forward queue: every batch is kept in SQLite until the broker acknowledged it.

``put`` only appends to a list on the event loop. About every ``commit_interval`` the waiting
batches and the acks go to the database in one fsynced transaction, on the one writer thread that
owns the only connection. Seqs are assigned in that transaction; the per-device high-water marks
in ``seq.json`` are raised first, so a seq never stands for two readings, even if the file is lost.

The SQLite side (schema, commits, eviction, recovery) is gateway.store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.model import Batch, StoredBatch
from gateway.store import FIRST_SEQ, FS_RESERVE, FS_SLACK, _Counts, _Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class BufferStats:
    """A cheap snapshot of the buffer for status reports."""

    state: Literal["ok", "degraded"]
    reason: str | None
    pending: int  # readings not yet acked: committed, plus waiting for the next commit
    evicted: int  # readings evicted (cap) or dropped (disk stalled) since the buffer was created
    bytes: int  # payload bytes stored
    recovered_corrupt: int  # corrupt database files moved aside in this run


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
