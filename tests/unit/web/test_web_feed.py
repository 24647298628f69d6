"""The feed: each point's latest value, and the history folded per bucket (min, max, last) as History would keep it."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Batch, PointSet
from gateway.web.feed import Feed, show
from gateway.web.history import History

T0 = 1_700_000_000_000  # a bucket start (10 s buckets)
ALL = PointSet(("a", "b", "label"), ("m", None, None))
SLOW = PointSet(("b",), (None,))


def test_folded_buckets_equal_one_history_update_per_reading() -> None:
    rng = random.Random(7)
    feed, direct = Feed(History()), History()
    for k in range(95):  # 95 polls at 333 ms: 4 buckets, the last one still open
        values = [rng.uniform(-5, 5), rng.randint(0, 9), "text"]
        errors = None
        if k % 7 == 3:
            values[0], errors = None, {0: "timeout"}
        batch = Batch("dev", T0 + k * 333, ALL, values, errors)
        feed.observe(batch)
        for name, value in zip(ALL.names, values, strict=True):
            if isinstance(value, int | float):
                direct.add("dev", name, float(value), batch.ts)
    now = T0 + 95 * 333
    for point in ("a", "b"):
        assert feed.series("dev", point, now) == direct.series("dev", point, now)
    assert feed.series("dev", "label", now) is None  # text has no chart


def test_the_latest_value_of_each_point_comes_from_the_newest_batch_holding_it() -> None:
    feed = Feed()
    feed.observe(Batch("dev", T0, ALL, [1.5, 2, "x"], None))
    feed.observe(Batch("dev", T0 + 1000, SLOW, [7], {0: "stale"}))
    feed.observe(Batch("dev", T0 + 2000, ALL, [None, 3, "y"], {0: "timeout"}))
    values = feed.values("dev")
    assert (values["a"].value, values["a"].error, values["a"].unit) == (None, "timeout", "m")
    assert (values["b"].value, values["b"].ts) == (3, T0 + 2000)
    assert values["label"].value == "y"
    feed.forget({"other"})
    assert feed.values("dev") == {} and feed.series("dev", "a", T0) is None



def live(feed: Feed, device: str) -> dict[str, str]:
    """The live stream's JSON of ``device`` as the page's script reads it (the last duplicate wins)."""
    return dict(json.loads("{" + feed.live_json(device) + "}"))


def test_the_live_json_carries_each_point_and_an_error_only_while_there_is_one() -> None:
    feed = Feed()
    feed.observe(Batch("dev", T0, ALL, [None, 2, 'say "hi"\n'], {0: "timeout"}))
    feed.observe(Batch("dev", T0 + 500, SLOW, [4], {0: "stale"}))
    assert live(feed, "dev") == {"val.dev.a": "-", "val.dev.a.error": "timeout", "val.dev.b": "4",
                                 "val.dev.b.error": "stale", "val.dev.label": 'say "hi"\n'}
    feed.observe(Batch("dev", T0 + 1000, ALL, [1 / 3, 2, "x"]))  # newer than the slow set's error: it is gone
    assert live(feed, "dev") == {"val.dev.a": "0.333333", "val.dev.b": "2", "val.dev.label": "x",
                                 "val.dev.b.error": ""}
    feed.observe(Batch("dev", T0 + 2000, SLOW, [5]))
    assert live(feed, "dev") == {"val.dev.a": "0.333333", "val.dev.b": "5", "val.dev.label": "x"}
    feed.observe(Batch("dev", T0 + 3000, ALL, [2.5e-7, True, 12345678]))  # the types of a point may change
    assert live(feed, "dev") == {"val.dev.a": show(2.5e-7), "val.dev.b": "True", "val.dev.label": "12345678"}
    assert feed.live_json("other") == ""

readings = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000), st.just(math.nan), st.none())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40_000), st.lists(readings, min_size=3, max_size=3), st.booleans()),
                min_size=1, max_size=60))
def test_any_readings_fold_as_one_history_update_per_reading(polls: list[tuple[int, list[Any], bool]]) -> None:
    """Numbers, NaN (first, last or between) and failed reads (None) in any mix, with a page asking
    for a chart in the middle of a bucket: the same charts as counting each reading on its own."""
    feed, direct = Feed(History()), History()
    points = PointSet(("a", "b", "c"), (None,) * 3)
    polls.sort(key=lambda p: p[0])
    for offset, values, look in polls:
        batch = Batch("dev", T0 + offset, points, values)
        feed.observe(batch)
        for name, value in zip(points.names, values, strict=True):
            if value is not None:
                direct.add("dev", name, float(value), batch.ts)
        if look:
            feed.series("dev", "a", batch.ts)
    now = T0 + polls[-1][0]
    for name in points.names:
        assert feed.series("dev", name, now) == direct.series("dev", name, now), name


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(), st.integers(-10**20, 10**20), st.booleans()), min_size=1, max_size=5))
def test_numbers_in_the_live_json_read_as_the_page_shows_them(values: list[Any]) -> None:
    """The all-numbers template (one % in C) formats each value as show() does, NaN and infinities too."""
    feed = Feed()
    names = tuple(f"p{i}%s" for i in range(len(values)))  # a "%" in a name stays a "%"
    feed.observe(Batch("dev", T0, PointSet(names, (None,) * len(values)), values))
    assert live(feed, "dev") == {f"val.dev.{name}": show(value) for name, value in zip(names, values, strict=True)}
