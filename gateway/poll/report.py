"""Report by exception: send a point only when it moved by its deadband, or its heartbeat is due.

A quiet sensor then costs almost nothing on the uplink. ``seq`` counts only readings sent: the
filter runs before the buffer numbers them. An error, or a change between error and value, is
always sent; so is a non-numeric value that changed.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.model import PointSet


class ReportFilter:
    """Decides, per poll, which points of one device are worth sending."""

    def __init__(self, points: PointSet, *, deadband: dict[str, float], heartbeat: float | None) -> None:
        self.points = points
        self._bands = [deadband.get(name, 0.0) for name in points.names]
        self._heartbeat = heartbeat if heartbeat is not None else math.inf
        n = len(points.names)
        self._last: list[Any] = [None] * n
        self._last_error: list[str | None] = [None] * n
        self._sent_at: list[float] = [-math.inf] * n
        self._subsets: dict[tuple[int, ...], PointSet] = {}
        self._index = {name: i for i, name in enumerate(points.names)}

    def apply(
        self, points: PointSet, values: list[Any], errors: dict[int, str] | None, now: float
    ) -> tuple[PointSet, list[Any], dict[int, str] | None] | None:
        """The points to send out of one poll (``now`` on the monotonic clock); None if none.

        ``points`` is what the poll read: the device's points, or a subset of them in their order.
        """
        pos = range(len(values)) if points is self.points else [self._index[name] for name in points.names]
        errors = errors or {}
        keep = [k for k in range(len(values)) if self._due(pos[k], values[k], errors.get(k), now)]
        if not keep:
            return None
        for k in keep:
            i = pos[k]
            self._last[i], self._last_error[i], self._sent_at[i] = values[k], errors.get(k), now
        if len(keep) == len(self.points.names):
            return self.points, values, errors or None
        subset = self._subset(tuple(pos[k] for k in keep))
        sub_errors = {j: errors[k] for j, k in enumerate(keep) if k in errors}
        return subset, [values[k] for k in keep], sub_errors or None

    def _due(self, i: int, value: Any, error: str | None, now: float) -> bool:
        if now - self._sent_at[i] >= self._heartbeat or error != self._last_error[i]:
            return True
        if error is not None:
            return False  # the same error again: the heartbeat repeats it
        last = self._last[i]
        if last is None or type(value) is bool or not isinstance(value, int | float):
            return value != last
        if isinstance(last, bool) or not isinstance(last, int | float):
            return True
        return abs(value - last) >= self._bands[i] if self._bands[i] > 0 else value != last

    def _subset(self, keep: tuple[int, ...]) -> PointSet:
        found = self._subsets.get(keep)
        if found is None:
            names, units = self.points.names, self.points.units
            found = PointSet(tuple(names[i] for i in keep), tuple(units[i] for i in keep))
            if len(self._subsets) < 256:  # a device with many points changes in many patterns: bound it
                self._subsets[keep] = found
        return found
