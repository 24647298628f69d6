"""What the driver contract suite (tests/integration/drivers/test_contract.py) calls well-formed.

- ``check_points``, ``check_result``: a driver's points, and a PollResult lined up with them;
- ``check_inspection``: an ``inspect`` report (gateway.driver's Inspection, PointRow, TraceEvent);
- ``recorded_sleeps`` + ``polled``: the delays of every ``asyncio.sleep`` / ``time.sleep`` made
  while a poll runs (in its task, its child tasks and its worker threads, which inherit its
  context), also through names a driver module bound with ``from ... import sleep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.model import PointSet, PollResult

UNKNOWN = "zz_not_a_point"
SCALARS = (type(None), bool, int, float, str)  # what the wire formats carry
ROW_KEYS = {"name", "raw", "value", "unit", "error"}
EVENT_KEYS = {"ts", "dir", "data", "note", "ms"}
POLLING: contextvars.ContextVar[bool] = contextvars.ContextVar("contract_polling", default=False)


def check_result(driver: Any, result: Any) -> None:
    """``result`` is a PollResult whose values and errors line up with the points it read."""
    assert isinstance(result, PollResult), f"poll returned {type(result).__name__}, not a PollResult"
    points: PointSet = driver.points if result.points is None else result.points
    if result.points is not None:
        assert isinstance(result.points, PointSet), f"points is a {type(result.points).__name__}"
        pairs = dict(zip(driver.points.names, driver.points.units, strict=True))
        assert all(pairs.get(n, UNKNOWN) == u for n, u in zip(points.names, points.units, strict=True)), \
            f"a result's points {points} are not among the driver's {driver.points}"
        order = [driver.points.names.index(n) for n in points.names]
        assert order == sorted(set(order)), f"a result's points are out of the driver's order: {points.names}"
    assert isinstance(result.values, list), f"values is a {type(result.values).__name__}, not a list"
    assert len(result.values) == len(points.names), f"{len(result.values)} values for points {points.names}"
    odd = [v for v in result.values if not isinstance(v, SCALARS)]
    assert not odd, f"values the wire formats cannot carry: {odd!r}"
    errors = result.errors or {}
    assert isinstance(errors, dict), f"errors is a {type(errors).__name__}, not a dict"
    for index, reason in errors.items():
        assert isinstance(index, int) and 0 <= index < len(result.values), f"error for no point: {index!r}"
        assert isinstance(reason, str) and reason, f"error {index} has no reason: {reason!r}"
        assert result.values[index] is None, f"point {points.names[index]} has an error and a value"


def check_points(driver: Any) -> None:
    points = driver.points
    assert isinstance(points, PointSet), f"points is a {type(points).__name__}, not a PointSet"
    assert len(points.names) == len(points.units) > 0, points
    assert len(set(points.names)) == len(points.names), f"duplicate point names: {points.names}"
    assert driver.bus is None or isinstance(driver.bus, str), f"bus is {driver.bus!r}"


def check_inspection(driver: Any, report: Any, wanted: list[str], *, trace: bool) -> None:
    assert isinstance(report, dict) and set(report) == {"points", "error", "trace"}, report
    rows = report["points"]
    assert [row.get("name") for row in rows] == wanted, f"inspect reported {rows}, not the points {wanted}"
    units = dict(zip(driver.points.names, driver.points.units, strict=True))
    for row in rows:
        assert set(row) == ROW_KEYS, row
        assert row["raw"] is None or isinstance(row["raw"], str), row
        assert isinstance(row["value"], SCALARS), row
        assert row["unit"] == units[row["name"]], row
        assert row["error"] is None or (isinstance(row["error"], str) and row["error"]), row
    assert report["error"] is None or (isinstance(report["error"], str) and report["error"]), report
    events = report["trace"]
    assert isinstance(events, list), f"trace is a {type(events).__name__}, not a list"
    assert trace or not events, f"a trace nobody asked for: {events[:2]} ..."
    for event in events:
        assert set(event) == EVENT_KEYS and event["dir"] in ("tx", "rx"), event
        assert isinstance(event["ts"], float) and isinstance(event["data"], str), event
        assert isinstance(event["note"], str) and (event["ms"] is None or isinstance(event["ms"], float)), event


@contextlib.contextmanager
def recorded_sleeps(package: str) -> Iterator[list[float]]:
    """Delays of ``asyncio.sleep`` / ``time.sleep`` called while POLLING is set (see ``polled``)."""
    delays: list[float] = []
    real_async, real_time = asyncio.sleep, time.sleep

    async def async_sleep(delay: float, result: Any = None) -> Any:
        if POLLING.get():
            delays.append(delay)
        return await real_async(delay, result)

    def time_sleep(delay: float) -> None:
        if POLLING.get():
            delays.append(delay)
        real_time(delay)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", async_sleep)
        patch.setattr(time, "sleep", time_sleep)
        for name, module in list(sys.modules.items()):  # `from asyncio import sleep` in the driver's modules
            if isinstance(module, types.ModuleType) and name.split(".")[0] == package:
                for attr, value in list(vars(module).items()):
                    if value is real_async or value is real_time:
                        patch.setattr(module, attr, async_sleep if value is real_async else time_sleep)
        yield delays


async def polled(driver: Any) -> Any:
    """``driver.poll()`` in a task (and its threads and child tasks) where POLLING is set."""
    context = contextvars.copy_context()
    context.run(POLLING.set, True)
    return await asyncio.create_task(driver.poll(), context=context)
