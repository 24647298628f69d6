"""A driver for devices that exist only in software: the demo, the tests and the benchmarks use it."""

from __future__ import annotations

import math
import operator
import os
import random
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.driver import DeviceInfo, DriverError
from gateway.fields import Duration, Name
from gateway.model import PointSet, PollResult


class SimPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Name
    signal: Literal["counter", "sine", "random"] = "counter"
    period: Duration = 60.0  # sine period
    amplitude: float = 1.0  # sine amplitude, random spread
    offset: float = 0.0
    decimals: int = Field(default=6, ge=0, le=12)  # the resolution of sine and random values
    unit: str | None = None


class SimulatedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    points: list[SimPoint] = Field(min_length=1)
    # For fault tests: a file whose presence makes the device stop answering.
    fail_flag: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> SimulatedConfig:
        names = [p.name for p in self.points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate point name {dupes[0]!r}")
        return self


class SimulatedDriver:
    """Generates counter, sine and random signals; ``fail_flag`` simulates a dead device.

    After close, poll reopens the link. (There is none: it polls as before.)
    """

    Config: ClassVar[type[BaseModel]] = SimulatedConfig
    bus: str | None = None

    def __init__(self, config: SimulatedConfig, device: DeviceInfo) -> None:
        self._config = config
        self._device = device
        self.points = PointSet(
            names=tuple(p.name for p in config.points), units=tuple(p.unit for p in config.points)
        )
        self._count = 0
        # The points grouped by signal, each group computed in one comprehension, then put back in
        # point order by one itemgetter (this driver's own cost counts in `gateway bench`).
        groups: dict[str, list[int]] = {"counter": [], "sine": [], "random": []}
        for i, p in enumerate(config.points):
            groups[p.signal].append(i)
        pts = config.points
        self._counters = [int(pts[i].offset) for i in groups["counter"]]
        self._sines = [(2 * math.pi / pts[i].period, pts[i].amplitude, pts[i].offset, 10.0 ** pts[i].decimals)
                       for i in groups["sine"]]
        self._randoms = [(pts[i].amplitude, pts[i].offset, 10.0 ** pts[i].decimals) for i in groups["random"]]
        # A generator's state is 2.5 KB: only a device with random points has one (seeded by its name).
        self._rng = random.Random(device.name) if self._randoms else None
        order = groups["counter"] + groups["sine"] + groups["random"]
        at = {point: k for k, point in enumerate(order)}
        self._in_point_order = operator.itemgetter(*(at[i] for i in range(len(pts))))

    async def open(self) -> None:
        self._check_alive()

    async def poll(self) -> PollResult:
        self._check_alive()
        self._count += 1
        n, now, sin = self._count, time.time(), math.sin
        # round(x * 10**d) / 10**d: d decimals, as a sensor gives, much cheaper than round(x, d)
        grouped = [n + offset for offset in self._counters]
        grouped += [round((o + a * sin(w * now)) * k) / k for w, a, o, k in self._sines]
        if self._rng is not None:
            rnd = self._rng.random
            grouped += [round((o + a * (rnd() - 0.5)) * k) / k for a, o, k in self._randoms]
        if len(grouped) == 1:
            return PollResult(grouped)
        return PollResult(list(self._in_point_order(grouped)))

    async def close(self) -> None:
        return None

    def _check_alive(self) -> None:
        flag = self._config.fail_flag
        if flag is not None and os.path.exists(flag):  # a stat, not an exception, on every poll
            try:
                with open(flag) as fh:
                    reason = fh.read().strip() or "simulated failure"
            except FileNotFoundError:
                return
            raise DriverError(reason)
