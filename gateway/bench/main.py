"""`gateway bench`: the real pipeline, measured end to end, with every reading accounted for by seq.

Each scenario runs ``python -m gateway.cli run`` as a separate process with simulated devices (the
modbus scenario: one Modbus TCP device served from this process, see gateway.bench.modbus), a
temporary data directory and a real broker (a private Mosquitto, or ``--broker HOST:PORT``), and a
subscriber in this process that counts, per device, which seqs arrived (gateway.bench.subscriber). The
gateway is measured from outside through /proc (gateway.bench.run). At the end of every scenario
the devices are made to fail (``Group.fail``: the simulated devices' ``fail_flag`` files, or the
Modbus server answering with an exception), the buffer drains, and what arrived is checked
against what was produced (each device's last committed seq): a reading missing by seq, or
evicted by the buffer, fails the bench.

Scenarios: load, saturation, moderate, modbus, drain, wire, startup, failover, many (see ``SCENARIOS``);
web (the technician page's cost, gateway.bench.page) only when named.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.bench.broker import free_port
from gateway.bench.groups import SIGNALS, DeviceGroup
from gateway.bench.report import Progress
from gateway.bench.run import LOOPBACK, BenchError, private_broker
from gateway.bench.steps import RunSteps

FLOOR_WINDOW = 5.0  # seconds each floor (the modbus clients', the MQTT client's) is measured (at most --duration)
SCENARIOS = ("load", "saturation", "moderate", "modbus", "drain", "wire", "startup", "failover", "many")
ON_REQUEST = ("web",)  # run only when named (web: ten moderate runs, about 3 minutes)
MODERATE_INTERVAL = 1.0  # the moderate load: --devices x --points every second
SATURATION_FACTOR = 4  # the saturation scenario offers this many times the load scenario
WIRE_WINDOW = 5.0  # seconds measured per encoding in the wire scenario, at most
METERED_LINGER = 3.0  # seconds the wire scenario's metered runs let a message fill
# The many scenario: many small devices every second, whatever --devices and --points (devices, points).
MANY_SHAPES = ((1000, 1), (100, 10))


@dataclass(frozen=True)
class BenchOptions:
    """What to run; the defaults finish all scenarios in about two minutes on two cores."""

    devices: int = 10
    points: int = 100
    interval: float = 0.01
    duration: float = 10.0
    warmup: float = 2.0
    encoding: str = "cbor"
    signals: tuple[str, ...] = SIGNALS
    commit_interval: float = 1.0
    broker: tuple[str, int] | None = None
    scenarios: tuple[str, ...] = SCENARIOS
    drain_readings: int = 300_000
    data_dir: Path | None = None
    shapes: tuple[tuple[int, int], ...] = MANY_SHAPES
    group_devices: int = 1  # the many scenario's mqtt.batch.devices (1: one device per message)


class Bench(RunSteps):
    """Runs the chosen scenarios; use as a context manager (it owns a temp dir and maybe a broker).

    Each scenario is composed of the steps of a run (gateway.bench.steps).
    """

    def __init__(self, opts: BenchOptions, progress: Progress) -> None:
        super().__init__(opts, progress)
        self._stack = contextlib.ExitStack()
        self.broker_name = f"{self.host}:{self.port}"

    def __enter__(self) -> Bench:
        tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-", dir=self.opts.data_dir))
        self.tmp = Path(tmp)
        if self.opts.broker is None:
            self.port = free_port()
            self.broker = self._stack.enter_context(private_broker(self.tmp / "broker", self.port))
            self.broker_name = f"private mosquitto on {LOOPBACK}:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self) -> dict[str, Any]:
        """Run every chosen scenario; returns the report (``ok`` False if any failed or lost data)."""
        started = time.monotonic()
        scenarios: dict[str, Any] = {}
        for name in self.opts.scenarios:
            try:
                scenarios[name] = getattr(self, f"scenario_{name}")()
            except BenchError as exc:
                scenarios[name] = {"ok": False, "error": str(exc)}
            except OSError as exc:  # the control socket or the broker went away
                scenarios[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "tool": "gateway bench",
            "version": _version(),
            "machine": {"cpus": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
                        "system": f"{platform.system()} {platform.release()}"},
            "broker": self.broker_name,
            "options": _options_doc(self.opts),
            "scenarios": scenarios,
            "elapsed_s": round(time.monotonic() - started, 1),
            "ok": all(s.get("ok", True) for s in scenarios.values()),
        }

    # -- device groups ------------------------------------------------------------------------------

    def group(self, prefix: str, devices: int, interval: float, flag: str = "stop.flag", *,
              signals: tuple[str, ...] | None = None, decimals: int = 6) -> DeviceGroup:
        """``devices`` devices of --points points every ``interval`` (--signals unless ``signals``),
        failing while ``flag`` exists."""
        o = self.opts
        return DeviceGroup(prefix, devices, o.points, interval, signals or o.signals, self.tmp / flag, decimals)

    def load_group(self, factor: int = 1) -> DeviceGroup:
        """The load scenario's devices (``factor`` times as many)."""
        return self.group("dev", self.opts.devices * factor, self.opts.interval)

    def moderate_group(self) -> DeviceGroup:
        """--devices x --points every second."""
        return self.group("dev", self.opts.devices, MODERATE_INTERVAL)

    # -- scenarios ----------------------------------------------------------------------------------

    def scenario_load(self) -> dict[str, Any]:
        """The offered load of --devices x --points every --interval."""
        return self.steady("load", [self.load_group()], self.opts.encoding, self.opts.duration)

    def scenario_saturation(self) -> dict[str, Any]:
        """SATURATION_FACTOR times the load scenario's devices: does throughput hold?"""
        return self.steady("saturation", [self.load_group(SATURATION_FACTOR)], self.opts.encoding,
                            self.opts.duration)

    def scenario_web(self) -> dict[str, Any]:
        """The moderate load without and with the technician's page (one browser connected)."""
        from gateway.bench.page import scenario_web

        return scenario_web(self)

    def scenario_moderate(self) -> dict[str, Any]:
        """--devices x --points every second: CPU with all fixed costs, RSS, latency, disk bytes."""
        return self.steady("moderate", [self.moderate_group()], self.opts.encoding, self.opts.duration)

    def scenario_modbus(self) -> dict[str, Any]:
        """One Modbus TCP device, 100 holding registers every 100 ms, served by pymodbus in this process."""
        from gateway.bench.modbus import ModbusBenchServer, ModbusGroup

        self.progress.step("modbus: starting the Modbus server")
        with ModbusBenchServer() as server:
            result = self.steady("modbus", [ModbusGroup("modbus", server)], self.opts.encoding, self.opts.duration)
            result["server_reads"] = server.reads
            server.failing.clear()  # the run ended by making the device fail
            result["floor"] = self._modbus_floor(server.port)
        return result

    def _modbus_floor(self, port: int) -> dict[str, Any]:
        """The same polls with no gateway, per client (see gateway.bench.modbus.run_floor)."""
        from gateway.bench.modbus import FLOOR_CLIENTS, run_floor

        window, warmup = min(self.opts.duration, FLOOR_WINDOW), min(self.opts.warmup, 1.0)
        floor: dict[str, Any] = {}
        for client in FLOOR_CLIENTS:
            self.progress.step(f"modbus: the floor, {client} client alone", f"{warmup + window:g} s")
            try:
                floor[client] = run_floor(client, port, warmup=warmup, window=window)
            except BenchError as exc:  # a reference figure: the gateway's own run still stands
                floor[client] = {"client": client, "error": str(exc)}
        return floor

    def scenario_wire(self) -> dict[str, Any]:
        """Bytes on the wire per reading for each encoding, at the moderate load."""
        out: dict[str, Any] = {"ok": True}
        window = min(self.opts.duration, WIRE_WINDOW)
        for encoding in ("cbor", "json", "packed"):
            run = self.steady(f"wire-{encoding}", [self.moderate_group()], encoding, window)
            out[encoding] = run
            out["ok"] = out["ok"] and run["ok"]
        # A metered link as the README sets it up: packed, deflated, messages filled for up to
        # METERED_LINGER, on sensor-like data (half smooth, half noisy, two decimals; no counters).
        sensors = self.group("dev", self.opts.devices, MODERATE_INTERVAL, signals=("sine", "random"), decimals=2)
        for name, compress in (("packed-metered", False), ("packed-metered-deflate", True)):
            run = self.steady(f"wire-{name}", [sensors], "packed", max(window, 2 * METERED_LINGER),
                               mqtt={"compress": compress, "batch": {"linger": METERED_LINGER}})
            out[name] = run
            out["ok"] = out["ok"] and run["ok"]
        return out

    def scenario_many(self) -> dict[str, Any]:
        """Many small devices every second (MANY_SHAPES), default settings: what a device's poll costs.

        With ``group_devices`` > 1, that many devices share a message (``mqtt.batch.devices``).
        """
        out: dict[str, Any] = {"ok": True}
        grouped = self.opts.group_devices
        mqtt = {"batch": {"devices": grouped}} if grouped > 1 else None
        for devices, points in self.opts.shapes:
            group = DeviceGroup("dev", devices, points, MODERATE_INTERVAL, self.opts.signals,
                                self.tmp / "stop.flag")
            run = self.steady(f"many-{devices}x{points}", [group], self.opts.encoding, self.opts.duration, mqtt)
            run["group_devices"] = grouped
            run["floor"] = self._mqtt_floor(f"many-{devices}x{points}", run)
            out[f"{devices}x{points}"] = run
            out["ok"] = out["ok"] and run["ok"]
        return out

    def _mqtt_floor(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        """The run's messages/s and message size published with no gateway (gateway.bench.mqttfloor)."""
        from gateway.bench.mqttfloor import run_floor

        rate = round(run.get("messages_per_s") or 0)
        per_message = (run.get("wire_payload_bytes_per_reading") or 0) * (run.get("readings_per_message") or 0)
        if rate <= 0:
            return {"error": "the run sent no messages"}
        window = min(self.opts.duration, FLOOR_WINDOW)
        self.progress.step(f"{name}: the floor, the MQTT client alone", f"{1 + window:g} s")
        try:
            return run_floor(self.port, rate, max(round(per_message), 1), host=self.host, window=window)
        except BenchError as exc:  # a reference figure: the gateway's own run still stands
            return {"error": str(exc)}

    def scenario_startup(self) -> dict[str, Any]:
        """Process spawn to the first reading delivered, at the moderate load."""
        with self.open_run("startup", [self.moderate_group()], self.opts.encoding) as run:
            ready = run.gw.start().wait_ready()
            self.wait_first(run)
            run.result.update(ready_s=ready, first_reading_s=run.sub.first_arrival - run.gw.spawned_at)
            self.finish(run)
        return run.result

    def scenario_drain(self) -> dict[str, Any]:
        """Fill a backlog with the broker away, bring it up, time the drain while polling goes on."""
        if self.opts.broker is not None:
            return {"ok": True, "skipped": "needs the private broker (it binds the port later); not with --broker"}
        from gateway.bench.drain import run_drain

        for _attempt in range(3):
            result = run_drain(self)
            if result is not None:
                return result
        raise BenchError("the gateway reached the broker before the subscriber, three times")

    def scenario_failover(self) -> dict[str, Any]:
        """Kill the broker node the gateway is on: seconds to the first PUBACK on another node, readings resent."""
        if self.opts.broker is not None:
            return {"ok": True, "skipped": "needs brokers of its own to kill; not with --broker"}
        from gateway.bench.failover import run_failover

        return run_failover(self)


# -- the report's header, the options --------------------------------------------------------------


def _version() -> str:
    from gateway import __version__

    return __version__


def _options_doc(opts: BenchOptions) -> dict[str, Any]:
    doc = asdict(opts)
    doc["broker"] = f"{opts.broker[0]}:{opts.broker[1]}" if opts.broker else None
    doc["data_dir"] = str(opts.data_dir) if opts.data_dir else None
    return doc


def options_from_args(args: Any) -> BenchOptions:
    """BenchOptions from the `gateway bench` arguments; ValueError naming a bad one."""
    names = SCENARIOS if args.scenario.strip() == "all" else tuple(s.strip() for s in args.scenario.split(","))
    unknown = [s for s in names if s not in SCENARIOS + ON_REQUEST]
    if unknown or not names:
        raise ValueError(f"--scenario: unknown {unknown or names!r}; use all or a comma list of"
                         f" {', '.join(SCENARIOS + ON_REQUEST)}")
    signals = tuple(s.strip() for s in args.signals.split(","))
    if not signals or any(s not in SIGNALS for s in signals):
        raise ValueError(f"--signals: {args.signals!r}; use a comma list of {', '.join(SIGNALS)}")
    broker = None
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--broker: {args.broker!r} is not HOST:PORT")
        broker = (host, int(port))
    return BenchOptions(
        shapes=_shapes(args.shapes), group_devices=args.group_devices,
        devices=args.devices, points=args.points, interval=args.interval, duration=args.duration,
        warmup=args.warmup, encoding=args.encoding, signals=signals, commit_interval=args.commit_interval,
        broker=broker, scenarios=tuple(dict.fromkeys(names)), drain_readings=args.drain_readings,
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``1000x1,100x10`` as ((1000, 1), (100, 10)); ValueError naming the bad entry."""
    out = []
    for entry in text.split(","):
        devices, _, points = entry.strip().partition("x")
        if not (devices.isdigit() and points.isdigit() and int(devices) > 0 and int(points) > 0):
            raise ValueError(f"--shapes: {entry.strip()!r} is not DEVICESxPOINTS (e.g. 1000x1)")
        out.append((int(devices), int(points)))
    return tuple(out)


def run_bench(opts: BenchOptions, *, as_json: bool = False) -> int:
    """Run ``opts``, print the table (or one JSON object); 0 if nothing was lost, else 1."""
    import json

    from gateway.bench.report import render

    progress = Progress()
    # SIGTERM unwinds like Ctrl-C, so the gateway and the broker this bench started are stopped too.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with Bench(opts, progress) as bench:
            report = bench.run()
    except BenchError as exc:
        progress.done()
        print(f"gateway bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.done()
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0 if report["ok"] else 1


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
