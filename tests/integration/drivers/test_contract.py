"""The driver contract: one suite for every driver, built-in or third-party (drivers/README.md).

Static checks run for every installed driver (the ``gateway.drivers`` entry points). Live checks
run against each harness, a config plus a simulated device (tests/support/harnesses.py; a
third-party package declares its own in the ``gateway.driver_harnesses`` entry points):

- importing the driver's module loads nothing heavy: nothing beyond the stdlib, pydantic (and
  what pydantic itself requires), ``gateway`` and the driver's own package;
- its ``Config`` model, and every model inside it, forbids unknown keys;
- ``poll`` returns a well-formed PollResult: values and errors aligned with the points read;
- ``close`` is safe before ``open`` and twice, and ``open`` works again after it;
- a poll after ``close`` reopens the link or raises DriverError, as the driver's class docstring
  says with one of the fixed sentences ``REOPENS`` / ``RAISES``;
- a poll never sleeps to pace itself: ``asyncio.sleep`` and ``time.sleep`` are recorded while
  polls run (also names a driver module bound with ``from ... import sleep``), and a sleep of
  ``PACING`` or longer fails the test. Shorter ones are left alone: a Modbus RTU line's frame gap
  (3.5 character times, 3.6 ms at 9600 baud) is the protocol's silence between frames, not pacing;
- a device that stops answering makes a poll raise DriverError, never another exception;
- ``inspect`` and ``write``, where the driver has them, follow gateway/driver.py: the report's
  shape, the points asked for, no exception for a silent device, WriteRefused (with nothing sent)
  for an unknown point, a read-only point or a bad value, a plain DriverError when the device does
  not take a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import subprocess
import sys
import time
import typing
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gateway.driver import DeviceInfo, DriverError, SharedPool, WriteRefused, available_drivers, load_driver
from tests.support import harnesses
from tests.support.contract import UNKNOWN, check_inspection, check_points, check_result, polled, recorded_sleeps
from tests.support.harnesses import HarnessSpec

pytestmark = pytest.mark.integration

HARNESSES = harnesses.collect()
DRIVERS = available_drivers()
REOPENS = "After close, poll reopens the link."
RAISES = "After close, poll raises DriverError."
PACING = 0.010  # seconds: a sleep this long or longer during a poll is the driver pacing itself


def _having(method: str) -> list[str]:
    """The harnesses whose driver has ``method`` (the optional part of the protocol)."""
    names = []
    for name, spec in HARNESSES.items():
        with contextlib.suppress(KeyError):
            if callable(getattr(load_driver(spec.driver), method, None)):
                names.append(name)
    return names


@dataclass
class Rig:
    """A harness entered, and the drivers a test made on it (all closed at the end)."""

    spec: HarnessSpec
    cls: type[Any]
    harness: Any
    workdir: Path
    made: list[Any] = field(default_factory=list)

    @property
    def package(self) -> str:
        """The driver's top-level package: a sleep bound by name in one of its modules is recorded too."""
        return self.cls.__module__.split(".")[0]

    def make(self) -> Any:
        config = self.cls.Config.model_validate(copy.deepcopy(self.harness.config))
        interval = float(getattr(self.harness, "interval", 1.0))
        device = DeviceInfo(name="contract", interval=interval, shared=SharedPool(), data_dir=self.workdir)
        driver = self.cls(config, device)
        self.made.append(driver)
        return driver

    async def silence(self) -> None:
        """The device stops answering (the test is skipped for a harness that cannot do it)."""
        silence = getattr(self.harness, "silence", None)
        if silence is None:
            pytest.skip(f"harness {self.spec.name!r} cannot silence its device")
        outcome = silence()
        if inspect.isawaitable(outcome):
            await outcome


@pytest.fixture(params=sorted(HARNESSES))
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    spec = HARNESSES[request.param]
    try:
        cls = load_driver(spec.driver)
    except KeyError as exc:
        pytest.fail(f"harness {spec.name!r} ({spec.origin}) is for a driver that is not installed: {exc}")
    async with spec.factory()(tmp_path) as harness:
        made = Rig(spec, cls, harness, tmp_path)
        try:
            yield made
        finally:
            for driver in made.made:
                # Clean-up only: whether close raises is the close test's question, not a second failure here.
                with contextlib.suppress(Exception):
                    await driver.close()


# -- static: every installed driver ---------------------------------------------------------------

# Run in a fresh interpreter: which top-level modules does importing the driver load, beyond the
# stdlib, pydantic and what pydantic requires, gateway and the driver's own package?
_IMPORTS = r"""
import importlib.metadata as md, json, re, sys
entry = next(e for e in md.entry_points(group="gateway.drivers") if e.name == sys.argv[1])
before = set(sys.modules)
entry.load()
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
light = {"pydantic"} | {norm(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0])
                        for r in md.requires("pydantic") or () if "extra ==" not in r}
own = {"gateway", entry.module.split(".")[0]}
dists = md.packages_distributions()
heavy = {}
for top in sorted({name.split(".")[0] for name in set(sys.modules) - before}):
    if top in sys.stdlib_module_names or top.startswith("_sysconfigdata") or top in own:
        continue
    owners = dists.get(top, [])
    if not any(norm(d) in light for d in owners):
        heavy[top] = owners
print(json.dumps(heavy))
"""


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_import_loads_no_heavy_library(name: str) -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORTS, name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    heavy = json.loads(done.stdout)
    shown = ", ".join(f"{top} ({', '.join(owners) or 'no distribution'})" for top, owners in heavy.items())
    assert not heavy, f"importing driver {name!r} loads {shown}: import it in open() instead"


def _models(annotation: Any, seen: set[type[BaseModel]]) -> Iterator[type[BaseModel]]:
    """Every pydantic model reachable from ``annotation`` (unions, containers, Annotated, fields)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return
        seen.add(annotation)
        yield annotation
        for info in annotation.model_fields.values():
            yield from _models(info.annotation, seen)
        return
    for arg in typing.get_args(annotation):
        yield from _models(arg, seen)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_config_forbids_unknown_keys(name: str) -> None:
    model = load_driver(name).Config
    lax = [m.__qualname__ for m in _models(model, set()) if m.model_config.get("extra") != "forbid"]
    assert not lax, f"driver {name!r}: these config models do not forbid unknown keys: {', '.join(lax)}"
    with pytest.raises(ValidationError) as caught:
        model.model_validate({UNKNOWN: 1})
    unknown = [e for e in caught.value.errors() if e["loc"] == (UNKNOWN,)]
    assert [e["type"] for e in unknown] == ["extra_forbidden"], caught.value.errors()


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_driver_has_a_harness(name: str) -> None:
    if any(spec.driver == name for spec in HARNESSES.values()):
        return
    assert not DRIVERS[name].value.startswith("drivers."), f"built-in driver {name!r} has no harness"
    pytest.skip(f"driver {name!r} ships no harness ({harnesses.ENTRY_POINT_GROUP}): its live checks cannot run")


# -- live: every harness ----------------------------------------------------------------------------


async def test_poll_returns_a_well_formed_result(rig: Rig) -> None:
    driver = rig.make()
    check_points(driver)
    await driver.open()
    for _ in range(3):  # a driver with slow points reads a subset on some polls
        result = await driver.poll()
        check_result(driver, result)
        assert any(v is not None for v in result.values), f"an answering device gave no value: {result}"


async def test_close_is_safe_before_open_and_twice(rig: Rig) -> None:
    driver = rig.make()
    await driver.close()
    await driver.close()
    await driver.open()
    check_result(driver, await driver.poll())
    await driver.close()
    await driver.close()
    await driver.open()  # the scheduler opens a driver again after closing it
    check_result(driver, await driver.poll())


async def test_poll_after_close_does_what_the_docstring_says(rig: Rig) -> None:
    doc = " ".join((rig.cls.__doc__ or "").split())
    says = [sentence for sentence in (REOPENS, RAISES) if sentence in doc]
    assert len(says) == 1, f"the class docstring of {rig.cls.__qualname__} must say {REOPENS!r} or {RAISES!r}"
    driver = rig.make()
    await driver.open()
    check_result(driver, await driver.poll())
    await driver.close()
    if says == [REOPENS]:
        check_result(driver, await driver.poll())
    else:
        with pytest.raises(DriverError):
            await driver.poll()


async def test_poll_never_sleeps_to_pace_itself(rig: Rig) -> None:
    driver = rig.make()
    await driver.open()
    with recorded_sleeps(rig.package) as delays:
        results = [await polled(driver) for _ in range(3)]
    for result in results:
        check_result(driver, result)
    pacing = [delay for delay in delays if delay >= PACING]
    assert not pacing, f"poll slept {pacing} s (a driver never paces itself; the scheduler owns time)"


async def test_silent_device_makes_poll_raise_driver_error(rig: Rig) -> None:
    driver = rig.make()
    await driver.open()
    check_result(driver, await driver.poll())
    await rig.silence()
    # A streaming driver reports the values it has until they are stale: poll at the device's
    # interval, as the scheduler does, until the silence shows (a query driver's first poll raises).
    interval = float(getattr(rig.harness, "interval", 1.0))
    deadline = time.monotonic() + 10 * interval + 5
    while True:
        try:
            result = await driver.poll()
        except DriverError:
            return
        check_result(driver, result)
        assert time.monotonic() < deadline, "polls of a silent device still return values"
        await asyncio.sleep(interval)  # the scheduler's pace, not a wait for a condition


# -- live: the optional technician tools -------------------------------------------------------------


@pytest.mark.parametrize("rig", _having("inspect"), indirect=True)
async def test_inspect_follows_the_protocol(rig: Rig) -> None:
    driver = rig.make()
    names = list(driver.points.names)
    closed = await driver.inspect()  # works on a driver that is not open ...
    check_inspection(driver, closed, names, trace=False)
    assert closed["error"] is None and all(row["error"] is None for row in closed["points"]), closed
    await driver.open()
    check_result(driver, await driver.poll())
    traced = await driver.inspect(points=[names[-1]], trace=True)  # ... and on one that is
    check_inspection(driver, traced, [names[-1]], trace=True)
    assert any(event["dir"] == "tx" for event in traced["trace"]), f"a trace without the request: {traced}"
    check_result(driver, await driver.poll())  # left open as it was
    with pytest.raises(DriverError):
        await driver.inspect(points=[UNKNOWN])


@pytest.mark.parametrize("rig", _having("inspect"), indirect=True)
async def test_inspect_of_a_silent_device_reports_it(rig: Rig) -> None:
    driver = rig.make()
    await rig.silence()
    report = await driver.inspect()
    check_inspection(driver, report, list(driver.points.names), trace=False)
    assert report["error"], f"inspect of a silent device reports no error: {report}"


@pytest.mark.parametrize("rig", _having("write"), indirect=True)
async def test_write_follows_the_protocol(rig: Rig) -> None:
    driver = rig.make()
    count = getattr(rig.harness, "requests", None) or (lambda: 0)
    before = count()
    for point, value in [(UNKNOWN, 1), *getattr(rig.harness, "refused", ())]:
        with pytest.raises(WriteRefused):
            await driver.write(point, value)
    assert count() == before, "a refused write sent requests to the device"
    writes = list(getattr(rig.harness, "writes", ()))
    for point, value in writes:
        for given in (value, str(value)):  # the engineering value, or text from a command line
            sent = await driver.write(point, given)
            assert sent is None or isinstance(sent, str), f"write returned {sent!r}"
            if callable(getattr(driver, "inspect", None)):
                row = (await driver.inspect(points=[point]))["points"][0]
                assert (row["value"], row["error"]) == (value, None), f"wrote {given!r}, read back {row}"
        await driver.open()  # and while the driver is open, as in the daemon


@pytest.mark.parametrize("rig", _having("write"), indirect=True)
async def test_write_to_a_silent_device_raises_driver_error(rig: Rig) -> None:
    writes = list(getattr(rig.harness, "writes", ()))
    if not writes:
        pytest.skip(f"harness {rig.spec.name!r} names no write its device accepts")
    driver = rig.make()
    await rig.silence()
    with pytest.raises(DriverError) as caught:
        await driver.write(*writes[0])
    assert not isinstance(caught.value, WriteRefused), f"refused, as if nothing was sent: {caught.value}"
