"""What the page knows of the readings: each point's latest value and its recent history.

The daemon hands every batch the scheduler makes to :meth:`Feed.observe` (only when the page is
on), beside the buffer. It costs a loop over the batch's values: no I/O, nothing awaited, so the
page can never slow polling down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.model import Batch
from gateway.web.history import History


@dataclass(frozen=True, slots=True)
class Latest:
    """A point's last reading: its value (None when it failed), unit, error and time (epoch ms)."""

    value: Any
    unit: str | None
    error: str | None
    ts: int


class Feed:
    """Latest values per device and point, and the charts' history (``History``)."""

    def __init__(self, history: History | None = None) -> None:
        self.history = history if history is not None else History()
        self.latest: dict[str, dict[str, Latest]] = {}
        self.version = 0  # +1 per batch observed: the live stream sends only when it moved

    def observe(self, batch: Batch) -> None:
        points = self.latest.setdefault(batch.device, {})
        errors = batch.errors or {}
        names, units = batch.points.names, batch.points.units
        for i, value in enumerate(batch.values):
            name = names[i]
            points[name] = Latest(value, units[i], errors.get(i), batch.ts)
            if isinstance(value, int | float) and math.isfinite(value):
                self.history.add(batch.device, name, float(value), batch.ts)
        self.version += 1

    def values(self, device: str) -> dict[str, Latest]:
        return self.latest.get(device, {})

    def forget(self, keep: set[str]) -> None:
        """Drop the latest values of devices no longer polled (after a reload)."""
        for name in [n for n in self.latest if n not in keep]:
            del self.latest[name]
