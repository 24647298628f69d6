"""The wall clock's sync state, and what happens to readings taken before it synced."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import clock as clock_module
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


def _kernel_state_by_clock_adjtime() -> bool | None:
    """The kernel's sync state read another way: clock_adjtime(CLOCK_REALTIME), a syscall of its own,
    into a buffer of our own; the kernel answers TIME_ERROR (5) while STA_UNSYNC is set."""
    state = ctypes.CDLL("libc.so.6").clock_adjtime(0, ctypes.create_string_buffer(512))
    return None if state < 0 else state != 5


def test_kernel_state_matches_the_kernels_answer() -> None:
    assert kernel_synced() is _kernel_state_by_clock_adjtime()
    assert len(boot_id()) == 36 and boot_id() == boot_id()  # a UUID, the same all boot long


def test_libc_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    real = ctypes.util.find_library

    def counting(name: str) -> str | None:
        lookups.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", counting)
    clock_module._libc.cache_clear()
    first = kernel_synced()
    clock = WallClock("kernel")
    states = [clock.refresh() for _ in range(3)]
    assert lookups == ["c"]  # not one `ldconfig -p` per check
    assert first is _kernel_state_by_clock_adjtime() and states == [first] * 3


def test_kernel_check_trusts_an_unreadable_clock_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Under ProtectClock= adjtimex fails (EPERM); a fake libc stands in for that sandbox.
    monkeypatch.setattr(clock_module, "_libc", lambda: SimpleNamespace(adjtimex=lambda timex: -1))
    clock = WallClock("kernel")
    assert kernel_synced() is None
    assert [clock.refresh(), clock.refresh()] == [True, True]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read the kernel's clock state (ProtectClock?): trusting the clock"]


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
