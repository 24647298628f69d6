"""Scheduling maths and the poll loop's health tracking, with the simulated driver."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.simulated.driver import SimulatedConfig, SimulatedDriver
from gateway.buffer.queue import Buffer
from gateway.config.settings import DeviceSpec
from gateway.daemon.watchdog import gateway_problem
from gateway.driver import DeviceInfo, SharedPool
from gateway.model import Batch, PointSet, PollResult
from gateway.poll import device
from gateway.poll.device import MAX_BACKOFF, DeviceTask, backoff_delay, next_deadline
from gateway.poll.report import ReportFilter
from gateway.poll.scheduler import Scheduler
from tests.support.wait import wait_until_async


def test_next_deadline_on_time_keeps_grid() -> None:
    assert next_deadline(10.0, 1.0, 10.5) == (11.0, 0)


def test_next_deadline_skips_missed_slots_and_counts_them() -> None:
    # The poll took 3.5 intervals: slots 11, 12, 13 are gone, the next is 14.
    deadline, missed = next_deadline(10.0, 1.0, 13.5)
    assert (deadline, missed) == (14.0, 3)


def test_next_deadline_exactly_on_the_slot_is_not_an_overrun() -> None:
    assert next_deadline(10.0, 1.0, 11.0) == (11.0, 0)


@pytest.mark.parametrize(
    ("interval", "failures", "expected"),
    [(1.0, 1, 1.0), (1.0, 2, 2.0), (1.0, 4, 8.0), (1.0, 50, MAX_BACKOFF), (0.1, 3, 0.4), (120.0, 5, 120.0)],
)
def test_backoff_doubles_and_caps(interval: float, failures: int, expected: float) -> None:
    assert backoff_delay(interval, failures) == pytest.approx(expected)


def _spec(name: str, interval: float, fail_flag: Path | None = None) -> DeviceSpec:
    options = SimulatedConfig.model_validate(
        {"points": [{"name": "a", "signal": "counter"}, {"name": "b", "signal": "sine"}],
         "fail_flag": str(fail_flag) if fail_flag else None}
    )
    return DeviceSpec(name=name, driver="simulated", interval=interval, enabled=True, options=options)


async def test_device_lost_and_back_changes_state_once_each(tmp_path: Path) -> None:
    flag = tmp_path / "dead"
    batches: list[Batch] = []
    changes: list[str] = []
    other_batches = 0

    def sink(batch: Batch) -> None:
        nonlocal other_batches
        if batch.device == "healthy":
            other_batches += 1
        else:
            batches.append(batch)

    sched = Scheduler(sink=sink, on_change=lambda: changes.append("x"))
    task = sched.add(_spec("flaky", 0.02, flag), SimulatedDriver)
    sched.add(_spec("healthy", 0.02), SimulatedDriver)
    await wait_until_async(lambda: len(batches) >= 3)
    assert task.health.state == "ok"
    flag.write_text("unit 1 does not answer")
    await wait_until_async(lambda: task.health.state == "error")
    assert task.health.last_error == "unit 1 does not answer"
    seen_healthy = other_batches
    await wait_until_async(lambda: other_batches >= seen_healthy + 5)  # the others keep flowing
    count = len(batches)
    flag.unlink()
    await wait_until_async(lambda: task.health.state == "ok" and len(batches) > count)
    assert task.health.last_error is None
    assert task.health.errors >= 1
    await sched.stop_all()
    # starting->ok (x2 devices), ok->error, error->ok: four changes, not one per failed poll
    assert len(changes) == 4
    assert batches[0].points.names == ("a", "b")
    counters = [b.values[0] for b in batches]
    assert counters == sorted(counters)


class _SlowDriver:
    Config = SimulatedConfig
    bus = None

    def __init__(self, config: object, device: object) -> None:
        self.points = PointSet(("x",), (None,))
        self.polls = 0

    async def open(self) -> None:
        return None

    async def poll(self) -> PollResult:
        self.polls += 1
        await asyncio.sleep(0.035)  # the device is slower than the 10 ms interval
        return PollResult([self.polls])

    async def close(self) -> None:
        return None


async def test_slow_poll_skips_and_counts_overruns_instead_of_queueing() -> None:
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    task = sched.add(_spec("slow", 0.01), _SlowDriver)  # type: ignore[arg-type]
    await wait_until_async(lambda: len(batches) >= 5)
    await sched.stop_all()
    assert task.health.overruns >= 2 * (len(batches) - 1)
    assert task.health.polls == len(batches)


class _BusDriver(_SlowDriver):
    bus = "serial:/dev/ttyTEST"
    active = 0
    peak = 0

    async def poll(self) -> PollResult:
        cls = type(self)
        cls.active += 1
        cls.peak = max(cls.peak, cls.active)
        await asyncio.sleep(0.005)
        cls.active -= 1
        return PollResult([1])


async def test_devices_on_one_bus_take_turns() -> None:
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    for i in range(3):
        sched.add(_spec(f"unit-{i}", 0.005), _BusDriver)  # type: ignore[arg-type]
    await wait_until_async(lambda: len({b.device for b in batches}) == 3 and len(batches) >= 15)
    await sched.stop_all()
    assert _BusDriver.peak == 1


@pytest.mark.parametrize("seam", ["sink", "stamp", "filter"])
async def test_a_failure_past_the_driver_is_a_device_error_and_polling_goes_on(
    seam: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug between the driver's answer and the buffer (handing the batch over, stamping it, the
    report filter) is reported and counted like a failed poll; polling goes on and recovers."""
    caplog.set_level(logging.WARNING, logger="gateway.poll.scheduler")
    fault = False
    batches: list[Batch] = []
    changes: list[str] = []

    def maybe_fail(where: str) -> None:
        if fault and where == seam:
            raise RuntimeError(f"bug in the {seam}")

    def sink(batch: Batch) -> None:
        maybe_fail("sink")
        batches.append(batch)

    def stamp() -> None:
        maybe_fail("stamp")

    apply = ReportFilter.apply

    def failing_apply(self: ReportFilter, *args: Any) -> Any:
        maybe_fail("filter")
        return apply(self, *args)

    monkeypatch.setattr(ReportFilter, "apply", failing_apply)
    sched = Scheduler(sink=sink, on_change=lambda: changes.append(task.health.state), stamp=stamp)
    task = sched.add(dataclasses.replace(_spec("d", 0.01), deadband=0.0), SimulatedDriver)
    try:
        await wait_until_async(lambda: len(batches) >= 3)
        fault = True
        await wait_until_async(lambda: task.health.errors >= 3)  # still polling, each poll counted...
        assert task.health.state == "error" and task.alive
        assert task.health.last_error == f"handling the poll failed: RuntimeError: bug in the {seam}"
        count = len(batches)
        fault = False
        await wait_until_async(lambda: task.health.state == "ok" and len(batches) > count)  # ...and back
    finally:
        await sched.stop_all()
    assert changes == ["ok", "error", "ok"]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert logged == [("ERROR", f"device d: handling the poll failed: RuntimeError: bug in the {seam}"),
                      ("WARNING", "device d is back")]  # once, not per failed poll
    counters = [b.values[0] for b in batches]
    assert counters == sorted(counters)


async def test_a_poll_loop_that_dies_is_seen_by_the_watchdog_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """The loop can still die (here its check of the pipeline raises, once): the watchdog's health
    check names it while it is dead, the status says so, and it is started again after a backoff."""
    caplog.set_level(logging.WARNING, logger="gateway.poll.scheduler")
    broken = False
    batches: list[Batch] = []

    def congested() -> bool:
        if broken:
            raise RuntimeError("bug in the congestion check")
        return False

    sched = Scheduler(sink=batches.append, on_change=lambda: None, congested=congested)
    task = sched.add(_spec("d", 0.2), SimulatedDriver)
    try:
        await wait_until_async(lambda: len(batches) >= 1)
        dead = task._task
        assert dead is not None
        broken = True
        await asyncio.wait({dead}, timeout=5)
        # Dead now, restarted 0.2 s (the usual backoff) later:
        assert gateway_problem(sched, None) == \
            "the poll task of device d has died: RuntimeError: bug in the congestion check"
        assert task.health.state == "error"
        assert task.health.last_error == "poll loop ended: RuntimeError: bug in the congestion check"
        broken = False
        count = len(batches)
        await wait_until_async(lambda: task.alive and task.health.state == "ok" and len(batches) > count)
        assert gateway_problem(sched, None) is None and task._task is not dead
    finally:
        await sched.stop_all()  # must not raise: the daemon still has to flush the buffer
    assert sched.tasks == {}
    assert task.health.errors == 1
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert logged == [("ERROR", "device d: poll loop ended: RuntimeError: bug in the congestion check; "
                                "restarting it in 0.2 s"),
                      ("WARNING", "device d is back")]


async def test_a_wall_clock_step_neither_stops_nor_bunches_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polls run on the monotonic clock: an NTP step of the wall clock (here one hour back, the
    one fault a test cannot make for real) changes the readings' ts, never the cadence."""
    import time as time_module

    real_time = time_module.time
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    task = sched.add(_spec("d", 0.02), SimulatedDriver)
    await wait_until_async(lambda: len(batches) >= 5)
    monkeypatch.setattr(time_module, "time", lambda: real_time() - 3600)
    stepped_at = len(batches)
    started = time_module.monotonic()
    await wait_until_async(lambda: len(batches) >= stepped_at + 10)
    elapsed = time_module.monotonic() - started
    await sched.stop_all()
    assert elapsed >= 9 * 0.02  # no burst of catch-up polls
    assert batches[stepped_at].ts < batches[stepped_at - 1].ts - 3_000_000  # ts follows the wall clock
    counters = [b.values[0] for b in batches]
    assert counters == list(range(1, len(batches) + 1))  # one poll after another, none lost or repeated
    assert task.health.errors == 0


async def test_a_congested_pipeline_skips_polls_and_waits_for_relief_not_each_interval() -> None:
    batches: list[Batch] = []
    congested = True
    checks = 0
    relief = asyncio.Event()

    def is_congested() -> bool:
        nonlocal checks
        checks += 1
        return congested

    sched = Scheduler(sink=batches.append, on_change=lambda: None, congested=is_congested, relief=relief.wait)
    task = sched.add(_spec("d", 0.01), SimulatedDriver)
    await wait_until_async(lambda: checks >= 1)
    started = time.monotonic()
    while time.monotonic() - started < 0.1:  # ten intervals pass...
        await asyncio.sleep(0.01)
    assert checks == 1 and batches == []  # ...with one look at the gate, not ten
    congested = False
    relief.set()
    await wait_until_async(lambda: len(batches) >= 3)
    await sched.stop_all()
    assert task.health.overruns >= 10  # the skipped poll and the slots it waited through
    assert [b.values[0] for b in batches][:3] == [1, 2, 3]


class _StampDriver(SimulatedDriver):
    async def poll(self) -> PollResult:
        result = await super().poll()
        return PollResult([asyncio.get_running_loop().time(), *result.values[1:]])


async def test_devices_with_one_interval_poll_together_on_its_grid() -> None:
    """Polls run on multiples of the interval of the monotonic clock: devices started apart poll
    together (their timers fall due at the same instant: one wake-up for all of them)."""
    interval = 0.2
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    sched.add(_spec("a", interval), _StampDriver)  # type: ignore[arg-type]
    await asyncio.sleep(0.07)  # the second device starts a third of an interval later
    sched.add(_spec("b", interval), _StampDriver)  # type: ignore[arg-type]
    await wait_until_async(lambda: sum(b.device == "b" for b in batches) >= 4)
    await sched.stop_all()
    polled = {d: [b.values[0] for b in batches if b.device == d][1:] for d in ("a", "b")}  # after the first
    slots = {d: {round(t / interval) for t in times} for d, times in polled.items()}
    assert slots["b"] and slots["b"] <= slots["a"]  # the same grid points...
    at = {round(t / interval): t for t in polled["a"]}
    assert all(abs(t - at[round(t / interval)]) < 0.005 for t in polled["b"])  # ...at the same moment
    assert all(abs(t - round(t / interval) * interval) < interval / 4 for t in polled["a"] + polled["b"])


async def test_simulated_values_keep_their_points_order_and_resolution() -> None:
    options = SimulatedConfig.model_validate({"points": [
        {"name": "s", "signal": "sine", "decimals": 2, "amplitude": 10, "offset": 20},
        {"name": "c", "signal": "counter", "offset": 100},
        {"name": "r", "signal": "random", "decimals": 0, "amplitude": 50}]})
    spec = DeviceSpec(name="d", driver="simulated", interval=1.0, enabled=True, options=options)
    driver = SimulatedDriver(spec.options, DeviceInfo(name="d", interval=1.0, shared=SharedPool(), data_dir=None))
    polls = [(await driver.poll()).values for _ in range(3)]
    assert [p[1] for p in polls] == [101, 102, 103]  # the counter, in its place
    assert all(10 <= p[0] <= 30 and round(p[0], 2) == p[0] for p in polls)
    assert all(isinstance(p[2], float) and p[2] == int(p[2]) and abs(p[2]) <= 25 for p in polls)


async def test_a_commit_on_the_grid_takes_the_polls_due_at_the_same_instant(tmp_path: Path) -> None:
    """Polls and commits share their grid point: the commit runs in the same wake-up, after the
    polls, so it carries them (instead of leaving them waiting a whole commit interval)."""
    interval = 0.2
    buffer = Buffer(tmp_path, max_bytes=10**8, commit_interval=interval)
    await buffer.open()
    loop = asyncio.get_running_loop()
    lags: list[float] = []  # per commit: commit time minus the time of the newest poll it stored
    measuring: set[asyncio.Task[None]] = set()

    async def lag(committed_at: float) -> None:
        got = await buffer.fetch(0, 10**6)  # what that commit stored: everything before it is acked
        lags.append(committed_at - max(b.values[0] for b in got))
        buffer.ack([b.row for b in got])

    buffer.on_commit = lambda: measuring.add(asyncio.ensure_future(lag(loop.time())))
    sched = Scheduler(sink=buffer.put, on_change=lambda: None)
    sched.add(_spec("d", interval), _StampDriver)  # type: ignore[arg-type]
    try:
        await wait_until_async(lambda: len(lags) >= 5)
    finally:
        await sched.stop_all()
        await asyncio.gather(*measuring)
        await buffer.close()
    assert all(lag < interval / 2 for lag in lags[1:]), lags  # the first commit may precede the first grid poll


class _HangingDriver(_SlowDriver):
    """Answers at once, except its second poll, which never ends unless cancelled (and with
    ``swallow`` then answers anyway, as a driver that swallows a cancel would)."""

    hung_at = 0.0  # loop time the hanging poll began
    swallow = False

    async def poll(self) -> PollResult:
        self.polls += 1
        if self.polls == 2:
            type(self).hung_at = asyncio.get_running_loop().time()
            try:
                await asyncio.Event().wait()  # nobody sets it
            except asyncio.CancelledError:
                if not self.swallow:
                    raise
                return PollResult([-1])
        return PollResult([self.polls])


async def test_a_hung_poll_is_abandoned_after_the_guard_and_polling_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "POLL_GUARD", 0.2)
    loop = asyncio.get_running_loop()
    batches: list[Batch] = []
    changed: list[tuple[float, str]] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: changed.append((loop.time(), task.health.state)))
    task = sched.add(_spec("stuck", 0.05), _HangingDriver)  # type: ignore[arg-type]
    await wait_until_async(lambda: task.health.state == "error")
    assert task.health.last_error == "poll hung and was abandoned"
    lost_at = next(t for t, state in changed if state == "error")
    assert lost_at - _HangingDriver.hung_at >= 0.05 + 0.2 - 0.01  # not before interval + POLL_GUARD
    await wait_until_async(lambda: len(batches) >= 2)  # the next poll (after a backoff) answers
    assert [b.values for b in batches[:2]] == [[1], [3]]
    assert task.health.state == "ok" and task.alive
    await sched.stop_all()


async def test_stopping_a_device_in_a_hung_poll_is_not_a_device_error() -> None:
    sched = Scheduler(sink=lambda batch: None, on_change=lambda: None)
    task = sched.add(_spec("stuck", 0.02), _HangingDriver)  # type: ignore[arg-type]
    driver = task.driver
    await wait_until_async(lambda: driver.polls == 2)  # type: ignore[attr-defined]
    await asyncio.wait_for(sched.stop_all(), 2.0)
    assert not task.alive
    assert task.health.state == "ok" and task.health.errors == 0


def _guarded_device(monkeypatch: pytest.MonkeyPatch, guard: float, driver: type, interval: float,
                    ) -> tuple[Scheduler, DeviceTask, list[Batch]]:
    """One device of ``driver`` polled every ``interval`` with POLL_GUARD set to ``guard``."""
    monkeypatch.setattr(device, "POLL_GUARD", guard)
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    return sched, sched.add(_spec("dev", interval), driver), batches


class _SteadyDriver(_SlowDriver):
    async def poll(self) -> PollResult:
        self.polls += 1
        await asyncio.sleep(0.05)  # longer than the interval, well within the guard
        return PollResult([self.polls])


async def test_polls_slower_than_the_interval_but_within_the_guard_are_never_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Back-to-back polls for several guard periods: the guard looks at each poll's own start."""
    sched, task, batches = _guarded_device(monkeypatch, 0.3, _SteadyDriver, 0.01)
    await wait_until_async(lambda: len(batches) >= 25)  # about 1.3 s: four guard periods
    await sched.stop_all()
    assert task.health.errors == 0 and task.health.state == "ok"


class _SwallowingDriver(_HangingDriver):
    swallow = True


async def test_a_driver_that_swallows_the_guards_cancel_keeps_polling_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sched, task, batches = _guarded_device(monkeypatch, 0.1, _SwallowingDriver, 0.02)
    await wait_until_async(lambda: len(batches) >= 4)
    assert [b.values for b in batches[:3]] == [[1], [-1], [3]]  # what it answered counts, as a poll
    assert task.health.state == "ok" and task.health.errors == 0
    assert task._task is not None and task._task.cancelling() == 0  # the guard took its cancel back
    await asyncio.wait_for(sched.stop_all(), 2.0)
    assert not task.alive


class _StuckDriver(_SlowDriver):
    """Its second poll hangs and swallows every cancel until ``unstuck`` is set, then answers."""

    bus = "serial:/dev/ttySTUCK"
    unstuck = asyncio.Event()

    async def poll(self) -> PollResult:
        self.polls += 1
        while self.polls == 2 and not self.unstuck.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.unstuck.wait()
        return PollResult([self.polls])


class _NeighbourDriver(_SlowDriver):
    bus = _StuckDriver.bus

    async def poll(self) -> PollResult:
        self.polls += 1
        return PollResult([self.polls])


def _stuck_on_a_bus(monkeypatch: pytest.MonkeyPatch) -> tuple[Scheduler, DeviceTask, DeviceTask, list[Batch]]:
    """A device whose second poll ignores cancellation, and a neighbour on its bus (guard 0.1 s, grace 0.2 s)."""
    monkeypatch.setattr(_StuckDriver, "unstuck", asyncio.Event())
    monkeypatch.setattr(device, "CANCEL_GRACE", 0.2, raising=False)
    sched, stuck, batches = _guarded_device(monkeypatch, 0.1, _StuckDriver, 0.02)
    return sched, stuck, sched.add(_spec("other", 0.02), _NeighbourDriver), batches  # type: ignore[arg-type]


async def test_a_poll_that_ignores_cancellation_frees_the_bus_and_does_not_hold_up_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.poll.scheduler")
    sched, stuck, other, batches = _stuck_on_a_bus(monkeypatch)
    try:
        await wait_until_async(lambda: stuck.health.state == "error")
        assert stuck.health.last_error == "poll hung and ignored cancellation; device stuck"
        count = sum(b.device == "other" for b in batches)
        await wait_until_async(lambda: sum(b.device == "other" for b in batches) >= count + 10)  # the bus is free
        assert other.health.state == "ok"
        assert stuck.driver.polls == 2  # type: ignore[attr-defined]  # not polled again while stuck
        started = time.monotonic()
        await asyncio.wait_for(sched.stop_all(), 5.0)
        assert time.monotonic() - started < 2.0  # the grace (0.2 s) and the driver's close, not forever
        assert not stuck.alive and not other.alive
        left = set(sched._left_behind)
        assert len(left) == 1  # the stuck poll, kept referenced until it ends
    finally:
        _StuckDriver.unstuck.set()
    await asyncio.wait(left, timeout=5)
    assert not sched._left_behind
    assert [b.values for b in batches if b.device == "dev"] == [[1]]  # nothing from after the stop
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert logged == [
        ("ERROR", "device dev: poll hung and ignored cancellation; device stuck; its bus is freed for the others"),
        ("ERROR", "device dev: a poll ignored cancellation; left behind at stop")]


async def test_a_stuck_poll_that_ends_at_last_lets_its_device_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    sched, stuck, other, batches = _stuck_on_a_bus(monkeypatch)
    try:
        await wait_until_async(lambda: stuck.health.state == "error")
        assert stuck.health.last_error == "poll hung and ignored cancellation; device stuck"
        _StuckDriver.unstuck.set()
        await wait_until_async(lambda: stuck.health.state == "ok")
        await wait_until_async(lambda: sum(b.device == "dev" for b in batches) >= 3)
    finally:
        _StuckDriver.unstuck.set()
        await asyncio.wait_for(sched.stop_all(), 5.0)
    # The late answer of the stuck poll is dropped: its time stamp would be that of its end.
    assert [b.values for b in batches if b.device == "dev"][:3] == [[1], [3], [4]]
    assert stuck.health.errors == 1 and other.health.errors == 0
