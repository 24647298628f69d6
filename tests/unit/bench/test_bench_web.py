"""`gateway bench --scenario web`: asked for by name only, and its table."""

from __future__ import annotations

import argparse

import pytest

from gateway.bench.main import SCENARIOS, options_from_args
from gateway.bench.report import render


def args(scenario: str) -> argparse.Namespace:
    return argparse.Namespace(scenario=scenario, signals="counter", broker=None, devices=1, points=1, interval=1.0,
                              duration=1.0, warmup=0.0, encoding="cbor", commit_interval=1.0, drain_readings=1,
                              data_dir=None, shapes="1000x1,100x10", group_devices=1)


def test_the_web_scenario_runs_only_when_named() -> None:
    assert "web" not in options_from_args(args("all")).scenarios == SCENARIOS
    assert options_from_args(args("moderate,web")).scenarios == ("moderate", "web")


def test_the_many_shapes_are_read_and_a_bad_one_is_named() -> None:
    assert options_from_args(args("many")).shapes == ((1000, 1), (100, 10))
    bad = args("many")
    bad.shapes = "1000x1,ten"
    with pytest.raises(ValueError, match="--shapes: 'ten' is not DEVICESxPOINTS"):
        options_from_args(bad)


def test_the_web_table_gives_the_medians_and_the_increases() -> None:
    mib = 2**20
    result = {
        "pairs": 5, "ok": True, "page_events": [18] * 5,
        "off": {"cpu_us_per_reading": [7.0, 6.9, 7.2, 7.1, 6.8], "rss_bytes": [45 * mib] * 5,
                "peak_rss_bytes": [45 * mib] * 5},
        "on": {"cpu_us_per_reading": [7.6, 7.5, 7.9, 7.7, 7.4], "rss_bytes": [54 * mib] * 5,
               "peak_rss_bytes": [70 * mib] * 5},
        "off_cpu_us_per_reading_median": 7.0, "on_cpu_us_per_reading_median": 7.6, "cpu_increase_percent": 8.57,
        "off_rss_bytes_median": 45 * mib, "on_rss_bytes_median": 54 * mib, "rss_bytes_increase": 9 * mib,
        "off_peak_rss_bytes_median": 45 * mib, "on_peak_rss_bytes_median": 70 * mib,
        "peak_rss_bytes_increase": 25 * mib,
    }
    text = render({"scenarios": {"web": result}, "ok": True, "elapsed_s": 300, "version": "x", "broker": "b",
                   "machine": {"python": "3.11", "cpus": 2, "arch": "x86_64", "system": "Linux"},
                   "options": {"duration": 10, "warmup": 2, "signals": ["counter"]}})
    assert "CPU increase" in text and "8.6 %" in text and "target ≤ 10%" in text
    assert "45.0 / 54.0 MiB" in text and "+9.0 MiB at the window's end" in text
    assert "live events received: [18, 18, 18, 18, 18]" in text
