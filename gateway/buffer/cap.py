"""The buffer's size cap: which rows a commit evicts, oldest first, so that the database's payload
fits in ``max_bytes`` and its pages in what the filesystem can give it (less a reserve: room for
the WAL and a catch-up commit, so acks can always be deleted).

Set-aside (quarantined) rows go first: they left the stream already. Evicted pages stay in the
file for later commits, so a filesystem filled by anything else stops the growth without costing
the rows already stored. Run on the buffer's writer thread, inside the commit's transaction
(gateway.buffer.store).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.buffer.seqfile import fs_allowance

EVICT_CHUNK = 256  # rows looked at per query while evicting
_LIVE_BYTES = ("SELECT (page_count - freelist_count) * page_size"
               " FROM pragma_page_count, pragma_freelist_count, pragma_page_size")


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (its size less its free pages)."""
    return conn.execute(_LIVE_BYTES).fetchone()[0]


class Cap:
    """The limits of one database file, and what the last eviction found."""

    def __init__(self, db: Path, max_bytes: int, fs_reserve: int) -> None:
        self.db, self.max_bytes, self.fs_reserve = db, max_bytes, fs_reserve
        self.fs_floor = 0  # live bytes held while others took the filesystem's room (0: none)
        self.fs_limited = False  # the last eviction was for the filesystem, not for max_bytes
        self.fs_headroom = 0  # bytes the database may still grow by on its filesystem
        self.evicted_upto = 0  # the highest row the last commit evicted (0: none)

    def evict(self, conn: sqlite3.Connection, size: int, stored: int, released: list[int]) -> tuple[int, int]:
        """Delete the oldest rows until the payload (``size`` bytes) fits in max_bytes and the live
        pages in what the filesystem can give, or in ``stored`` (live bytes before the commit) if
        that is more; return readings, bytes. Adds the point set of each batch row deleted to
        ``released``."""
        readings = freed = last = self.evicted_upto = 0
        allowed = fs_allowance(self.db, self.fs_reserve)
        if allowed is None:  # cannot tell: only max_bytes applies
            allowed = 1 << 62
        elif allowed < stored:  # others took the room: hold what the file holds, no less (nor growth)
            allowed = self.fs_floor = max(stored, self.fs_floor)
        else:
            self.fs_floor = 0
        self.fs_limited = False
        while True:
            over, short = size - freed - self.max_bytes, live_bytes(conn) - allowed
            self.fs_headroom = -short
            if over <= 0 and short <= 0:
                break
            self.fs_limited = self.fs_limited or short > over
            # Set-aside rows go first: they left the stream already.
            for table, ps in (("quarantine", "NULL"), ("batch", "ps")):
                chunk = conn.execute(f"SELECT row, n, length(v) + ifnull(length(e), 0), {ps} FROM {table}"
                                     " ORDER BY row LIMIT ?", (EVICT_CHUNK,)).fetchall()
                if chunk:
                    break
            if not chunk:
                break
            excess = max(over, short)  # a payload byte takes at least a byte of a page
            counted = table == "batch"  # a set-aside row's readings were counted as quarantined
            for row, n, nbytes, ps_id in chunk:
                readings, freed, last, excess = readings + n * counted, freed + nbytes, row, excess - nbytes
                if counted:  # a quarantined row keeps its own names: it holds no point set
                    released.append(ps_id)
                if excess <= 0:
                    break
            conn.execute(f"DELETE FROM {table} WHERE row <= ?", (last,))
            if counted:
                self.evicted_upto = last
        return readings, freed
