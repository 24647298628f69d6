"""The wall clock's sync state, and what happens to readings taken before it synced."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.model import StoredBatch
from gateway.publish import chrony
from gateway.publish import clock as clock_module
from gateway.publish.clock import WallClock, boot_id, kernel_synced
from gateway.wire.encoding import decode_telemetry, encode_telemetry
from tests.support.chrony import ChronyResponder, closed_udp_port
from tests.support.wait import wait_until_async


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


def test_auto_reads_timesyncd_where_it_runs(tmp_path: Path) -> None:
    clock, flag = _clock(tmp_path, "auto")
    assert clock.refresh() is False  # timesyncd runs (its folder exists) and has not synced
    flag.touch()
    assert clock.refresh() is True
    flag.unlink()
    assert WallClock("off", synced_file=flag).refresh() is True


# --- chrony: asked over its monitoring port (a real UDP exchange with a stand-in chronyd) ---------------

def _auto(tmp_path: Path, port: int) -> WallClock:
    """check: auto on a board without timesyncd (no /run/systemd/timesync), chronyd asked on ``port``."""
    return WallClock("auto", synced_file=tmp_path / "no-timesyncd" / "synchronized", chrony_port=port)


async def test_auto_asks_chronyd_where_timesyncd_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.clock")
    monkeypatch.setattr(clock_module, "CHRONY_RECHECK", 0.05)  # ask again soon while unsynced
    with ChronyResponder(synced=False) as chronyd:
        clock = _auto(tmp_path, chronyd.port)
        await clock.start()
        assert chronyd.requests == 1 and clock.synced() is False and clock.stamp() is not None
        chronyd.synced = True
        await wait_until_async(clock.refresh, 5, "the clock synced once chronyd says so")
        assert clock.stamp() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"NTP client: chronyd (answers on 127.0.0.1:{chronyd.port})",
        "wall clock NOT synchronized: holding readings back",
        "wall clock synchronized",
    ]


async def test_chronyd_is_asked_in_the_background_not_per_stamp(tmp_path: Path) -> None:
    with ChronyResponder(synced=True) as chronyd:
        clock = _auto(tmp_path, chronyd.port)
        await clock.start()
        for _ in range(2000):  # a busy gateway stamps many batches a second
            assert clock.stamp() is None
            clock.refresh()
            await asyncio.sleep(0)
        assert chronyd.requests == 1  # the answer holds for a while (CHRONY_RECHECK_QUIET)


async def test_before_chronyds_first_answer_readings_wait_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ChronyResponder(synced=True) as chronyd:
        clock = _auto(tmp_path, chronyd.port)  # not started: the first look asks in the background
        assert clock.refresh() is False and clock.stamp() is not None
        await wait_until_async(lambda: chronyd.requests == 1 and clock.synced(), 5, "chronyd's answer")
    assert not any("NOT synchronized" in r.getMessage() for r in caplog.records)


async def test_with_no_chronyd_answering_auto_trusts_the_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.clock")
    refused = _auto(tmp_path, closed_udp_port())  # nothing listens: refused at once
    await refused.start()
    assert refused.synced() is True and refused.stamp() is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # something that never answers
        silent.bind(("127.0.0.1", 0))
        mute = _auto(tmp_path, silent.getsockname()[1])
        started = time.monotonic()
        await mute.start()
        assert mute.synced() is True and time.monotonic() - started < 2 * chrony.TIMEOUT
    assert [r.getMessage() for r in caplog.records] == [
        f"no NTP client recognised (no timesyncd, no chronyd on 127.0.0.1:{port}): trusting the clock"
        for port in (refused.chrony_port, mute.chrony_port)
    ]


def test_a_reply_that_is_not_chronyds_answer_is_ignored() -> None:
    request = chrony.tracking_request(7)
    assert len(request) == 104 and request[:12] == bytes([6, 1, 0, 0, 0, 33, 0, 0, 0, 0, 0, 7])
    good = ChronyResponder._reply(SimpleNamespace(synced=True), request)  # type: ignore[arg-type]
    assert good is not None and chrony.synced_from_reply(good, 7) is True
    assert chrony.synced_from_reply(good, 8) is None  # another request's answer
    assert chrony.synced_from_reply(good[:100], 7) is None
    failed = good[:8] + (1).to_bytes(2, "big") + good[10:]  # status STT_FAILED
    assert chrony.synced_from_reply(failed, 7) is None
    local = bytearray(good)
    local[28:32] = bytes(4)  # leap status normal, but no reference: not synchronized
    assert chrony.synced_from_reply(bytes(local), 7) is False


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
