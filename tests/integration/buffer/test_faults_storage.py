"""Storage faults, with the real daemon: a full disk, a filesystem too small for the buffer's cap,
a corrupt buffer file at start, and power cuts (kill -9) at random moments.

Each test checks by ``seq`` what reached the broker: everything committed arrives, except what the
status counts as evicted; a seq never stands for two readings.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer.queue import FS_RESERVE, Buffer
from gateway.model import Batch, PointSet
from tests.support.broker import Mosquitto, Subscriber, telemetry
from tests.support.faults import (
    Arrivals,
    MountUnavailable,
    assert_accounted,
    fill,
    free_bytes,
    readings_by_key,
    sim_device,
    tmpfs,
)
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway
from tests.support.needs import unavailable

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs for the data directory (unmounted at the end); unavailable where mounting is not
    allowed (not root: CI runs the tests as root)."""
    try:
        with tmpfs(tmp_path / "small", 24) as mount:
            yield mount
    except MountUnavailable as exc:
        unavailable(f"no size-limited filesystem can be mounted here: {exc}")


def _pragma(db: Path, name: str) -> list[Any]:
    """``PRAGMA name`` on ``db``, in a connection of its own (beside a buffer that may have it open)."""
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute(f"PRAGMA {name}")]
    finally:
        conn.close()


def _integrity(db: Path) -> list[str]:
    return _pragma(db, "integrity_check")


# -- disk full -----------------------------------------------------------------------------------------------


@pytest.mark.serial_only  # no eviction only if publishing keeps up with two 10-25 ms devices: needs the CPU
def test_disk_full_degrades_keeps_polling_and_recovers_by_itself(
    small_fs: Path, tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber],
    gateways: list[GatewayProcess],
) -> None:
    """Something else fills the data directory's filesystem to the last byte: commits fail, the
    buffer says degraded and why, readings wait in memory; polling goes on, and so does publishing
    the backlog committed before (its acks wait in memory too). Once the space is back, the buffer
    is ok again by itself and every reading arrives."""
    flags = [tmp_path / "a.dead", tmp_path / "b.dead"]
    config = base_config(small_fs / "data", mosquitto.port, commit="100ms")
    config["devices"] = [sim_device("dev-a", "10ms", flags[0], points=10),
                         sim_device("dev-b", "25ms", flags[1], points=10)]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    sub.wait_for(lambda ms: len(telemetry(ms)) >= 3, timeout=20)
    mosquitto.stop()  # a backlog builds up on disk

    def committed(s: dict[str, Any]) -> int:
        return sum(d["seq"] for d in s["devices"].values())

    backlog_from = committed(gw.status())
    gw.wait_status(lambda s: committed(s) > backlog_from + 2000, timeout=20)

    filler = small_fs / "filler"
    fill(filler)
    status = gw.wait_status(lambda s: fill(filler) >= 0 and s["buffer"]["state"] == "degraded", timeout=20)
    assert re.search(r"disk is full|No space left", status["buffer"]["reason"]), status["buffer"]
    mosquitto.start()
    received = len(sub.messages)
    sent = status["broker"]["readings_sent"]
    polls = {name: dev["polls"] for name, dev in status["devices"].items()}
    # Publishing goes on (a few hundred readings of the committed backlog) and so does polling. Not
    # longer: on a loaded machine publishing is slow, and every second of this phase adds ~1,400
    # readings to what waits in memory for the disk, which then must fit the filesystem's room.
    status = gw.wait_status(lambda s: fill(filler) >= 0 and s["broker"]["readings_sent"] > sent + 200
                            and all(d["polls"] > polls[n] + 40 for n, d in s["devices"].items()), timeout=30)
    assert status["buffer"]["state"] == "degraded", "the disk is still full"
    assert all(d["state"] == "ok" for d in status["devices"].values()), "polling stopped"
    # The backlog was published while degraded (the status above); the test's subscriber, cut off
    # with the broker, reconnects on its own time and gets it then.
    sub.wait_for(lambda ms: len(ms) > received, timeout=20)

    filler.unlink()
    gw.wait_status(lambda s: s["buffer"]["state"] == "ok" and s["buffer"]["reason"] is None, timeout=20)
    status = drain_devices(gw, flags)
    last = {name: dev["seq"] for name, dev in status["devices"].items()}
    evicted = status["buffer"]["evicted"]
    msgs = sub.wait_for(Arrivals().complete(last, evicted), timeout=30)
    assert_accounted(msgs, last, evicted)
    assert evicted == 0, "nothing had to be dropped: the in-memory bound was never reached"
    log = gw.log()
    assert 1 <= log.count("buffer degraded") <= 2 and log.count("buffer ok again") >= 1, log
    assert gw.terminate() == 0
    assert _integrity(small_fs / "data" / "buffer.db") == ["ok"]


def test_buffer_caps_itself_below_what_the_filesystem_can_give(
    small_fs: Path, tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber],
    gateways: list[GatewayProcess],
) -> None:
    """max_mb is larger than the filesystem: through a long broker outage the buffer evicts its
    oldest readings (counted) to keep FS_RESERVE free, instead of filling the disk and failing."""
    flags = [tmp_path / "a.dead", tmp_path / "b.dead"]
    config = base_config(small_fs / "data", mosquitto.port, commit="200ms")
    config["buffer"]["max_mb"] = 256
    config["devices"] = [sim_device("dev-a", "10ms", flags[0], points=200),
                         sim_device("dev-b", "10ms", flags[1], points=200)]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    sub.wait_for(lambda ms: len(telemetry(ms)) >= 3, timeout=20)
    mosquitto.stop()
    fill(small_fs / "filler", leave=FS_RESERVE + MiB)  # the rest of the board takes its share
    states: set[str] = set()
    lowest_free = free_bytes(small_fs)

    def evicting(status: dict[str, Any]) -> bool:
        nonlocal lowest_free
        states.add(status["buffer"]["state"])
        lowest_free = min(lowest_free, free_bytes(small_fs))
        return status["buffer"]["evicted"] > 20_000

    gw.wait_status(evicting, timeout=40)
    assert states == {"ok"}, f"the buffer did not stay within the filesystem: {states}"
    assert lowest_free > MiB, f"the filesystem got down to {lowest_free} bytes free"
    assert "buffer: over its filesystem's limit" in gw.log()

    mosquitto.start()
    status = drain_devices(gw, flags, timeout=60)
    last = {name: dev["seq"] for name, dev in status["devices"].items()}
    evicted = status["buffer"]["evicted"]
    msgs = sub.wait_for(Arrivals().complete(last, evicted), timeout=60)
    missing = assert_accounted(msgs, last, evicted)
    for device, seqs in missing.items():  # the oldest were evicted: one run of seqs per device
        assert seqs and max(seqs) - min(seqs) + 1 == len(seqs), f"{device}: evicted seqs are not one run"
    assert gw.terminate() == 0
    assert _integrity(small_fs / "data" / "buffer.db") == ["ok"]


async def test_space_taken_by_others_stops_the_growth_without_costing_stored_rows(small_fs: Path) -> None:
    """When something else leaves the buffer less than its reserve, the database stops growing: each
    commit evicts about as much as it adds (the oldest), the rows already stored stay, and commits go
    on succeeding; with the space back, nothing is evicted any more."""
    buffer = Buffer(small_fs / "data", max_bytes=64 * MiB, commit_interval=3600, fs_reserve=4 * MiB)
    await buffer.open()
    points = PointSet(tuple(f"p{i}" for i in range(50)), (None,) * 50)

    async def add(polls: int, base: int) -> None:
        for i in range(polls):
            buffer.put(Batch("dev", base + i, points, [float(base + i) + k / 7 for k in range(50)]))
        await buffer.flush()

    def pages() -> int:
        return _pragma(small_fs / "data" / "buffer.db", "page_count")[0]

    try:
        await add(2000, 0)  # about 1 MB stored
        stored = buffer.stats().pending
        fill(small_fs / "filler", leave=2 * MiB)  # under the reserve: no more growth
        sizes = []
        for k in range(1, 8):
            await add(200, 10_000 * k)
            stats = buffer.stats()
            assert stats.state == "ok", stats
            assert 0 < stats.evicted <= 50 * 200 * k + 50 * 60, f"evicted more than it added: {stats}"
            assert stats.pending >= stored - 50 * 60, f"stored rows were given up: {stats}"
            sizes.append(pages())
        assert sizes[-1] <= sizes[0] + 8, f"the database kept growing: {sizes} pages"
        (small_fs / "filler").unlink()
        evicted = buffer.stats().evicted
        await add(200, 90_000)
        assert buffer.stats().evicted == evicted
        got = await buffer.fetch(0, 10**7)
        assert [b.seq0 for b in got] == list(range(got[0].seq0, buffer.next_seq("dev"), 50)), "a hole in the seqs"
        assert got[-1].values[0] == 90_199.0
    finally:
        await buffer.close()
    assert _integrity(small_fs / "data" / "buffer.db") == ["ok"]


async def test_full_disk_holds_readings_in_memory_within_the_bound(small_fs: Path) -> None:
    """The real Buffer on a full filesystem: no more than max_pending_readings wait in memory, the
    oldest are dropped and counted as evicted; after the space returns the rest is committed with
    contiguous seqs (a dropped reading never got one), and the file is sound."""
    data = small_fs / "data"
    buffer = Buffer(data, max_bytes=64 * MiB, commit_interval=3600, max_pending_readings=1000, fs_reserve=0)
    await buffer.open()
    changes: list[str] = []
    buffer.on_state_change = lambda: changes.append(buffer.stats().state)  # for the status to go out at once
    points = PointSet(("a", "b", "c", "d"), (None,) * 4)
    try:
        buffer.put(Batch("dev", 1, points, [0, 0, 0, 0]))
        await buffer.flush()
        fill(small_fs / "filler")
        for i in range(1, 1001):
            buffer.put(Batch("dev", 1 + i, points, [i, i + 0.5, -i, "x" * 40]))
            if i % 100 == 0:
                await buffer.flush()
                assert buffer.stats().state == "degraded"
                assert buffer.stats().pending <= 1000 + 4
        stats = buffer.stats()
        assert stats.evicted == 4000 - 1000, stats  # the 250 newest batches of 1000 are kept
        (small_fs / "filler").unlink()
        await buffer.flush()
        assert buffer.stats().state == "ok" and buffer.stats().evicted == stats.evicted
        assert changes == ["degraded", "ok"]
        got = await buffer.fetch(0, 10**6)
        assert [b.values[0] for b in got] == [0, *range(751, 1001)]
        assert [b.seq0 for b in got] == list(range(1, 4 * len(got) + 1, 4))
    finally:
        await buffer.close()
    assert _integrity(data / "buffer.db") == ["ok"]


# -- a corrupt buffer file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage after a clean stop", "truncated after a clean stop",
                                    "garbage in the database and its WAL after a power cut"])
def test_corrupt_buffer_file_is_moved_aside_and_seq_never_reused(
    damage: str, tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber],
    gateways: list[GatewayProcess],
) -> None:
    """(Garbage in the database file alone, with a WAL that holds every page, is no corruption:
    SQLite reads the pages from the WAL. A damage it cannot read around is what is tested here.)"""
    data = tmp_path / "data"
    config = base_config(data, mosquitto.port)
    config["devices"] = [sim_device("dev-a", "10ms", tmp_path / "never")]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    sub.wait_for(lambda ms: sum(len(d["readings"]) for d in telemetry(ms)) >= 600, timeout=20)
    db, wal = data / "buffer.db", data / "buffer.db-wal"
    noise = random.Random(2)
    if "power cut" in damage:
        gw.kill()
        for path in (db, wal):
            path.write_bytes(noise.randbytes(max(path.stat().st_size, 8192)))
    else:
        assert gw.terminate() == 0
        if damage.startswith("garbage"):
            db.write_bytes(noise.randbytes(db.stat().st_size))
        else:
            os.truncate(db, db.stat().st_size // 2)
    published = max(key[1] for key in readings_by_key(sub.messages))

    gw.start()  # starts at once: no crash, no crash loop
    status = gw.status()
    assert status["buffer"]["recovered_corrupt"] == 1 and status["buffer"]["state"] == "ok"
    aside = [p.name for p in data.iterdir() if p.name.startswith("buffer.db.corrupt-")]
    assert aside and all(re.fullmatch(r"buffer\.db\.corrupt-\d{8}T\d{6}Z(-wal|-shm)?", n) for n in aside), aside
    lines = [line for line in gw.log().splitlines() if "is unusable" in line]
    assert len(lines) == 1 and "moved aside to" in lines[0], lines
    first_new = _first_seq_after(sub, published)
    assert first_new > published, "a seq published before the corruption was given again"

    assert gw.terminate() == 0  # and the fresh file is healthy: the next start recovers nothing
    gw.start()
    assert gw.status()["buffer"]["recovered_corrupt"] == 0
    assert len([p for p in data.iterdir() if p.name.startswith("buffer.db.corrupt-")]) == len(aside)
    assert _first_seq_after(sub, published) == first_new
    msgs = sub.wait_for(lambda ms: max(k[1] for k in readings_by_key(ms)) > first_new + 100, timeout=20)
    by_key = readings_by_key(msgs)
    assert all(all(c == copies[0] for c in copies) for copies in by_key.values())
    assert gw.terminate() == 0


def _first_seq_after(sub: Subscriber, published: int) -> int:
    """The lowest seq above ``published`` once one has arrived."""
    msgs = sub.wait_for(lambda ms: max(k[1] for k in readings_by_key(ms)) > published, timeout=20)
    return min(seq for _, seq in readings_by_key(msgs) if seq > published)


def _read_since(sub: Subscriber, since_ms: int, at_least: int, timeout: float = 30) -> dict[tuple[str, int], Any]:
    """Every reading received, by (device, seq), once ``at_least`` of them were read at or after ``since_ms``."""
    msgs = sub.wait_for(lambda ms: sum(c[0]["ts"] >= since_ms for c in readings_by_key(ms).values()) >= at_least,
                        timeout=timeout)
    by_key = readings_by_key(msgs)
    for key, copies in by_key.items():  # a number never stands for two readings
        assert all(c == copies[0] for c in copies), f"{key} was published for different readings: {copies}"
    return by_key


def test_buffer_file_put_back_in_time_never_gives_a_published_seq_again(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    """As a user would: stop cleanly, copy buffer.db aside, run a few seconds more (published), kill -9,
    put the old copy back without its -wal/-shm, start again: every reading read after the restart
    has a seq above every one published before; no number stands for two readings."""
    data = tmp_path / "data"
    config = base_config(data, mosquitto.port)
    config["devices"] = [sim_device("dev-a", "10ms", tmp_path / "never")]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    _read_since(sub, 0, 300)
    assert gw.terminate() == 0
    old = (data / "buffer.db").read_bytes()
    second = int(time.time() * 1000)
    gw.start()
    _read_since(sub, second, 600)  # a few seconds of readings published by the second run
    gw.kill()
    (data / "buffer.db").write_bytes(old)
    for suffix in ("-wal", "-shm"):
        (data / f"buffer.db{suffix}").unlink(missing_ok=True)
    third = int(time.time() * 1000)
    gw.start()
    by_key = _read_since(sub, third, 300)
    published = max(seq for (_, seq), copies in by_key.items() if copies[0]["ts"] < third)
    assert min(seq for (_, seq), copies in by_key.items() if copies[0]["ts"] >= third) > published
    lines = [line for line in gw.log().splitlines() if "behind the seq marks" in line]
    assert len(lines) == 1 and "for 1 devices" in lines[0], lines
    assert gw.status()["buffer"]["state"] == "ok"
    assert gw.terminate() == 0


def test_corruption_found_while_running_starts_a_fresh_file_without_a_restart(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    """A backlog from before a restart is in the database file alone; the file is damaged under the
    running gateway, and the publisher's read of the backlog finds it: one loud line, the file moved
    aside, polling and publishing go on in a fresh file with seqs above all before, state ok."""
    data = tmp_path / "data"
    config = base_config(data, mosquitto.port)
    config["devices"] = [sim_device("dev-a", "10ms", tmp_path / "never", points=200)]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    _read_since(sub, 0, 300)
    mosquitto.stop()
    db = data / "buffer.db"
    gw.wait_status(lambda s: s["buffer"]["bytes"] > MiB, timeout=60)  # 4 times SQLite's page cache
    assert gw.terminate() == 0
    gw.start()  # the backlog is read from the file, not from memory
    committed = gw.status()["devices"]["dev-a"]["seq"]
    with db.open("r+b") as f:  # garbage over the second quarter of the backlog's pages
        size = db.stat().st_size
        f.seek(size // 4)
        f.write(random.Random(3).randbytes(size // 4))
    mosquitto.start()
    status = gw.wait_status(lambda s: s["buffer"]["recovered_corrupt"] == 1, timeout=30)
    restarted = int(time.time() * 1000)
    by_key = _read_since(sub, restarted, 300)
    assert min(seq for (_, seq), copies in by_key.items() if copies[0]["ts"] >= restarted) > committed
    status = gw.wait_status(lambda s: s["buffer"]["state"] == "ok" and s["devices"]["dev-a"]["state"] == "ok")
    assert status["buffer"]["recovered_corrupt"] == 1, status["buffer"]
    aside = [p.name for p in data.iterdir() if p.name.startswith("buffer.db.corrupt-")]
    assert aside and all(re.fullmatch(r"buffer\.db\.corrupt-\d{8}T\d{6}Z(-wal|-shm)?", n) for n in aside), aside
    lines = [line for line in gw.log().splitlines() if "is unusable" in line]
    assert len(lines) == 1 and "moved aside to" in lines[0], lines
    assert gw.proc is not None and gw.proc.poll() is None
    assert gw.terminate() == 0
    assert _integrity(db) == ["ok"]


# -- power cuts ------------------------------------------------------------------------------------------------


COMMIT_MS = 200
CYCLES = 15


def test_power_cut_at_random_moments_loses_only_the_last_commit_window(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber], gateways: list[GatewayProcess],
) -> None:
    """kill -9 at seeded random moments (starting up, polling, committing, publishing, broker up or
    down), restarting each time. In the end: per device every seq from 1 arrived, each seq always
    with the same content, and each run lost at most its last commit window."""
    rng = random.Random(20240606)
    flags = [tmp_path / "a.dead", tmp_path / "b.dead"]
    config = base_config(tmp_path / "data", mosquitto.port, commit=f"{COMMIT_MS}ms")
    config["devices"] = [sim_device("dev-a", "10ms", flags[0]), sim_device("dev-b", "25ms", flags[1])]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways)
    runs: list[tuple[int, int]] = []  # (start, kill) wall-clock ms of each run
    for _ in range(CYCLES):
        if mosquitto.running and rng.random() < 0.3:
            mosquitto.stop()
        elif not mosquitto.running and rng.random() < 0.5:
            mosquitto.start()
        start_ms = int(time.time() * 1000)
        gw.start(wait=rng.random() < 0.7)
        time.sleep(rng.uniform(0.0, 1.8))  # the random moment of the power cut is the point of this test
        assert gw.proc is not None and gw.proc.poll() is None, f"the gateway died by itself:\n{gw.log()}"
        runs.append((start_ms, int(time.time() * 1000)))
        gw.kill()
    mosquitto.start()
    gw.start()
    status = drain_devices(gw, flags, timeout=60)
    assert status["buffer"]["evicted"] == 0
    last = {name: dev["seq"] for name, dev in status["devices"].items()}
    msgs = sub.wait_for(Arrivals().complete(last), timeout=60)
    assert_accounted(msgs, last)  # every seq 1..last, in order, identical copies
    assert all(last[d] > 200 for d in last), last
    by_key = readings_by_key(msgs)
    checked = 0
    for start_ms, kill_ms in runs:  # a run that polled long enough kept all but its last commit window
        stamps = [c[0]["ts"] for c in by_key.values() if start_ms <= c[0]["ts"] <= kill_ms]
        if stamps and min(stamps) < kill_ms - COMMIT_MS - 1000:
            assert kill_ms - max(stamps) < COMMIT_MS + 1000, "a run lost more than its last commit window"
            checked += 1
    assert checked >= 3, f"only {checked} runs polled long enough to check the loss bound"
    assert len(by_key) < sum(len(c) for c in by_key.values()), "no duplicates: no kill hit a publish in flight"
    assert "did not stop cleanly" in gw.log()
    assert gw.terminate() == 0
