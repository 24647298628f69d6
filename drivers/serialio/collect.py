"""Values that stream in between two polls, reduced to one per point when the poll comes.

A streaming sensor may send many frames per poll interval (or none in one interval and two in
the next). The reading rate is the poll interval: each poll takes the ``last``, ``mean``,
``min`` or ``max`` of the values that arrived since the previous poll. A poll whose window is
empty repeats the point's last value while it is younger than ``stale_after``; older than that,
the point is reported as an error. Text and bool points always take the last value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Collector:
    """Per point: count, sum, min, max of the current window, and the last value with its time."""

    def __init__(self, numeric: Sequence[bool], aggregate: str = "last") -> None:
        self._numeric = list(numeric)
        self._aggregate = aggregate
        size = len(self._numeric)
        self._count = [0] * size
        self._sum = [0.0] * size
        self._min: list[Any] = [None] * size
        self._max: list[Any] = [None] * size
        self._last: list[Any] = [None] * size
        self._last_at: list[float | None] = [None] * size
        self.newest: float | None = None  # monotonic time of the newest value of any point

    def add(self, values: Sequence[Any], now: float) -> bool:
        """Add one record's values (None: the record had no value for that point).

        Returns True when at least one value was added.
        """
        added = False
        for i, value in enumerate(values):
            if value is None:
                continue
            added = True
            self._last[i] = value
            self._last_at[i] = now
            self._count[i] += 1
            if self._numeric[i]:
                self._sum[i] += value
                if self._min[i] is None or value < self._min[i]:
                    self._min[i] = value
                if self._max[i] is None or value > self._max[i]:
                    self._max[i] = value
        if added:
            self.newest = now
        return added

    def take(self, now: float, stale_after: float) -> tuple[list[Any], dict[int, str]]:
        """Reduce the window to one value per point and start a new window.

        Returns the values (None where there is none) and the errors by point index.
        """
        values: list[Any] = []
        errors: dict[int, str] = {}
        for i in range(len(self._numeric)):
            if self._count[i]:
                values.append(self._reduce(i))
            elif self._last_at[i] is not None and now - self._last_at[i] <= stale_after:
                values.append(self._last[i])
            else:
                values.append(None)
                errors[i] = self._missing(i, now)
        self.clear_window()
        return values, errors

    def clear_window(self) -> None:
        """Start a new window (the last values stay)."""
        size = len(self._numeric)
        self._count = [0] * size
        self._sum = [0.0] * size
        self._min = [None] * size
        self._max = [None] * size

    def _reduce(self, i: int) -> Any:
        how = self._aggregate if self._numeric[i] else "last"
        if how == "mean":
            return self._sum[i] / self._count[i]
        if how == "min":
            return self._min[i]
        if how == "max":
            return self._max[i]
        return self._last[i]

    def _missing(self, i: int, now: float) -> str:
        at = self._last_at[i]
        if at is None:
            return "no value received"
        return f"no value for {now - at:.0f}s"
