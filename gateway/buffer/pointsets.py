"""The point sets of the buffer database: a device's point names and units, stored once.

A batch row names its device and points by a point set id (``batch.ps``), so a row holds only its
values. Report by exception makes a new point set for many polls; those no stored row uses are
pruned every PRUNE_EVERY commits. Stored rows are counted per point set in memory as they come and
go, so a pass costs the number of point sets, never a query over the rows; a set not used since
the last pass is kept no longer (a device's current one stays).

Run on the buffer's writer thread only, as part of gateway.buffer.store; the SQL of the
``pointset`` table is here, the table itself is created with the others by the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable

import cbor2

from gateway.model import PointSet

PRUNE_EVERY = 60  # commits between passes that delete the point sets no stored row uses


class PointSets:
    """The ``pointset`` table of one database, and what is known of it in memory."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, PointSet], int] = {}
        self.info: dict[int, tuple[str, PointSet]] = {}
        self.rows: Counter[int] = Counter()  # stored rows per point set
        self.last: dict[int, int] = {}  # the last row that used each point set
        self.mark = 0  # a point set no row used from this row on goes at the next prune pass

    def __getitem__(self, ps_id: int) -> tuple[str, PointSet]:
        """The device and points of point set ``ps_id``; KeyError if there is none."""
        return self.info[ps_id]

    def load(self, conn: sqlite3.Connection, next_row: int) -> None:
        """Read the table and count the stored rows of each set; ValueError if they do not agree."""
        self.mark = next_row
        for ps_id, device, blob in conn.execute("SELECT id, device, names_units FROM pointset"):
            try:
                points = PointSet(*(tuple(x) for x in cbor2.loads(blob)))
            except (cbor2.CBORError, ValueError, TypeError) as exc:
                raise ValueError(f"point set {ps_id} unreadable: {exc}") from exc
            self.ids[(device, points)], self.info[ps_id] = ps_id, (device, points)
        for ps_id, rows, last in conn.execute("SELECT ps, count(*), max(row) FROM batch GROUP BY ps"):
            if ps_id not in self.info:
                raise ValueError(f"rows of an unknown point set {ps_id}")
            self.rows[ps_id], self.last[ps_id] = rows, last

    def id_of(self, conn: sqlite3.Connection, device: str, points: PointSet, next_row: int) -> int:
        """The id of a device's point set; a new one is stored once, in its own (autocommit) transaction."""
        if (ps_id := self.ids.get((device, points))) is not None:
            return ps_id
        blob = cbor2.dumps([list(points.names), list(points.units)], canonical=True)
        ps_id = conn.execute("INSERT INTO pointset(device, names_units) VALUES (?, ?)",
                             (device, blob)).lastrowid or 0
        self.ids[(device, points)], self.info[ps_id] = ps_id, (device, points)
        self.last[ps_id] = next_row  # new: kept at least until the prune pass after next
        return ps_id

    @staticmethod
    def pass_due(commits: int) -> bool:
        """Whether the commit after ``commits`` commits is one with a prune pass."""
        return (commits + 1) % PRUNE_EVERY == 0

    def unused(self, using: Iterable[int]) -> list[int]:
        """Point sets no stored row uses and no commit used since the last prune pass, except
        ``using`` (the ones of the commit now made)."""
        keep = set(using)
        return [ps_id for ps_id in self.info
                if self.rows[ps_id] == 0 and self.last.get(ps_id, 0) < self.mark and ps_id not in keep]

    @staticmethod
    def delete(conn: sqlite3.Connection, ids: list[int]) -> None:
        """Delete point sets ``ids`` from the table, within the caller's transaction."""
        conn.execute("DELETE FROM pointset WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))

    def stored(self, rows: Iterable[tuple[int, int]]) -> None:
        """Count stored rows: (row, point set id) pairs."""
        for row, ps_id in rows:
            self.rows[ps_id] += 1
            self.last[ps_id] = row

    def committed(self, stored: Iterable[tuple[int, int]], released: Iterable[int], pruned: Iterable[int],
                  *, pass_at: int | None) -> None:
        """After a commit: count the rows it stored ((row, point set id) pairs) and deleted (a point
        set id per row); forget the point sets it deleted. ``pass_at``: the commit made a prune pass,
        and this is its first row; the next pass deletes what goes unused from there."""
        self.stored(stored)
        self.rows.subtract(released)
        for ps_id in pruned:
            device, points = self.info.pop(ps_id)
            if self.ids.get((device, points)) == ps_id:
                del self.ids[(device, points)]
            self.rows.pop(ps_id, None)
            self.last.pop(ps_id, None)
        if pass_at is not None:
            self.mark = pass_at
