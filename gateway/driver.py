"""The driver contract, and the registry that finds drivers by entry point.

The core never imports a driver module by name: built-in and third-party drivers alike are
registered in the ``gateway.drivers`` entry-point group and loaded only when a config uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from gateway.model import PointSet, PollResult

ENTRY_POINT_GROUP = "gateway.drivers"

# Keys of a device entry the core owns; everything else belongs to the driver's Config model.
COMMON_DEVICE_KEYS = frozenset({"name", "driver", "interval", "enabled"})


class DriverError(Exception):
    """A device could not be reached or did not answer; the poll produced nothing."""


class ConfigError(Exception):
    """A config is invalid in a way a model alone cannot express (raised by a driver's checks)."""


class SharedPool:
    """Connections shared by several devices (units on one RS-485 port, one serial server).

    Owned by the daemon and handed to every driver in DeviceInfo, so drivers need no global table.
    ``acquire(key, factory)`` returns the one object for ``key``, made by ``factory()`` on first use;
    ``release(key)`` returns the object when its last user released it (the caller closes it), else
    None.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, int]] = {}

    def acquire(self, key: str, factory: Callable[[], Any]) -> Any:
        item, users = self._items.get(key, (None, 0))
        if users == 0:
            item = factory()
        self._items[key] = (item, users + 1)
        return item

    def release(self, key: str) -> Any | None:
        item, users = self._items.get(key, (None, 0))
        if users <= 1:
            self._items.pop(key, None)
            return item
        self._items[key] = (item, users - 1)
        return None

    def users(self, key: str) -> int:
        return self._items.get(key, (None, 0))[1]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the core tells a driver about the device it serves."""

    name: str
    interval: float  # seconds between polls
    shared: SharedPool = field(default_factory=SharedPool)  # connections shared with other devices
    data_dir: Path | None = None  # the gateway's data directory (e.g. for the system driver's disk figures)


@runtime_checkable
class Driver(Protocol):
    """A device driver.

    - ``Config``: a pydantic model (``extra="forbid"``) for the device's own keys, i.e. every key
      of the device entry other than ``name``, ``driver``, ``interval`` and ``enabled``.
    - ``points``: the points it reports, fixed at construction.
    - ``bus``: a key naming a shared physical line (an RS-485 port), or None. Devices with the same
      bus key are polled one at a time.
    - ``open``/``close``: acquire and release the connection; ``open`` may raise DriverError.
    - ``poll``: read every point once. Returns values plus per-point errors; raises DriverError
      when the device did not answer at all. A driver never sleeps to pace itself.
    Heavy libraries are imported inside ``open``, so a config that does not use a driver never
    loads them.
    """

    Config: ClassVar[type[BaseModel]]
    points: PointSet
    bus: str | None

    def __init__(self, config: Any, device: DeviceInfo) -> None: ...
    async def open(self) -> None: ...
    async def poll(self) -> PollResult: ...
    async def close(self) -> None: ...


def available_drivers() -> dict[str, Any]:
    """Entry points of every installed driver, by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_driver(name: str) -> type[Driver]:
    """Import and return the driver class registered under ``name``.

    Raises KeyError naming the installed drivers when there is none by that name.
    """
    found = available_drivers()
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise KeyError(f"unknown driver {name!r} (installed: {known})")
    return found[name].load()
