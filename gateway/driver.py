"""The driver contract, and the registry that finds drivers by entry point.

The core never imports a driver module by name: built-in and third-party drivers alike are
registered in the ``gateway.drivers`` entry-point group and loaded only when a config uses them
(or, for the technician tools a driver offers, when one of them is asked for: ``driver_tools``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, runtime_checkable

from pydantic import BaseModel

from gateway.model import PointSet, PollResult

if TYPE_CHECKING:
    import argparse

ENTRY_POINT_GROUP = "gateway.drivers"

# Keys of a device entry the core owns; everything else belongs to the driver's Config model.
COMMON_DEVICE_KEYS = frozenset({"name", "driver", "interval", "enabled", "deadband", "heartbeat"})


class DriverError(Exception):
    """A device could not be reached or did not answer; the poll produced nothing."""


class ConfigError(Exception):
    """A config is invalid in a way a model alone cannot express (raised by a driver's checks)."""


class UsageError(ValueError):
    """A technician tool's arguments do not describe a usable request (exit status 2); the message says why."""


class WriteRefused(DriverError):
    """A write was refused before anything was sent; the message is the reason.

    Unknown or read-only point, a value of the wrong type, out of the point's min/max or of its
    type's range. A write the device itself rejects is a plain DriverError.
    """


class PointRow(TypedDict):
    """One point of an ``inspect`` report (JSON-able): what a technician's ``gateway read`` shows."""

    name: str
    raw: str | None  # the raw data as read, e.g. "42F6 E979" (registers in hex) or "1" (a coil)
    value: Any
    unit: str | None
    error: str | None


class TraceEvent(TypedDict):
    """One frame on the wire, for ``gateway read --trace``."""

    ts: float  # UTC epoch seconds
    dir: str  # "tx" (request sent) or "rx" (what came back; empty data: nothing)
    data: str  # the frame, hex bytes "01 03 00 00 00 0a c5 cd" (or text for ASCII framing)
    note: str  # "", "timeout", "CRC error", "exception 2 (illegal data address)", ...
    ms: float | None  # rx: milliseconds since the request was sent


class Inspection(TypedDict):
    """What ``inspect`` returns: one poll of a device with raw data, and optionally its frames."""

    points: list[PointRow]
    error: str | None  # the device gave no valid answer (the rows read before that keep their values)
    trace: list[TraceEvent]


class SharedPool:
    """The owner of the shared lines: one connection per line, and the turns on it.

    A shared line is a physical bus several devices use: units on one RS-485 port, on one serial
    device server. The daemon owns one pool (the scheduler's ``shared``) and hands it to every
    driver in DeviceInfo, so drivers need no global table. For each line, named by a key (a
    driver's ``bus``), the pool keeps:

    - the connection: ``acquire(key, factory)`` returns the one object for ``key``, made by
      ``factory()`` on first use; ``release(key)`` returns the object when its last user released
      it (the caller closes it), else None.
    - the turn: ``turn(key)``, one asyncio.Lock per line, made on first use and kept for the
      pool's life. Whoever holds it has the line to itself, so one request is on the wire at a
      time: the scheduler holds it for a device's whole poll (open included), the daemon's tools
      (``gateway read``/``write``, remote commands) for one read or write, and the scheduler's
      hung-poll guard takes it back from a poll that ignores its cancel.

    This is the one place turn-taking lives: a driver takes no lock of its own for the line (its
    requests run in its caller's turn); it only keeps its own state consistent (e.g. a poll and a
    tool's read of one device in order). Outside the daemon (the command-line tools), one task
    uses the pool at a time.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, int]] = {}
        self._turns: dict[str, asyncio.Lock] = {}

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

    def turn(self, key: str) -> asyncio.Lock:
        """The lock of line ``key``: its holder has the line to itself (the same lock for the pool's life)."""
        return self._turns.setdefault(key, asyncio.Lock())


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
      bus key are polled one at a time: they take turns on it (``SharedPool.turn``).
    - ``open``/``close``: acquire and release the connection; ``open`` may raise DriverError.
    - ``poll``: read every point once. Returns values plus per-point errors; raises DriverError
      when the device did not answer at all. A driver never sleeps to pace itself.
    Heavy libraries are imported inside ``open``, so a config that does not use a driver never
    loads them.

    Optional, for the technician tools (``gateway read`` / ``write``, also through a running
    daemon, which calls them in the turn of the device's bus; a driver without them is read with
    ``poll`` and refuses writes):

    - ``async def write(self, point: str, value: Any) -> str | None``: write one point. ``value``
      is the engineering value, possibly as text from a command line. Raises ``WriteRefused``
      (before sending anything) for an unknown or read-only point or a bad value, DriverError
      when the device did not take it. May return a short description of what it sent.
    - ``async def inspect(self, *, points: Sequence[str] | None = None, trace: bool = False)
      -> Inspection``: one read now (of ``points`` only, if given) with the raw data of each
      point and, with ``trace``, the frames on the wire. Never raises for a device that does not
      answer: the report's ``error`` says so. Works whether or not the driver is open, and leaves
      it as it was.

    Optional class-level hooks (static or class methods), each found by ``getattr`` on the class:

    - ``check_devices(devices: Sequence[tuple[str, Config]]) -> Sequence[DeviceProblem]``: checks
      across the devices of this driver that no single model can make (the modbus driver: devices
      on one port agree on its settings, points do not overlap). ``devices``: (name, validated
      Config) of every device of the driver, in config order. Called by the config's second pass.
    - ``serial_ports(config) -> set[str]``: the local serial ports a device opens; the loader
      refuses a port claimed by two drivers.
    - ``tools() -> DriverTools``: technician commands the driver adds to ``gateway`` (the modbus
      driver's ``scan``) and its direct read (``gateway read --port ...``). Import the command-line
      code inside it: the driver module stays light for ``gateway run``.
    """

    Config: ClassVar[type[BaseModel]]
    points: PointSet
    bus: str | None

    def __init__(self, config: Any, device: DeviceInfo) -> None: ...
    async def open(self) -> None: ...
    async def poll(self) -> PollResult: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceProblem:
    """A problem ``check_devices`` found in one device's entry, reported with the file's line.

    ``at``: the field path inside the device's entry (``("points", 2, "address")``). ``see``:
    another place in the same entry the message refers to; the loader ends the message with
    `` at line N`` of it (a driver knows fields, not lines).
    """

    device: str
    message: str
    at: tuple[str | int, ...] = ("name",)
    see: tuple[str | int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ToolCommand:
    """A ``gateway`` subcommand a driver offers, e.g. the modbus driver's ``gateway scan``.

    ``add_arguments`` fills the subcommand's parser; ``run`` does the work (printing to
    stdout/stderr) and returns the exit status: 0 all well, 1 something failed, 2 bad arguments.
    Command names are one namespace: a name the core or a driver earlier in name order has taken
    is not offered again (the ``gateway`` command says so on stderr).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class DirectRead:
    """``gateway read`` for a device no config describes, with the driver's own arguments.

    ``add_arguments`` adds them to ``gateway read`` (in a group of their own); ``requested`` says
    whether a command line asks for this driver's direct read (e.g. ``--port`` or ``--host`` given);
    ``read`` returns a title and the report, like ``inspect``. It raises UsageError for arguments
    that describe no usable read (exit status 2), DriverError when the device cannot be reached
    (exit status 1). ``gateway read`` prints the report like a configured device's (``--json``,
    ``--trace`` included).
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    requested: Callable[[argparse.Namespace], bool]
    read: Callable[[argparse.Namespace], Awaitable[tuple[str, Inspection]]]


@dataclass(frozen=True, slots=True)
class DriverTools:
    """What a driver's ``tools()`` hook offers the ``gateway`` command."""

    commands: Sequence[ToolCommand] = ()
    direct_read: DirectRead | None = None


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


def driver_tools() -> dict[str, DriverTools]:
    """The tools of every installed driver that offers some, by driver name (in name order).

    Imports every installed driver, so the ``gateway`` command asks only when a tool may be
    wanted. A driver that fails to load, or whose hook fails, offers nothing here; a config using
    it reports why.
    """
    found = {}
    for name, entry in sorted(available_drivers().items()):
        try:
            hook = getattr(entry.load(), "tools", None)
            tools = hook() if hook is not None else None
        except Exception:  # a broken third-party package must not take the other drivers' tools down
            continue
        if isinstance(tools, DriverTools):
            found[name] = tools
    return found
