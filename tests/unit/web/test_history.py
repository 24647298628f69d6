"""The page's chart history: 10-second buckets (min, max, last), 90 per point, within a byte budget."""

from __future__ import annotations

import math
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.web.history import History

T0 = 1_764_000_000_000  # a bucket boundary (epoch ms, a multiple of 10 s)
S = 10_000  # one bucket, ms


def test_a_bucket_keeps_min_max_and_last_and_starts_on_its_boundary() -> None:
    h = History()
    for offset, value in [(0, 5.0), (3000, 2.0), (9999, 7.0), (9999, 4.0), (S, 1.0)]:
        h.add("meter", "flow", value, T0 + 1234 * 0 + offset)
    assert h.series("meter", "flow") == [(T0, 2.0, 7.0, 4.0), (T0 + S, 1.0, 1.0, 1.0)]
    assert h.tracked("meter", "flow")


def test_an_untracked_point_has_no_series() -> None:
    h = History()
    h.add("meter", "flow", 1.0, T0)
    assert h.series("meter", "level") is None and h.series("other", "flow") is None
    assert not h.tracked("meter", "level")


def test_only_the_last_90_buckets_are_kept_and_skipped_ones_stay_empty() -> None:
    h = History()
    for i in range(120):
        if i % 7 != 3:  # every 7th bucket has no reading
            h.add("d", "p", float(i), T0 + i * S + 500)
    got = h.series("d", "p")
    assert got is not None
    assert [start for start, *_ in got] == [T0 + i * S for i in range(30, 120) if i % 7 != 3]
    assert all(low == high == last == (start - T0) / S for start, low, high, last in got)


def test_a_long_silence_empties_the_history_but_the_point_stays_tracked() -> None:
    h = History()
    h.add("d", "p", 1.0, T0)
    h.add("d", "p", 2.0, T0 + 500 * S)
    assert h.series("d", "p") == [(T0 + 500 * S, 2.0, 2.0, 2.0)]


def test_the_window_can_end_now_so_a_silent_device_shows_its_gap() -> None:
    h = History()
    for i in range(10):
        h.add("d", "p", float(i), T0 + i * S)
    assert [b[0] for b in h.series("d", "p", now_ms=T0 + 95 * S) or []] == [T0 + i * S for i in range(6, 10)]
    assert h.series("d", "p", now_ms=T0 + 200 * S) == []
    assert len(h.series("d", "p", now_ms=T0 + 9 * S) or []) == 10


def test_a_late_reading_counts_in_its_bucket_and_a_too_late_one_is_dropped() -> None:
    h = History()
    h.add("d", "p", 5.0, T0 + 2 * S)
    h.add("d", "p", 9.0, T0 + 3 * S)
    h.add("d", "p", 1.0, T0 + 2 * S + 10)  # late, into an older bucket: its min, not its last
    h.add("d", "p", 3.0, T0 + S)  # late, into an empty older bucket
    h.add("d", "p", 100.0, T0 + 3 * S - 90 * S)  # older than the window
    assert h.series("d", "p") == [(T0 + S, 3.0, 3.0, 3.0), (T0 + 2 * S, 1.0, 5.0, 5.0), (T0 + 3 * S, 9.0, 9.0, 9.0)]


def test_nan_is_skipped_and_infinities_are_values() -> None:
    h = History()
    h.add("d", "p", math.nan, T0)
    h.add("d", "p", -math.inf, T0)
    h.add("d", "p", 2.0, T0)
    assert h.series("d", "p") == [(T0, -math.inf, 2.0, 2.0)]
    h.add("d", "only-nan", math.nan, T0)  # NaN alone starts no history (whose newest bucket would be none)
    assert not h.tracked("d", "only-nan") and h.series("d", "only-nan") is None


def test_a_bucket_adds_its_numeric_points_only() -> None:
    h = History()
    names = ("flow", "status", "alarm", "count", "broken")
    h.add_bucket("meter", names, T0 // S, [1.5, "OK", True, 7, None], [1.5, "OK", True, 7, None],
                 [1.5, "OK", True, 7, None])
    h.add_bucket("meter", names, T0 // S + 1, [2.5, "OK", False, 8, None], [2.5, "OK", False, 8, None],
                 [2.5, "OK", False, 8, None])
    assert h.series("meter", "flow") == [(T0, 1.5, 1.5, 1.5), (T0 + S, 2.5, 2.5, 2.5)]
    assert h.series("meter", "alarm") == [(T0, 1.0, 1.0, 1.0), (T0 + S, 0.0, 0.0, 0.0)]
    assert h.tracked("meter", "count")
    assert not h.tracked("meter", "status") and not h.tracked("meter", "broken")


def reference(readings: list[tuple[int, float]], n: int) -> dict[int, list[float]]:
    """What the buckets must hold: each kept reading by bucket number, in arrival order."""
    kept: dict[int, list[float]] = {}
    newest = None
    for ts, value in readings:
        number = ts // S
        if newest is not None and number <= newest - n:
            continue  # older than the window when it came
        newest = number if newest is None else max(newest, number)
        kept.setdefault(number, []).append(value)
    assert newest is not None
    return {b: v for b, v in kept.items() if b > newest - n}


# Times near bucket boundaries above all: a boundary itself, the ms before and after, anywhere else.
times = st.builds(lambda b, off: T0 + b * S + off, st.integers(0, 60),
                  st.one_of(st.sampled_from([0, 1, S - 1]), st.integers(0, S - 1)))
values = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(times, values), min_size=1, max_size=60), st.integers(1, 20))
def test_in_order_readings_give_each_buckets_min_max_and_last(readings: list[tuple[int, float]], n: int) -> None:
    readings.sort(key=lambda r: r[0])
    h = History(buckets=n)
    for ts, value in readings:
        h.add("d", "p", value, ts)
    want = reference(readings, n)
    assert h.series("d", "p") == [(b * S, min(v), max(v), v[-1]) for b, v in sorted(want.items())]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(times, values), min_size=1, max_size=60), st.integers(1, 20))
def test_readings_in_any_order_give_each_buckets_min_and_max(readings: list[tuple[int, float]], n: int) -> None:
    h = History(buckets=n)
    for ts, value in readings:
        h.add("d", "p", value, ts)
    want = reference(readings, n)
    got = h.series("d", "p") or []
    assert [(start, low, high) for start, low, high, _ in got] == [
        (b * S, min(v), max(v)) for b, v in sorted(want.items())]
    assert all(last in want[start // S] for start, _, _, last in got)


def fill(h: History, devices: int, points: int, buckets: int) -> None:
    """Give every point of every device values in ``buckets`` buckets; the names are made here, so
    the history holds the only reference to them (the worst case)."""
    for d in range(devices):
        device = f"device-{d:04d}"
        for p in range(points):
            point = f"point-{p:04d}"
            for i in range(buckets):
                h.add(device, point, float(i), T0 + i * S)


def measured(h: History, devices: int, points: int, buckets: int = 1) -> int:
    """The bytes tracemalloc sees ``fill`` allocate and keep."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(h, devices, points, buckets)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_memory_estimate_is_an_honest_upper_bound() -> None:
    """What the history counts per point covers what it allocates, and not by much more; a full
    window takes no more than one value (the buckets are allocated with the point)."""
    h = History(max_bytes=10**9)
    used = measured(h, devices=20, points=50)
    assert measured(History(max_bytes=10**9), devices=2, points=50, buckets=90) <= h.bytes_used / 10
    assert h.bytes_used >= used, (h.bytes_used, used)
    assert used >= 0.8 * h.bytes_used, (h.bytes_used, used)
    assert 2000 < h.point_bytes < 2600  # about 2.3 kB a point


def test_the_budget_holds_with_thousands_of_points() -> None:
    h = History(max_bytes=2_000_000)
    used = measured(h, devices=40, points=100)  # 4000 points; room for some 850
    tracked = sum(h.tracked(f"device-{d:04d}", f"point-{p:04d}") for d in range(40) for p in range(100))
    assert 800 <= tracked < 900 and h.full
    assert used <= h.bytes_used <= 2_000_000
    assert h.series("device-0000", "point-0000") is not None and h.series("device-0039", "point-0099") is None
    h.forget("device-0000")
    assert not h.full and not h.tracked("device-0000", "point-0000")
    h.add("device-0039", "point-0099", 1.0, T0)
    assert h.tracked("device-0039", "point-0099")
