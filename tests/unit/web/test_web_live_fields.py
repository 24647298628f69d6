"""A device page's live event (WebServer._live_fields): the device's row and the feed's values, joined
as one JSON object; either part may be missing."""

from __future__ import annotations

import json
from typing import Any

from gateway.config.settings import WebSection
from gateway.model import Batch, PointSet
from gateway.web.feed import Feed
from gateway.web.pages import device_fields
from gateway.web.server import Backend, WebServer

T0 = 1_700_000_000_000
POINTS = PointSet(("a", "label"), ("m", None))
ROW = {"state": "error", "last_error": "timeout", "last_read_ts": T0, "polls": 3, "errors": 1,
       "counters": {"requests": 4}}


async def _tool(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": False}


def server(feed: Feed, devices: dict[str, dict[str, Any]]) -> WebServer:
    backend = Backend(status=lambda: {"devices": devices}, run_tool=_tool, points=lambda _name: POINTS.names,
                      bus=lambda _name: None, device=devices.get)
    return WebServer(WebSection(), "gw", backend, feed)


def event(web: WebServer, device: str) -> dict[str, str]:
    text = web._live_fields(device)
    assert isinstance(text, str)  # a device page's event is made as JSON text
    return dict(json.loads(text))


async def test_a_device_pages_event_is_its_row_and_its_values_in_one_object() -> None:
    feed = Feed()
    feed.observe(Batch("dev", T0, POINTS, [None, 'say "hi"'], {0: "timeout"}))
    web = server(feed, {"dev": ROW})
    got = event(web, "dev")
    row = {k: v for k, v in got.items() if k.startswith("dev.") and k != "dev.dev.last_read"}  # (its "ago" moves)
    expected = device_fields({"devices": {"dev": ROW}}, T0, "dev")
    assert "dev.dev.last_read" in got and row == {k: v for k, v in expected.items() if k != "dev.dev.last_read"}
    assert row["dev.dev.state"] == "error" and row["dev.dev.counters"] == "requests 4"
    assert {k: v for k, v in got.items() if not k.startswith("dev.")} == {
        "val.dev.a": "-", "val.dev.a.error": "timeout", "val.dev.label": 'say "hi"'}


async def test_a_device_with_no_values_yet_or_no_longer_polled_still_gets_one_object() -> None:
    feed = Feed()
    web = server(feed, {"dev": ROW})
    assert set(event(web, "dev")) == {f"dev.dev.{f}" for f in ("state", "reason", "last_read", "polls", "errors",
                                                              "counters")}  # nothing read yet: the row only
    feed.observe(Batch("gone", T0, POINTS, [1.5, "x"]))  # removed by a reload, still in the feed
    assert event(web, "gone") == {"val.gone.a": "1.5", "val.gone.label": "x"}
    assert event(web, "never") == {}
