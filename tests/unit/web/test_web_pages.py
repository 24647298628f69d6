"""The page's HTML and charts, from a status document and a feed (no server)."""

from __future__ import annotations

import math
import re

from gateway.model import Batch, PointSet
from gateway.web import pages
from gateway.web.chart import svg_chart
from gateway.web.feed import Feed
from gateway.web.history import History

NOW = 1_700_000_900_000
STATUS = {
    "version": "0.1.0", "started_ts": NOW - 3_600_000, "config_hash": "abc123",
    "config": {"path": "/etc/gateway/gateway.yaml", "fallback": None, "reload_error": None, "restart_pending": []},
    "clock": {"synced": True, "check": "kernel"},
    "broker": {"connected": False, "last_error": "connection refused"},
    "buffer": {"state": "ok", "reason": None, "pending": 12, "bytes": 4096, "evicted": 0, "quarantined": 0},
    "devices": {
        "a-ok": {"state": "ok", "last_error": None, "last_read_ts": NOW - 1000, "polls": 5, "errors": 0},
        "z-bad": {"state": "error", "last_error": "no response from unit 3", "last_read_ts": None, "polls": 0,
                  "errors": 4, "counters": {"timeouts": 4}},
    },
    "gateway_id": "pkt-rd-0001",
}


def test_failing_devices_come_first_with_the_reason_in_words() -> None:
    html = pages.devices_page(STATUS, "tok", NOW)
    assert html.index("z-bad") < html.index("a-ok")
    assert "no response from unit 3" in html and "timeouts 4" in html
    assert pages.reason({"state": "starting"}) == "not read yet: connecting"


def test_the_overview_names_what_the_issue_lists() -> None:
    html = pages.overview_page(STATUS, "tok", NOW)
    for text in ("pkt-rd-0001", "0.1.0", "60 min", "/etc/gateway/gateway.yaml", "abc123", "synced",
                 "NOT connected", "connection refused", ">12<", ">4096<"):
        assert text in html, text


def test_everything_shown_is_escaped() -> None:
    status = {**STATUS, "broker": {"connected": False, "last_error": "<script>alert(1)</script>"}}
    html = pages.overview_page(status, "tok", NOW)
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_a_device_page_has_values_units_charts_and_says_when_a_point_has_none() -> None:
    history = History(max_bytes=2_000_000)
    feed = Feed(history)
    points = PointSet(("temp", "flow"), ("degC", None))
    for i in range(30):
        errors = {1: "timeout"} if i else None
        feed.observe(Batch("a-ok", NOW - 300_000 + i * 10_000, points, [20.0 + i % 3, 7], errors))
    html = pages.device_page("a-ok", STATUS, feed, ("temp", "flow", "never"), "tok", NOW, writes=False)
    assert 'data-k="val.a-ok.temp">22<' in html and "degC" in html and ">timeout<" in html
    assert html.count("<svg") == 2  # temp and flow; "never" was never read
    assert "no readings yet" in html or "no readings in the last 15 minutes" in html
    assert 'action="/devices/a-ok/write"' not in html  # writes: false


def test_the_chart_draws_the_last_values_inside_its_box() -> None:
    series = [(NOW - 600_000 + i * 10_000, float(i), float(i) + 1, float(i) + 0.5) for i in range(60)]
    svg = svg_chart(series, NOW, "m")
    line = re.search(r'<polyline class="line" points="([^"]+)"', svg)
    assert line is not None
    xy = [tuple(map(float, p.split(","))) for p in line.group(1).split()]
    assert len(xy) == 60 and all(0 <= x <= 300 and 0 <= y <= 64 for x, y in xy)
    assert xy[-1][1] < xy[0][1]  # rising values go up the chart
    assert svg_chart([], NOW) == '<span class="muted">no readings in the last 15 minutes</span>'


def test_a_point_beyond_the_history_budget_says_it_has_no_chart() -> None:
    history = History(max_bytes=3000)  # room for one point's history
    feed = Feed(history)
    feed.observe(Batch("a-ok", NOW - 20_000, PointSet(("one", "two", "text"), (None, None, None)), [1.0, 2.0, "x"]))
    html = pages.device_page("a-ok", STATUS, feed, ("one", "two", "text"), "tok", NOW, writes=True)
    assert html.count("<svg") == 1
    assert "no chart: the history is full (it keeps 2 MB at most)" in html
    assert "no chart: not a number" in html
    assert 'action="/devices/a-ok/write"' in html


def test_a_point_without_numbers_so_far_says_so_not_that_the_history_is_full() -> None:
    feed = Feed(History())
    points = PointSet(("nan", "failed", "ok"), (None, None, None))
    for i in range(3):
        feed.observe(Batch("a-ok", NOW - 30_000 + i * 10_000, points, [math.nan, None, 1.0], {1: "timeout"}))
    html = pages.device_page("a-ok", STATUS, feed, ("nan", "failed", "ok", "never"), "tok", NOW, writes=False)
    assert "history is full" not in html
    assert html.count("no chart yet: no number read so far") == 2 and html.count("<svg") == 1
    assert "no readings yet" in html  # "never" was in no batch
    full = Feed(History(max_bytes=3000))  # room for one point: "ok" gets it; the others had numbers once
    points = PointSet(("ok", "nan", "failed"), (None, None, None))
    full.observe(Batch("a-ok", NOW - 20_000, points, [1.0, 2.0, 3.0]))
    full.observe(Batch("a-ok", NOW - 10_000, points, [4.0, math.nan, None], {2: "timeout"}))
    html = pages.device_page("a-ok", STATUS, full, ("ok", "nan", "failed"), "tok", NOW, writes=False)
    assert html.count("no number read lately, and the history is full") == 2 and html.count("<svg") == 1
