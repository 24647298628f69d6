"""`gateway status` in a technician's words."""

from __future__ import annotations

import time

from gateway.cli.statusview import render


def _status(**extra: object) -> dict[str, object]:
    now = int(time.time() * 1000)
    doc: dict[str, object] = {
        "version": "0.1.0", "started_ts": now - 90_000, "config_hash": "abc", "clean_start": False,
        "buffer": {"state": "degraded", "reason": "database or disk is full", "pending": 5, "bytes": 10, "evicted": 2,
                   "quarantined": 3},
        "broker": {"connected": False, "last_error": "connection refused"},
        "devices": {"meter-1": {"state": "error", "last_read_ts": now - 5_000, "polls": 9, "errors": 3,
                                "overruns": 0, "last_error": "no response from unit 1"}},
    }
    doc.update(extra)
    return doc


def test_render_names_every_problem_a_technician_must_see() -> None:
    text = render(_status(clock={"synced": False, "check": "timesyncd"},
                          config={"fallback": "gateway.yaml is invalid; running last-good.yaml",
                                  "reload_error": "gateway.yaml:3: x\nmore", "restart_pending": ["buffer"]},
                          commands={"enabled": True, "subscribed": False, "ok": 1, "refused": 2, "failed": 0}))
    for expected in ("up 90s", "last run did not stop cleanly", "NOT connected (connection refused)",
                     "degraded", "database or disk is full", "evicted 2, quarantined 3", "clock    NOT synchronized",
                     "FALLBACK: gateway.yaml is invalid", "last reload refused: gateway.yaml:3: x",
                     "changes to buffer wait for a restart", "NOT subscribed: 1 ok, 2 refused",
                     "meter-1", "last read 5s ago", "last error: no response from unit 1"):
        assert expected in text, expected
    assert "more" not in text


def test_a_healthy_gateway_shows_no_warnings() -> None:
    text = render(_status(clock={"synced": True, "check": "auto"}, config={}, commands={"enabled": False}))
    assert "clock" not in text and "config   " not in text and "commands" not in text


def test_the_broker_line_names_the_node_in_use_and_the_moves_of_a_cluster() -> None:
    one = render(_status(broker={"connected": True, "server": "10.0.0.1:1883", "servers": ["10.0.0.1:1883"],
                                 "failovers": 0}))
    assert "broker   connected to 10.0.0.1:1883\n" in one
    cluster = render(_status(broker={"connected": True, "server": "b-2:8883", "servers": ["b-1:8883", "b-2:8883"],
                                     "failovers": 3}))
    assert "connected to b-2:8883 (nodes: b-1:8883, b-2:8883; 3 failovers)" in cluster
    assert "broker   connected\n" in render(_status(broker={"connected": True}))  # an older gateway's status
