"""The wall clock's sync state, and what happens to readings taken before it synced."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.clock import WallClock, boot_id, kernel_synced
from gateway.encoding import decode_telemetry, encode_telemetry
from gateway.model import StoredBatch


def _clock(tmp_path: Path, check: str = "timesyncd", hold: float = 600.0) -> tuple[WallClock, Path]:
    flag = tmp_path / "timesync" / "synchronized"
    flag.parent.mkdir(exist_ok=True)
    return WallClock(check, synced_file=flag, hold=hold), flag  # type: ignore[arg-type]


def _batch(row: int, unsynced: tuple[int, str] | None, ts: int = 1_000) -> StoredBatch:
    return StoredBatch(row, "d", row, ts, ("x",), (None,), [row], None, unsynced)


def test_timesyncd_file_tells_the_state(tmp_path: Path) -> None:
    clock, flag = _clock(tmp_path)
    assert clock.refresh() is False and clock.stamp() is not None
    flag.touch()
    assert clock.refresh() is True and clock.stamp() is None


def test_auto_trusts_a_board_without_timesyncd(tmp_path: Path) -> None:
    assert WallClock("auto", synced_file=tmp_path / "none" / "synchronized").refresh() is True
    clock, flag = _clock(tmp_path, "auto")
    assert clock.refresh() is False  # timesyncd runs (its folder exists) and has not synced
    assert WallClock("off", synced_file=flag).refresh() is True


def test_kernel_state_is_read_or_unknown() -> None:
    assert kernel_synced() in (True, False, None)
    assert boot_id() != ""


def test_unsynced_readings_wait_then_get_corrected_ts(tmp_path: Path) -> None:
    clock, flag = _clock(tmp_path)
    clock.refresh()
    read_mono = int(time.monotonic() * 1000) - 5_000  # read 5 s ago, with a wrong wall clock
    batches = [_batch(1, None), _batch(2, (read_mono, clock.boot)), _batch(3, (read_mono + 10, clock.boot))]
    assert [b.row for b in clock.release(batches)] == [1]  # the first unsynced one stops the list
    flag.touch()
    clock.refresh()
    released = clock.release(batches)
    assert [b.row for b in released] == [1, 2, 3] and all(b.unsynced is None for b in released)
    now = time.time() * 1000
    assert abs(released[1].ts - (now - 5_000)) < 1_000
    assert released[2].ts - released[1].ts == 10


def test_past_the_hold_or_from_another_boot_they_go_out_marked(tmp_path: Path) -> None:
    clock, _ = _clock(tmp_path, hold=1.0)
    clock.refresh()
    old = int(time.monotonic() * 1000) - 2_000
    young = int(time.monotonic() * 1000)
    batches = [_batch(1, (0, "another-boot")), _batch(2, (old, clock.boot)), _batch(3, (young, clock.boot))]
    released = clock.release(batches)
    assert [b.row for b in released] == [1, 2] and all(b.unsynced for b in released)
    doc = decode_telemetry(encode_telemetry("gw", "d", released, "json"))
    assert all(r["synced"] is False for r in doc["readings"])
    assert decode_telemetry(encode_telemetry("gw", "d", released, "packed")) == doc
    plain = decode_telemetry(encode_telemetry("gw", "d", [_batch(4, None)], "cbor"))
    assert "synced" not in plain["readings"][0]
