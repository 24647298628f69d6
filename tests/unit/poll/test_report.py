"""Report by exception: deadband and heartbeat, per point."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from drivers.simulated.driver import SimulatedConfig, SimulatedDriver
from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import DeviceSpec
from gateway.model import Batch, PointSet
from gateway.poll.report import ReportFilter
from gateway.poll.scheduler import Scheduler

POINTS = PointSet(("temp", "level", "state"), ("C", "m", None))


def _filter(heartbeat: float | None = None) -> ReportFilter:
    return ReportFilter(POINTS, deadband={"temp": 0.5, "level": 0.0}, heartbeat=heartbeat)


def test_first_poll_sends_everything_then_only_what_moved() -> None:
    f = _filter()
    assert f.apply(POINTS, [20.0, 1.0, "open"], None, 0.0) == (POINTS, [20.0, 1.0, "open"], None)
    assert f.apply(POINTS, [20.4, 1.0, "open"], None, 1.0) is None  # temp within its band, the rest unchanged
    points, values, errors = f.apply(POINTS, [20.5, 1.0, "open"], None, 2.0)  # 0.5 from the last *sent* value
    assert points.names == ("temp",) and points.units == ("C",) and values == [20.5] and errors is None
    points, values, _ = f.apply(POINTS, [20.6, 1.01, "closed"], None, 3.0)  # no band on level: any change
    assert points.names == ("level", "state") and values == [1.01, "closed"]


def test_drift_below_the_band_is_measured_from_the_last_sent_value() -> None:
    f = _filter()
    f.apply(POINTS, [20.0, 1.0, "a"], None, 0.0)
    for k, v in enumerate([20.2, 20.4]):
        assert f.apply(POINTS, [v, 1.0, "a"], None, 1.0 + k) is None
    assert f.apply(POINTS, [20.6, 1.0, "a"], None, 5.0)[1] == [20.6]


def test_heartbeat_resends_quiet_points() -> None:
    f = _filter(heartbeat=60.0)
    f.apply(POINTS, [20.0, 1.0, "a"], None, 0.0)
    assert f.apply(POINTS, [20.0, 1.0, "a"], None, 59.9) is None
    assert f.apply(POINTS, [20.0, 1.0, "a"], None, 60.0) == (POINTS, [20.0, 1.0, "a"], None)


def test_errors_are_sent_when_they_start_and_stop_and_with_the_heartbeat() -> None:
    f = _filter(heartbeat=100.0)
    f.apply(POINTS, [20.0, 1.0, "a"], None, 0.0)
    points, values, errors = f.apply(POINTS, [None, 1.0, "a"], {0: "exception 2"}, 1.0)
    assert points.names == ("temp",) and values == [None] and errors == {0: "exception 2"}
    assert f.apply(POINTS, [None, 1.0, "a"], {0: "exception 2"}, 2.0) is None
    assert f.apply(POINTS, [20.0, 1.0, "a"], None, 3.0)[0].names == ("temp",)  # back: sent even within band


def test_subset_point_sets_are_reused() -> None:
    f = _filter()
    f.apply(POINTS, [20.0, 1.0, "a"], None, 0.0)
    first = f.apply(POINTS, [21.0, 1.0, "a"], None, 1.0)[0]
    second = f.apply(POINTS, [22.0, 1.0, "a"], None, 2.0)[0]
    assert first is second


async def test_scheduler_numbers_only_what_is_sent() -> None:
    options = SimulatedConfig.model_validate({"points": [{"name": "c", "signal": "counter"},
                                                         {"name": "flat", "signal": "sine", "amplitude": 0}]})
    spec = DeviceSpec(name="d", driver="simulated", interval=0.005, enabled=True, options=options,
                      deadband={"c": 3}, heartbeat=None)
    batches: list[Batch] = []
    sched = Scheduler(sink=batches.append, on_change=lambda: None)
    task = sched.add(spec, SimulatedDriver)
    async with asyncio.timeout(5):
        while len(batches) < 4:
            await asyncio.sleep(0.01)
    await sched.stop_all()
    assert batches[0].points.names == ("c", "flat")
    assert all(b.points.names == ("c",) for b in batches[1:])  # the flat line is never repeated
    counts = [b.values[0] for b in batches]
    assert all(b - a == 3 for a, b in itertools.pairwise(counts))
    assert task.health.polls >= counts[-1]  # polled every time, sent only when it moved


def test_config_accepts_bands_and_rejects_unknown_points(tmp_path: Path) -> None:
    text = """\
gateway: {id: gw1, data_dir: /tmp/x}
mqtt: {host: h}
devices:
  - name: d
    driver: simulated
    heartbeat: 10m
    deadband: {temp: 0.5}
    points: [{name: temp, signal: sine}]
"""
    path = tmp_path / "g.yaml"
    path.write_text(text)
    spec = load_config(path).devices[0]
    assert spec.deadband == {"temp": 0.5} and spec.heartbeat == 600.0
    path.write_text(text.replace("{temp: 0.5}", "{tmep: 0.5}"))
    try:
        load_config(path)
    except ConfigFileError as exc:
        assert str(exc) == f"{path}:7: devices[0].deadband.tmep: no point 'tmep' in this device (did you mean 'temp'?)"
    else:
        raise AssertionError("an unknown point in deadband was accepted")


def test_a_partial_poll_is_filtered_against_the_full_point_set() -> None:
    f = _filter()
    f.apply(POINTS, [20.0, 1.0, "a"], None, 0.0)
    slow = PointSet(("level", "state"), ("m", None))  # a poll that read only some points
    assert f.apply(slow, [1.0, "a"], None, 1.0) is None
    points, values, errors = f.apply(slow, [1.5, "a"], {1: "timeout"}, 2.0)
    assert points.names == ("level", "state") and values == [1.5, "a"] and errors == {1: "timeout"}
