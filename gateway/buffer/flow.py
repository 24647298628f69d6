"""The buffer's flow control: how much may wait in memory for the disk, and when polling holds back.

The buffer (gateway.buffer.queue) keeps what it committed until the broker acked it; this is the
part before and beside that:

- the batches put and not yet committed wait here, within ``max_pending_readings``: a quarter of
  it waiting asks for a commit at once (``commit_soon``); past it (the disk stalls) the oldest are
  shed, counted as evicted once a commit stores the count;
- ``congested()`` says when polls are better skipped than made: commits lag, or a busy gateway's
  publisher lags behind what was committed; ``relief()`` is what a skipped poll waits for;
- the publisher's lag (readings committed in this run, not yet handed to it) and the event loop
  thread's load (``busy``), measured on the commit grid.

Runs on the event loop only; nothing here touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from gateway.model import Batch, StoredBatch

logger = logging.getLogger("gateway.buffer.queue")  # one log name for the buffer and its parts

# Share of the event loop thread's time on CPU from which a publisher falling behind means the
# gateway lacks CPU (polls are then skipped); below it, the link is what is slow (readings are kept).
BUSY = 0.5


class Flow:
    """What waits for a commit, the publisher's lag, and the congestion they make.

    ``commits_ok`` tells whether commits succeed (the buffer's state is "ok"): a failing disk is
    retried on the commit grid, not on every put, and is no congestion (polling goes on).
    """

    def __init__(self, max_pending: int, interval: float, commits_ok: Callable[[], bool]) -> None:
        self.max_pending, self.interval = max_pending, interval
        self._commits_ok = commits_ok
        self.batches: deque[Batch] = deque()  # put, not yet handed to a commit
        self.waiting = 0  # readings in ``batches``
        self.inflight = 0  # readings in the commit now running
        self.dropped = 0  # shed, not yet stored as evicted by a commit
        self.dropping = False  # in a shedding episode (logged once)
        self.commit_soon = asyncio.Event()  # a quarter of max_pending waits: commit now
        # The publisher's lag: readings committed in this run in rows above handed_row (the highest
        # row a fetch returned), not yet handed to it. Past half the bound polls are skipped.
        self.lag = 0
        self.handed_row = 0
        self.busy = 0.0  # share of the event loop thread's time on CPU over the last commit interval
        self._since: float | None = None  # start of the current load measurement (loop time)
        self._cpu = 0.0  # the thread's CPU time then
        self._watch_lag = False  # a relief() waits for the lag to ease: handed() relieves it
        self._relief = asyncio.Event()  # set (and replaced) after a commit attempt or when the lag eased

    @property
    def uncommitted(self) -> int:
        """Readings put and not yet committed: waiting, plus in the commit now running."""
        return self.waiting + self.inflight

    def put(self, batch: Batch) -> None:
        """Queue ``batch`` for the next commit. Never blocks; sheds the oldest if the disk stalls."""
        self.batches.append(batch)
        self.waiting += len(batch.values)
        if self.waiting >= self.max_pending // 4:
            if self._commits_ok():  # a failing disk is retried on the grid, not on every put
                self.commit_soon.set()
            if self.waiting + self.inflight > self.max_pending:
                self._shed()

    def take(self) -> tuple[list[Batch], int]:
        """For a commit: the waiting batches (now in flight) and the readings dropped so far."""
        batches = list(self.batches)
        self.batches.clear()
        self.inflight, self.waiting = self.waiting, 0
        return batches, self.dropped

    def give_back(self, batches: list[Batch]) -> None:
        """The commit failed: its batches wait again, ahead of the newer ones, within the bound."""
        self.batches.extendleft(reversed(batches))
        self.waiting, self.inflight = self.waiting + self.inflight, 0
        self._shed()

    def committed(self, dropped: int, stored: Iterable[StoredBatch]) -> None:
        """The commit stored what ``take`` handed it (``dropped`` of the dropped count included) as
        ``stored``: those are now the publisher's lag."""
        self.inflight, self.dropped = 0, self.dropped - dropped
        self.lag += sum(len(b.values) for b in stored)

    def end_dropping(self) -> None:
        """After a commit that succeeded: a shedding episode ends once the bound holds again."""
        if self.dropping and self.waiting <= self.max_pending:
            self.dropping = False
            logger.warning("buffer: commits succeed again; stopped dropping readings")

    def _shed(self) -> None:
        """Drop the oldest waiting batches while more than max_pending readings are uncommitted."""
        while self.batches and self.waiting + self.inflight > self.max_pending:
            n = len(self.batches.popleft().values)
            self.waiting, self.dropped = self.waiting - n, self.dropped + n
            if not self.dropping:
                self.dropping = True
                logger.warning("buffer: more than %d readings waiting for the disk; dropping the oldest"
                               " (counted as evicted)", self.max_pending)

    def handed(self, got: list[StoredBatch]) -> list[StoredBatch]:
        """A fetch handed ``got`` to the publisher: take it off the lag; relieve a wait for the lag
        to ease once it did. Returns ``got``."""
        for batch in got:
            if batch.row > self.handed_row:
                self.handed_row = batch.row
                self.lag -= len(batch.values)
        if self._watch_lag and self.lag <= self.max_pending // 2:
            self._watch_lag = False
            self.relieve()
        return got

    def evicted(self, upto: int, fresh: Mapping[int, StoredBatch]) -> None:
        """A commit evicted the rows up to ``upto``: those the publisher did not get yet are no
        longer its lag (``fresh``: the committed batches kept in memory, by row)."""
        if upto > self.handed_row:
            self.handed_row = upto
            self.lag = sum(len(b.values) for row, b in fresh.items() if row > upto)

    def sample_load(self, now: float) -> None:
        """On the commit grid (``now``: loop time): measure ``busy`` over at least min(interval, 1 s)."""
        if self._since is None:
            self._since, self._cpu = now, time.thread_time()
        elif now - self._since >= min(self.interval, 1.0):
            self.busy = (time.thread_time() - self._cpu) / (now - self._since)
            self._since, self._cpu = now, time.thread_time()

    def congested(self, *, publishing: bool = False) -> bool:
        """True while commits succeed but the pipeline is past its capacity: more than half the
        in-memory bound waits for a commit, or (``publishing``: the broker is connected) the event
        loop's thread is busy (BUSY of its time over the last commit interval: the lag is for want
        of CPU here, not of link) and the publisher lags more than half the bound behind the
        readings committed in this run (so a publisher that keeps up is served from memory).

        The scheduler then skips polls (counted as overruns) instead of making readings the buffer
        would have to drop or that would only pile up: past its capacity, the gateway reads less
        rather than losing more. A backlog that grows while the broker is away or the link is
        slow never stops polling, nor does an older one (from before a restart) while it drains.
        A query: it changes nothing.
        """
        return self._commits_ok() and (self._commits_lag() or self._publisher_lags(publishing))

    async def relief(self, *, publishing: bool = False) -> None:
        """Wait until congestion may be over: the next commit attempt, or commit_interval at most;
        when the publisher's lag is what congests (``publishing`` as for ``congested``), also until
        a fetch eased it. What a skipped poll waits for instead of waking at every interval."""
        if self._commits_ok() and not self._commits_lag() and self._publisher_lags(publishing):
            self._watch_lag = True  # handed() relieves once the lag eased
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._relief.wait(), self.interval)

    def relieve(self) -> None:
        """Wake every relief() waiting (after a commit attempt, or once the lag eased)."""
        self._relief.set()
        self._relief = asyncio.Event()

    def _commits_lag(self) -> bool:
        return self.waiting + self.inflight > self.max_pending // 2

    def _publisher_lags(self, publishing: bool) -> bool:
        return publishing and self.busy >= BUSY and self.lag > self.max_pending // 2
