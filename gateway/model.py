"""Values handed from stage to stage: one poll of one device is one batch, columnar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PointSet:
    """The points a device reports, in poll order. Built once per device and shared by its batches."""

    names: tuple[str, ...]
    units: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll could read.

    ``values`` has one entry per point of the device's PointSet, in the same order;
    an entry is None where the point could not be read, and ``errors`` maps that point's
    index to the reason. A poll where the device did not answer at all raises instead.
    """

    values: list[Any]
    errors: dict[int, str] | None = None
    # The points this poll read, when not all of the driver's ``points`` (e.g. slow points read only
    # every Nth poll); ``values`` and ``errors`` then follow this set's order.
    points: PointSet | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """One poll of one device, as the scheduler hands it to the buffer (no seq yet)."""

    device: str
    ts: int  # UTC epoch milliseconds when the values were read
    points: PointSet
    values: list[Any]
    errors: dict[int, str] | None = None
    # Read while the wall clock was not synchronized: (monotonic ms, boot id) at the read, so the
    # publisher can correct ``ts`` once the clock syncs. None when ``ts`` is trustworthy.
    unsynced: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A committed batch, as the buffer hands it to the publisher.

    Its readings carry seq ``seq0`` .. ``seq0 + len(values) - 1``, in point order.
    ``row`` identifies it for ``Buffer.ack``.
    """

    row: int
    device: str
    seq0: int
    ts: int
    names: tuple[str, ...]
    units: tuple[str | None, ...]
    values: list[Any]
    errors: dict[int, str] | None = None
    unsynced: tuple[int, str] | None = None  # as in Batch

    def __len__(self) -> int:
        return len(self.values)
