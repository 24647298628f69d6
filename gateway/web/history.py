"""The page's charts: each point's last 15 minutes, in 90 buckets of 10 s (min, max, last), in memory.

Kept only while the page is on, fed with every batch the gateway reads, and never above
``max_bytes`` in all: a point first seen when the budget is spent gets no history (the page says
so), and the points tracked keep theirs. Per point one ``array('d')`` of 3 x 90 doubles plus the
number of its newest bucket, about 2.3 kB with its dict slot: some 850 points in 2 MB. A bucket's
start is its number times its width, so no timestamp is stored; an empty bucket's min is NaN.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from typing import Any

NAN = math.nan
# What a tracked point costs besides its array: its slot in its device's dict (8-byte index and a
# 24-byte entry, up to three times over as the dict grows by doubling and fills to 2/3) and its
# name when the history holds the only reference. tests/unit/web/test_history.py measures it.
SLOT_BYTES = 3 * (8 + 24)
DEVICE_BYTES = 64 + 3 * (8 + 24)  # a device: its (empty) dict and its slot in the devices' dict

Bucket = tuple[int, float, float, float]  # (bucket start, epoch ms; min; max; last)


class History:
    """Per (device, point): the last ``buckets`` buckets of ``bucket_s`` seconds, within ``max_bytes``."""

    def __init__(self, bucket_s: float = 10, buckets: int = 90, max_bytes: int = 2_000_000) -> None:
        self.bucket_ms = round(bucket_s * 1000)
        if self.bucket_ms < 1 or buckets < 1:
            raise ValueError("a history needs buckets of at least 1 ms, at least one of them")
        self.buckets = buckets
        self.max_bytes = max_bytes
        # An array: min, max, last of each bucket (slot = bucket number % buckets), then the newest
        # bucket's number. NaN min: the bucket is empty.
        self._empty = array("d", [NAN] * (3 * buckets) + [-math.inf])
        self.point_bytes = sys.getsizeof(self._empty) + SLOT_BYTES
        self._devices: dict[str, dict[str, array[float]]] = {}
        self.bytes_used = 0  # the estimate of all the arrays, slots and names held
        self.full = False  # a point went without history for want of room

    def tracked(self, device: str, point: str) -> bool:
        """Whether ``point`` of ``device`` has a history (it has had a value and there was room)."""
        return point in self._devices.get(device, ())

    def add(self, device: str, point: str, value: float, ts_ms: int) -> None:
        """Count ``value``, read at ``ts_ms`` (epoch ms), into its bucket. NaN is skipped; a value
        older than the oldest bucket kept is dropped. Cheap: it runs for every reading."""
        if value != value:  # NaN: nothing to chart (and no history started for it)
            return
        try:
            ring = self._devices[device][point]
        except KeyError:
            ring = self._start(device, point)
            if ring is None:
                return
        self._count(ring, value, ts_ms // self.bucket_ms)

    def add_bucket(self, device: str, names: Sequence[str], number: int, lows: Sequence[Any],
                   highs: Sequence[Any], lasts: Sequence[Any]) -> None:
        """Count a whole bucket of each point of ``names`` at once: its min, max and last value,
        read in bucket ``number``. A point whose min is not a number (None, text) is skipped; NaN
        must not be among them. One call per device and bucket, not one ``add`` per reading. Once
        the history is ``full``, no point starts one here (the feed's points all come through here,
        so one refused point would be tried again every bucket)."""
        points = self._devices.get(device, {})
        s0 = 3 * (number % self.buckets)
        s1, s2, before, count = s0 + 1, s0 + 2, number - 1, self._count
        for name, low, high, last in zip(names, lows, highs, lasts, strict=True):
            if low.__class__ is not float and not isinstance(low, int | float):
                continue  # no chart for text or None
            ring = points.get(name)
            if ring is None:
                ring = None if self.full else self._start(device, name)  # (full: until a device is forgotten)
                if ring is None:
                    continue
                points = self._devices[device]
                ring[-1] = before  # all its buckets are empty: as if the one before had been the newest
            if ring[-1] == before:  # the common case: the bucket after the newest (it runs per point)
                ring[s0] = low
                ring[s1] = high
                ring[s2] = last
                ring[-1] = number
            else:  # a new point, a gap, or more of a bucket already counted: the last value last
                count(ring, low, number)
                count(ring, high, number)
                count(ring, last, number)

    def series(self, device: str, point: str, now_ms: int | None = None) -> list[Bucket] | None:
        """The non-empty buckets of ``point``, oldest first, as (start ms, min, max, last); None if the
        point is not tracked. With ``now_ms``: only the buckets of the window ending at ``now_ms``
        (a device silent for a while shows its gap); else the window ending at the newest value."""
        ring = self._devices.get(device, {}).get(point)
        if ring is None:
            return None
        n, newest = self.buckets, int(ring[-1])
        end = newest if now_ms is None else now_ms // self.bucket_ms
        out = []
        for number in range(max(end, newest) - n + 1, min(end, newest) + 1):
            slot = 3 * (number % n)
            low = ring[slot]
            if low == low:  # not NaN: the bucket has values
                out.append((number * self.bucket_ms, low, ring[slot + 1], ring[slot + 2]))
        return out

    def forget(self, device: str) -> None:
        """Drop ``device``'s histories (gone from the config), freeing their room."""
        points = self._devices.pop(device, None)
        if points is not None:
            self.bytes_used -= DEVICE_BYTES + sys.getsizeof(device) + sum(
                self.point_bytes + sys.getsizeof(name) for name in points)
            self.full = False

    def _start(self, device: str, point: str) -> array[float] | None:
        """A new history for ``point``, or None (``full`` set) when it would not fit."""
        cost = self.point_bytes + sys.getsizeof(point)
        points = self._devices.get(device)
        if points is None:
            cost += DEVICE_BYTES + sys.getsizeof(device)
        if self.bytes_used + cost > self.max_bytes:
            self.full = True
            return None
        if points is None:
            points = self._devices[device] = {}
        ring = points[point] = array("d", self._empty)
        self.bytes_used += cost
        return ring

    def _count(self, ring: array[float], value: float, number: int) -> None:
        """Count ``value`` (not NaN) into bucket ``number`` of ``ring``."""
        newest = ring[-1]
        if number == newest:  # the common case: another value in the newest bucket (never empty)
            slot = 3 * (number % self.buckets)
            if value < ring[slot]:
                ring[slot] = value
            elif value > ring[slot + 1]:
                ring[slot + 1] = value
            ring[slot + 2] = value
            return
        n = self.buckets
        slot = 3 * (number % n)
        if number > newest:  # a new bucket: empty the ones skipped since the newest
            if number - newest >= n:
                ring[: 3 * n] = self._empty[: 3 * n]
            else:
                for skipped in range(int(newest) + 1, number):
                    ring[3 * (skipped % n)] = NAN
            ring[slot] = ring[slot + 1] = ring[slot + 2] = value
            ring[-1] = number
        elif number > newest - n:  # a late reading, into an older bucket
            low = ring[slot]
            if low != low:  # empty: its first value
                ring[slot] = ring[slot + 1] = ring[slot + 2] = value
            else:  # its min and max, not its last
                ring[slot] = min(low, value)
                ring[slot + 1] = max(ring[slot + 1], value)
