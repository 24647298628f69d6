"""What the page knows of the readings: each point's latest value and its recent history.

The daemon hands every batch the scheduler makes to :meth:`Feed.observe` (only when the page is
on), beside the buffer. That must cost next to nothing per reading (the page may add at most 10%
to the CPU per reading), so ``observe`` only keeps references: each device's newest batch of
each point set, and the batches of its current 10-second bucket. A bucket's batches are folded
into the history when the device's next bucket begins, or when a page asks: per point one
min, one max and one last value, column by column with the builtins, instead of one history
update per reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from gateway.model import Batch, PointSet
from gateway.web.history import Bucket, History

NONE = type(None)
MAX_POINT_SETS = 8  # point sets remembered per device (a driver reading some points only now and then)


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
        self._newest: dict[str, dict[int, Batch]] = {}  # device -> its newest batch per point set (by id)
        self._open: dict[str, tuple[int, list[Batch]]] = {}  # device -> (bucket number, its batches not folded)
        self._keys: dict[int, list[Any]] = {}  # point set id -> its keys in the live stream (_live_keys)

    def observe(self, batch: Batch) -> None:
        device = batch.device
        number = batch.ts // self.history.bucket_ms
        open_ = self._open.get(device)
        if open_ is not None and open_[0] == number:
            open_[1].append(batch)
        else:
            if open_ is not None:
                self._fold(device)
            self._open[device] = (number, [batch])
        newest = self._newest.setdefault(device, {})
        newest[id(batch.points)] = batch  # (the batch holds its point set: the id is not reused meanwhile)
        if len(newest) > MAX_POINT_SETS:
            del newest[next(iter(newest))]

    def values(self, device: str) -> dict[str, Latest]:
        """Each point's latest reading (from the newest batch holding it)."""
        out: dict[str, tuple[int, Latest]] = {}
        for batch in self._newest.get(device, {}).values():
            errors = batch.errors or {}
            for i, (name, unit) in enumerate(zip(batch.points.names, batch.points.units, strict=True)):
                if name not in out or out[name][0] <= batch.ts:
                    out[name] = (batch.ts, Latest(batch.values[i], unit, errors.get(i), batch.ts))
        return {name: latest for name, (_, latest) in out.items()}

    def live_json(self, device: str) -> str:
        """``device``'s latest values and errors as the members of a JSON object (no braces), by the
        page's keys (``val.<device>.<point>``, ``...error``): what the live stream sends once a
        second. A point's error key is there only while it has one: its value without it means none
        (the page's script clears the error shown). Made in C as far as it goes: each point set's
        keys and each column's format once, the values formatted and escaped by ``map``; a point
        read again by a newer batch appears again, later, and JSON's last duplicate wins."""
        parts: list[str] = []
        erred: set[str] = set()  # the error keys given so far: a newer reading without one clears it
        for batch in sorted(self._newest.get(device, {}).values(), key=_ts):
            keys = self._live_keys(device, batch.points)
            values = batch.values
            types = list(map(type, values))
            if types != keys[3]:  # (a point's type rarely changes: a failed read, a driver's text)
                keys[3], keys[4], keys[5] = types, [".6g" if issubclass(t, float) else "" for t in types], None
                if all(t is float or t is int or t is bool for t in types):  # numbers only: one template
                    keys[5] = ", ".join(key.replace("%", "%%") + ('"%.6g"' if t is float else '"%s"')
                                        for key, t in zip(keys[1], types, strict=True))
            if keys[5] is not None:  # the common case: all formatted by one % in C, nothing to escape
                parts.append(keys[5] % tuple(values))
            else:
                texts = list(map(format, values, keys[4]))  # as show(): floats .6g, the rest as str()
                if NONE in types:
                    texts = ["-" if v is None else t for v, t in zip(values, texts, strict=True)]
                parts.append(", ".join(map(str.__add__, keys[1], map(encode_basestring_ascii, texts))))
            errors = batch.errors or {}
            if erred:
                parts.extend(f'{key}""' for i, key in enumerate(keys[2]) if key in erred and i not in errors)
            if errors:
                parts.extend(keys[2][i] + encode_basestring_ascii(str(text)) for i, text in errors.items())
                erred.update(keys[2][i] for i in errors)
        return ", ".join(part for part in parts if part)

    def _live_keys(self, device: str, points: PointSet) -> list[Any]:
        """[points, value keys, error keys (each JSON-quoted with its colon), the types of the last
        values, the format of each, the %-template of all when all are numbers] of one point set of
        ``device``, made once."""
        keys = self._keys.get(id(points))
        if keys is None or keys[0] is not points:
            if len(self._keys) > 4 * MAX_POINT_SETS:  # point sets made anew per poll: keep few
                self._keys.clear()
            keys = self._keys[id(points)] = [
                points, [encode_basestring_ascii(f"val.{device}.{n}") + ": " for n in points.names],
                [encode_basestring_ascii(f"val.{device}.{n}.error") + ": " for n in points.names], None, None, None]
        return keys

    def series(self, device: str, point: str, now_ms: int) -> list[Bucket] | None:
        """The chart of ``point``: History.series after folding what is still open."""
        if device in self._open:
            self._fold(device)
        return self.history.series(device, point, now_ms)

    def forget(self, keep: set[str]) -> None:
        """Drop the latest values and histories of devices no longer polled (after a reload)."""
        for name in [n for n in self._newest if n not in keep]:
            del self._newest[name]
            self._open.pop(name, None)
            self.history.forget(name)
        self._keys.clear()

    def _tracked_any(self, device: str, batch: Batch) -> bool:
        return any(self.history.tracked(device, name) for name in batch.points.names)

    def _fold(self, device: str) -> None:
        """Put the open batches of ``device`` into the history: min, max and last of each point."""
        _, batches = self._open.pop(device)
        if self.history.full and not self._tracked_any(device, batches[-1]):
            return  # no room for this device's points: nothing to keep
        by_points: dict[int, list[Batch]] = {}
        for batch in batches:
            by_points.setdefault(id(batch.points), []).append(batch)
        number = batches[-1].ts // self.history.bucket_ms
        for group in by_points.values():
            lows, highs, lasts = _fold_columns([b.values for b in group])
            self.history.add_bucket(device, group[0].points.names, number, lows, highs, lasts)


def _fold_columns(rows: list[list[Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """Each column's min, max and last number of ``rows`` (a bucket's batches of one point set);
    None where a column has no number. NaN counts as no value."""
    last_row = rows[-1]
    try:  # the common case, all numbers: each column's min and max in C, no per-value check
        lows, highs = (last_row, last_row) if len(rows) == 1 else (list(map(min, *rows)), list(map(max, *rows)))
    except TypeError:  # a failed read (None), or text beside numbers: column by column
        return _fold_slowly(rows)
    # min and max skip a NaN unless it comes first; then, or with a NaN last, that column the slow way.
    # One sum in C finds whether there may be such a NaN (a NaN makes it NaN; so may inf and -inf).
    try:
        total = sum(lows) + sum(last_row)
        suspect = total != total
    except TypeError:  # text, or None in a single poll
        suspect = True
    bad = [i for i, (low, last) in enumerate(zip(lows, last_row, strict=True))
           if low != low or last != last] if suspect else []
    if bad:
        lows, highs, lasts = list(lows), list(highs), list(last_row)
        for i in bad:
            lows[i], highs[i], lasts[i] = _fold_column([row[i] for row in rows])
        return lows, highs, lasts
    return lows, highs, last_row


def _fold_slowly(rows: list[list[Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    columns = []
    for column in zip(*rows, strict=True):
        try:  # most columns are still all numbers (one point failing must not slow the others much)
            low, high, last = min(column), max(column), column[-1]
            if low != low or last != last:
                raise TypeError("NaN")
        except TypeError:
            low, high, last = _fold_column(column)
        columns.append((low, high, last))
    return [c[0] for c in columns], [c[1] for c in columns], [c[2] for c in columns]


def _fold_column(column: Any) -> tuple[Any, Any, Any]:
    numbers = [v for v in column if isinstance(v, int | float) and v == v]
    return (min(numbers), max(numbers), numbers[-1]) if numbers else (None, None, None)

def _ts(batch: Batch) -> int:
    return batch.ts


def show(value: Any) -> str:
    """A value as the page shows it."""
    if value.__class__ is float:  # the common case first: the live stream shows each value each second
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
