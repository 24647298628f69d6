"""The bench's table rows: the modbus scenario's floor (the same polls with no gateway), the many scenario."""

from __future__ import annotations

from typing import Any

from gateway.bench.report import _many_rows, _modbus_rows

RUN: dict[str, Any] = {
    "delivered_per_s": 990.0, "delivered_fraction": 0.99, "read_per_s": 999.0, "acked_per_s": 999.0,
    "cpu_us_per_reading": 14.1, "cpu_percent": 1.4, "cpu_us_per_reading_run": 88.7, "peak_rss_bytes": 47_000_000,
    "overruns": 0, "overrun_fraction": 0.0, "pending_at_end": 1100, "first_reading_s": 1.2,
    "broker_cpu_percent": 0.0, "bench_cpu_percent": 3.0, "requests_per_poll": 1.0, "points_per_device": 100,
    "server_reads": 130,
}


def test_the_floor_follows_the_gateway_cpu() -> None:
    floor = {"pymodbus": {"client": "pymodbus", "cpu_us_per_reading": 9.74},
             "socket": {"client": "socket", "cpu_us_per_reading": 6.98}}
    rows = _modbus_rows({**RUN, "floor": floor})
    labels = [label for label, _, _ in rows]
    at = labels.index("gateway CPU")
    assert labels[at + 1] == "  floor: no gateway"
    _, value, note = rows[at + 1]
    assert value == "9.7 µs/reading"
    assert "bare socket instead: 7.0 µs" in note
    assert "  floor not measured" not in labels


def test_a_floor_that_failed_says_why() -> None:
    floor = {"pymodbus": {"client": "pymodbus", "cpu_us_per_reading": 9.74},
             "socket": {"client": "socket", "error": "modbus floor (socket): ConnectionRefusedError: refused"}}
    rows = _modbus_rows({**RUN, "floor": floor})
    failed = [row for row in rows if row[0] == "  floor not measured"]
    assert failed == [("  floor not measured", "socket", "modbus floor (socket): ConnectionRefusedError: refused")]
    (floor_row,) = [row for row in rows if row[0] == "  floor: no gateway"]
    assert floor_row[1] == "9.7 µs/reading" and "bare socket instead: - µs" in floor_row[2]


def test_a_run_without_figures_still_shows_the_floor() -> None:
    """The gateway's run failed (no rows of its own): the floor rows come alone, no crash."""
    floor = {"pymodbus": {"client": "pymodbus", "cpu_us_per_reading": 9.74},
             "socket": {"client": "socket", "cpu_us_per_reading": 6.98}}
    rows = _modbus_rows({"floor": floor})
    assert [label for label, _, _ in rows] == ["  floor: no gateway"]


def test_the_many_scenario_shows_cpu_per_poll_messages_and_the_check_per_shape() -> None:
    small = {**RUN, "cpu_us_per_reading": 55.0, "cpu_us_per_poll": 55.0, "messages_per_s": 1000.0,
             "polls_per_s": 1000.0, "produced": 12_000, "delivered": 12_000, "missing": 0, "duplicates": 0,
             "evicted": 0, "ok": True}
    lost = {**small, "missing": 3, "delivered": 11_997, "ok": False}
    rows = _many_rows({"ok": False, "1000x1": small, "100x10": lost})
    by_label = {label: (value, note) for label, value, note in rows}
    assert by_label["1000x1: CPU"][0] == "55.0 µs/reading"
    assert "55.0 µs per device poll" in by_label["1000x1: CPU"][1]
    assert "1,000 messages/s" in by_label["1000x1: delivered"][1]
    assert by_label["1000x1: check"][0] == "OK"
    assert by_label["100x10: check"][0] == "LOST" and "3 missing" in by_label["100x10: check"][1]
    assert "per message" not in by_label["1000x1: delivered"][1]  # one device per message: said nowhere
    grouped = {label: note for label, _, note in _many_rows({"1000x1": {**small, "group_devices": 100}})}
    assert "up to 100 devices per message (mqtt.batch.devices)" in grouped["1000x1: delivered"]


def test_the_many_scenario_shows_the_mqtt_floor_beside_the_gateway_per_message() -> None:
    small = {**RUN, "cpu_us_per_reading": 220.0, "cpu_us_per_poll": 221.0, "cpu_us_per_message": 223.6,
             "messages_per_s": 996.0, "polls_per_s": 996.0,
             "floor": {"messages": 4980, "rate": 996, "payload_bytes": 103, "inflight": 20, "cpu_s": 0.7,
                       "cpu_us_per_message": 142.6}}
    failed = {**small, "floor": {"error": "mqtt floor: ConnectionRefusedError: refused"}}
    rows = _many_rows({"ok": True, "1000x1": small, "50x3": failed})
    by_label = {label: (value, note) for label, value, note in rows}
    value, note = by_label["1000x1: floor"]
    assert value == "142.6 µs/message"
    assert "996 messages/s of 103 B" in note and "the gateway: 223.6 µs per message" in note
    assert by_label["50x3: floor"] == ("-", "mqtt floor: ConnectionRefusedError: refused")
    assert "50x3: CPU" in by_label  # any shape of --shapes, not only the two defaults
