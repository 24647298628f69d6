"""Harnesses for the driver contract suite (tests/integration/drivers/test_contract.py).

A harness is a config plus a simulated device. Its factory is called with a fresh directory and
returns an async context manager; while it is entered a device answers, and the object it yields
(any object with these attributes: a ``Harness``, a ``types.SimpleNamespace``, a class of one's
own) says how to reach it:

- ``config`` (required): the device entry's driver keys, i.e. everything but ``name``,
  ``driver``, ``interval`` and ``enabled``, as the YAML would give them;
- ``interval``: the poll interval in seconds (default 1.0);
- ``silence``: a callable (plain or async) after which the device no longer answers, or None;
- ``writes``: (point, value) pairs the device accepts and then reads back as ``value``;
- ``refused``: (point, value) pairs the driver must refuse (WriteRefused) before sending anything;
- ``requests``: a callable returning how many requests the device has received so far, or None.

The built-in drivers' harnesses are ``BUILTIN``. A third-party driver package declares its own in
the entry-point group ``gateway.driver_harnesses``: the name is the driver's name (as in
``gateway.drivers``), or ``<driver>.<variant>`` for a second one, and the value the factory,
``package.module:factory``. ``collect()`` returns both, by name. See drivers/README.md.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from tests.support.emulators import LineEmulator, Pms5003Emulator, PtyPeer, Sds011Emulator, Streamer, pms_frame
from tests.support.modbus_server import ModbusTestServer
from tests.support.serial_pty import SerialPty

ENTRY_POINT_GROUP = "gateway.driver_harnesses"

Factory = Callable[[Path], contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Harness:
    """What a harness yields (see the module docstring)."""

    config: dict[str, Any]
    interval: float = 1.0
    silence: Callable[[], Any] | None = None
    writes: Sequence[tuple[str, Any]] = ()
    refused: Sequence[tuple[str, Any]] = ()
    requests: Callable[[], int] | None = None


@dataclass(frozen=True)
class HarnessSpec:
    """One harness the suite runs: its name, the driver it is for, and where its factory comes from."""

    name: str
    driver: str
    origin: str  # "built-in", or the entry point's ``module:factory``
    _factory: Factory | None = None
    _entry: EntryPoint | None = field(default=None, compare=False)

    def factory(self) -> Factory:
        """The factory (an entry point's module is imported only now, when a test uses it)."""
        if self._factory is not None:
            return self._factory
        assert self._entry is not None
        return self._entry.load()


# -- the built-in drivers' devices --------------------------------------------------------------

MODBUS_POINTS = [
    {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1, "unit": "°C"},
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "°C",
     "writable": True, "min": 5, "max": 30},
    {"name": "relay", "table": "coil", "address": 3, "type": "bool", "writable": True},
    # read on every 2nd poll only: half the polls name a subset of the points in their result
    {"name": "energy", "table": "input", "address": 20, "type": "uint32", "unit": "Wh", "every": 2},
]
MODBUS_TIMEOUT = 0.3  # seconds: how long a silent device keeps a test waiting


@contextlib.asynccontextmanager
async def _modbus(server: ModbusTestServer, connection: Callable[[], dict[str, Any]]) -> AsyncIterator[Harness]:
    await server.start()
    try:
        await server.set_registers("input", 0, [215])
        await server.set_registers("input", 20, [0, 12345])
        await server.set_registers("holding", 10, [200])
        yield Harness(
            config={"connection": {**connection(), "timeout": MODBUS_TIMEOUT}, "points": MODBUS_POINTS},
            silence=server.mute,
            writes=[("setpoint", 22.5), ("relay", True)],
            refused=[("temp", 20), ("setpoint", 99), ("setpoint", "warm"), ("relay", "maybe")],
            requests=lambda: len(server.requests),
        )
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def modbus_tcp(workdir: Path) -> AsyncIterator[Harness]:
    """A pymodbus TCP server on a free loopback port."""
    server = ModbusTestServer()
    # the port is known once the server listens
    async with _modbus(server, lambda: {"transport": "tcp", "host": "127.0.0.1", "port": server.port}) as harness:
        yield harness


@contextlib.asynccontextmanager
async def modbus_rtu(workdir: Path) -> AsyncIterator[Harness]:
    """A pymodbus RTU server on one end of a socat pty pair; the driver opens the other."""
    with SerialPty(workdir / "line") as pty:
        server = ModbusTestServer(transport="rtu", serial_port=str(pty.a))
        async with _modbus(server, lambda: {"transport": "rtu", "serial_port": str(pty.b)}) as harness:
            yield harness


@contextlib.asynccontextmanager
async def _serial(workdir: Path) -> AsyncIterator[tuple[SerialPty, PtyPeer]]:
    """A pty pair and its device end, attached to the running loop."""
    with SerialPty(workdir / "line") as pty:
        peer = PtyPeer(pty.a).attach()
        try:
            yield pty, peer
        finally:
            peer.close()


@contextlib.asynccontextmanager
async def serial_line(workdir: Path) -> AsyncIterator[Harness]:
    """A sensor answering ``R`` with a line of temperature and humidity (query mode)."""
    async with _serial(workdir) as (pty, peer):
        LineEmulator(peer, b"R\r\n", lambda: b"T=21.5 H=40\r\n")

        def silence() -> None:
            peer.on_data = None

        yield Harness(
            config={"connection": {"serial_port": str(pty.b)}, "mode": "query", "command": "R\\r\\n",
                    "timeout": "300ms", "regex": r"^T=(?P<temp>[-0-9.]+) H=(?P<hum>\d+)$",
                    "points": [{"name": "temp", "unit": "°C"}, {"name": "hum", "type": "int", "unit": "%"}]},
            silence=silence,
        )


PMS = [11, 22, 33, 12, 23, 34, 3000, 900, 200, 40, 5, 1]


@contextlib.asynccontextmanager
async def pms5003(workdir: Path) -> AsyncIterator[Harness]:
    """A PMS5003 in active mode: it acknowledges the mode command and streams a frame every 20 ms."""
    async with _serial(workdir) as (pty, peer):
        Pms5003Emulator(peer, PMS)
        streamer = Streamer(peer, lambda: pms_frame(PMS), 0.02).start()
        try:
            yield Harness(
                config={"connection": {"serial_port": str(pty.b)}, "stale_after": "300ms"},
                interval=0.1,
                silence=streamer.stop,
            )
        finally:
            await streamer.stop()


@contextlib.asynccontextmanager
async def sds011(workdir: Path) -> AsyncIterator[Harness]:
    """An SDS011 in query mode: one data frame per query command."""
    async with _serial(workdir) as (pty, peer):
        emulator = Sds011Emulator(peer, 12.3, 45.6)

        def silence() -> None:
            emulator.answer_queries = False

        yield Harness(
            config={"connection": {"serial_port": str(pty.b)}, "mode": "query", "timeout": "300ms",
                    "points": ["pm2_5", "pm10", "sensor_id"]},
            silence=silence,
        )


@contextlib.asynccontextmanager
async def simulated(workdir: Path) -> AsyncIterator[Harness]:
    """Software signals; the fail flag file is the device going silent."""
    flag = workdir / "dead"
    yield Harness(
        config={"fail_flag": str(flag), "points": [
            {"name": "count"}, {"name": "wave", "signal": "sine", "period": "10s", "unit": "V"},
            {"name": "noise", "signal": "random", "amplitude": 2}]},
        silence=flag.touch,
    )


_BOARD = {
    "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
    "sys/class/thermal/thermal_zone0/temp": "51234\n",
    "sys/devices/platform/soc/soc:firmware/get_throttled": "50005\n",
    "proc/loadavg": "0.52 0.58 0.59 1/300 1234\n",
    "proc/meminfo": "MemTotal: 3884328 kB\nMemAvailable: 2867404 kB\n",
    "proc/self/io": "rchar: 10\nwrite_bytes: 40960\n",
    "proc/uptime": "12345.67 45678.90\n",
}


@contextlib.asynccontextmanager
async def system(workdir: Path) -> AsyncIterator[Harness]:
    """A Raspberry Pi's /sys and /proc files in a directory; removing them silences the board."""
    root = workdir / "board"
    for path, text in _BOARD.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (root / "var/lib/gateway").mkdir(parents=True)

    def silence() -> None:
        shutil.rmtree(root)

    yield Harness(config={"root": str(root), "path": "/var/lib/gateway"}, silence=silence)


BUILTIN: dict[str, HarnessSpec] = {
    spec.name: spec for spec in (
        HarnessSpec("modbus.tcp", "modbus", "built-in", modbus_tcp),
        HarnessSpec("modbus.rtu", "modbus", "built-in", modbus_rtu),
        HarnessSpec("serial_line", "serial_line", "built-in", serial_line),
        HarnessSpec("pms5003", "pms5003", "built-in", pms5003),
        HarnessSpec("sds011", "sds011", "built-in", sds011),
        HarnessSpec("simulated", "simulated", "built-in", simulated),
        HarnessSpec("system", "system", "built-in", system),
    )
}


def collect() -> dict[str, HarnessSpec]:
    """Every harness by name: the built-in ones and those installed packages declare.

    An installed harness named like a built-in one is listed as ``<name>@<its module>``, so
    neither hides the other.
    """
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        name = entry.name if entry.name not in found else f"{entry.name}@{entry.module}"
        found[name] = HarnessSpec(name, entry.name.split(".", 1)[0], entry.value, _entry=entry)
    return found
