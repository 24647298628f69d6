"""The system driver: the gateway's own board reported as an ordinary device.

CPU temperature, the Raspberry Pi firmware's under-voltage and throttling flags, load, memory
available, free space of the data directory's filesystem, bytes this process wrote to storage,
uptime. Which of them the board has is decided once, when the driver is made: a value the board
lacks is left out, never invented. See README.md.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.serialio.settings import check_unique
from drivers.system.sources import POINTS, Source, probe
from gateway.driver import DeviceInfo, DriverError
from gateway.model import PointSet, PollResult

log = logging.getLogger(__name__)

PointName = Literal[tuple(POINTS)]  # type: ignore[valid-type]


class SystemConfig(BaseModel):
    """A system device entry (the keys other than name, driver, interval, enabled)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points: tuple[PointName, ...] | None = None  # None: every point this board has
    # disk_free: this directory's filesystem (default: the gateway's data directory)
    path: str | None = Field(default=None, min_length=1)
    thermal_zone: str | None = None  # cpu_temp: a zone type ("cpu-thermal") or name ("thermal_zone1")
    root: str = Field(default="/", min_length=1)  # every path is looked up under this (tests)

    @field_validator("points")
    @classmethod
    def _points(cls, points: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if points is not None:
            if not points:
                raise ValueError("list at least one point, or leave points out for every point the board has")
            check_unique(points)
        return points


class SystemDriver:
    """Reads the board's health from /sys, /proc and statvfs (see the module docstring).

    After close, poll reopens the link. (It holds none open: it reads the files as before.)
    """

    Config: ClassVar[type[BaseModel]] = SystemConfig
    bus: str | None = None

    def __init__(self, config: SystemConfig, device: DeviceInfo) -> None:
        self._device = device
        path = config.path or str(device.data_dir or "/var/lib/gateway")
        sources = probe(Path(config.root), path, config.thermal_zone)
        available = {name: source for source in sources for name in source.points}
        wanted = config.points or tuple(POINTS)
        names = tuple(n for n in wanted if n in available)
        # Only points the config asked for by name are worth a warning; the default takes what exists.
        self.missing = tuple(n for n in wanted if n not in available) if config.points else ()
        self.points = PointSet(names=names, units=tuple(POINTS[n] for n in names))
        self._sources: list[Source] = [s for s in sources if any(n in names for n in s.points)]
        self._warned = False

    async def open(self) -> None:
        if self.missing and not self._warned:
            self._warned = True
            log.warning("device %s: this board has no %s; left out", self._device.name, ", ".join(self.missing))
        if not self.points.names:
            raise DriverError(f"this board has none of the points asked for ({', '.join(self.missing)})")

    async def poll(self) -> PollResult:
        """Read every source once (in a worker thread: a slow sysfs read must not stall the loop)."""
        found, failed = await asyncio.to_thread(self._read)
        values: list[Any] = []
        errors: dict[int, str] = {}
        for i, name in enumerate(self.points.names):
            if name in found:
                values.append(found[name])
            else:
                values.append(None)
                errors[i] = failed.get(name, "not read")
        if len(errors) == len(values):
            raise DriverError(f"no health value could be read ({next(iter(errors.values()))})")
        return PollResult(values, errors or None)

    async def close(self) -> None:
        return None

    def _read(self) -> tuple[dict[str, Any], dict[str, str]]:
        found: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for source in self._sources:
            try:
                found.update(source.read())
            except (OSError, ValueError, IndexError, KeyError) as exc:
                reason = f"cannot read {source.where}: {exc}"
                failed.update(dict.fromkeys(source.points, reason))
        return found, failed
