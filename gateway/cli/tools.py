"""The technician's commands: ``gateway read``, ``gateway write``, and the commands drivers offer.

Configured devices (``--config``): if a gateway is running with the config's data directory,
the request goes through its control socket and runs on the daemon's own connection, in its
bus's turn (``gateway.daemon.tools``), so a tool never fights the daemon for a serial line. Without a
running gateway (or for a device it does not poll) the tool opens the device itself; serial
ports are opened exclusively, so a port held by some other process is refused, naming it.

Drivers add their own tools through their ``tools`` hook (``gateway.driver.DriverTools``): a
direct read of a device no config describes (the modbus driver's ``gateway read --port ...``)
and commands of their own (the modbus driver's ``gateway scan``).

Exit status: 0 all well, 1 something failed (a point, a device, a refused write), 2 bad
arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from gateway.cli.render import failed, render_inspection
from gateway.control import SOCKET_NAME, request
from gateway.driver import (
    DeviceInfo,
    DirectRead,
    DriverError,
    DriverTools,
    Inspection,
    PointRow,
    SharedPool,
    UsageError,
    WriteRefused,
    load_driver,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
VIA_DAEMON = "through the running gateway"
DIRECT = "direct"
DAEMON_TIMEOUT = 60.0  # seconds: the request waits for the line's turn, then for the device


def add_tool_commands(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None],
                      tools: Mapping[str, DriverTools], *, taken: Collection[str] = ()) -> None:
    """Add ``read``, the drivers' commands and ``write`` to the CLI's subparsers; each sets ``args.tool``.

    ``tools``: what each driver offers (``gateway.driver.driver_tools``); ``taken``: the core's
    other command names, never given to a driver.
    """
    read = sub.add_parser("read", help="read a device now: raw registers, values, errors (--trace: the frames)")
    config_arg(read)
    read.add_argument("--device", help="the configured device to read (default: every enabled device)")
    read.add_argument("--trace", action="store_true", help="show each request and response frame in hex")
    read.add_argument("--json", action="store_true", help="print the reports as JSON")
    direct_reads = []
    for driver, offered in tools.items():
        if offered.direct_read is not None:
            try:
                offered.direct_read.add_arguments(read)
            except argparse.ArgumentError as exc:
                print(f"gateway: the direct read of driver {driver!r} is left out: {exc}", file=sys.stderr)
                continue
            direct_reads.append(offered.direct_read)
    read.set_defaults(tool=cmd_read, direct_reads=direct_reads)
    _add_driver_commands(sub, tools, {*taken, "read", "write"})
    write = sub.add_parser("write", help="write one point of a configured device (points with writable: true)")
    config_arg(write)
    write.add_argument("--device", required=True, help="the configured device")
    write.add_argument("--point", required=True, help="the point to write")
    write.add_argument("value", help="the value, in the point's engineering units (or a value_map label)")
    write.set_defaults(tool=cmd_write)


def _add_driver_commands(sub: Any, tools: Mapping[str, DriverTools], taken: set[str]) -> None:
    """A subcommand per command a driver offers, unless its name is taken (then stderr says so)."""
    for driver, offered in tools.items():
        for command in offered.commands:
            if command.name in taken:
                print(f"gateway: command {command.name!r} of driver {driver!r} is left out: the name is taken",
                      file=sys.stderr)
                continue
            taken.add(command.name)
            parser = sub.add_parser(command.name, help=command.help)
            command.add_arguments(parser)
            parser.set_defaults(tool=command.run)


def cmd_read(args: argparse.Namespace) -> int:
    """``gateway read``: one poll now of one device or all, as a table per device."""
    direct = _direct_read(args)
    if direct is not None:
        try:
            title, report = asyncio.run(direct.read(args))
        except UsageError as exc:
            print(f"gateway read: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except DriverError as exc:
            print(f"gateway read: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return _print_reports([("direct", title, DIRECT, report)], args.json)
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    specs = [d for d in config.devices if d.name == args.device or (args.device is None and d.enabled)]
    if not specs:
        names = ", ".join(d.name for d in config.devices) or "none"
        what = f"no device {args.device!r}" if args.device else "no enabled device"
        print(f"gateway read: {what} in {args.config} (devices: {names})", file=sys.stderr)
        return EXIT_USAGE
    reports = _read_configured(config, specs, args.trace)
    return _print_reports([(spec.name, f"{_title(spec)} ({route})", route, report) for spec, route, report in reports],
                          args.json)


def cmd_write(args: argparse.Namespace) -> int:
    """``gateway write``: write one point, read it back, say what happened."""
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    spec = next((d for d in config.devices if d.name == args.device), None)
    if spec is None:
        names = ", ".join(d.name for d in config.devices) or "none"
        print(f"gateway write: no device {args.device!r} in {args.config} (devices: {names})", file=sys.stderr)
        return EXIT_USAGE
    payload = {"cmd": "write", "device": spec.name, "point": args.point, "value": args.value}
    answer, route = _ask(_socket(config), payload), VIA_DAEMON
    if answer is None or answer.get("unknown_device"):
        answer, route = asyncio.run(_write_direct(spec, args.point, args.value)), DIRECT
    if not answer.get("ok"):
        verdict = "refused" if answer.get("refused") else "failed"
        print(f"gateway write: {spec.name} {args.point}: write {verdict}: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    written = f" ({answer['written']})" if answer.get("written") else ""
    print(f"{spec.name} {args.point} = {args.value}: written{written}, {route}")
    print(_readback_line(args.value, answer.get("readback")))
    return 0


def _direct_read(args: argparse.Namespace) -> DirectRead | None:
    """The driver's direct read the command line asks for (``--port``, ``--host``, ...), if any."""
    return next((direct for direct in args.direct_reads if direct.requested(args)), None)


def _read_configured(config: Any, specs: list[Any], trace: bool) -> list[tuple[Any, str, Inspection]]:
    """Each device's report: through the running gateway when there is one, else direct."""
    sock = _socket(config)
    daemon = True
    answers: dict[str, tuple[str, Inspection]] = {}
    direct = []
    for spec in specs:
        answer = _ask(sock, {"cmd": "read", "device": spec.name, "trace": trace}) if daemon else None
        if answer is None or answer.get("unknown_device"):
            daemon = daemon and answer is not None
            direct.append(spec)
        elif answer.get("ok"):
            answers[spec.name] = (VIA_DAEMON, answer["report"])
        else:
            answers[spec.name] = (VIA_DAEMON, Inspection(points=[], error=answer.get("error"), trace=[]))
    if direct:
        answers.update({name: (DIRECT, report) for name, report in asyncio.run(_inspect_direct(direct, trace))})
    return [(spec, *answers[spec.name]) for spec in specs]


async def _inspect_direct(specs: list[Any], trace: bool) -> list[tuple[str, Inspection]]:
    """Read devices on connections of this process (devices on one port share it, as in the daemon)."""
    shared = SharedPool()
    drivers = [(spec, load_driver(spec.driver)(spec.options, DeviceInfo(spec.name, spec.interval, shared)))
               for spec in specs]
    reports = []
    try:
        for _, driver in drivers:
            with contextlib.suppress(DriverError):
                await driver.open()  # all first: the devices of one port then share its one opening
        for spec, driver in drivers:
            reports.append((spec.name, await _inspect_one(driver, trace)))
    finally:
        for _, driver in drivers:
            await driver.close()
    return reports


async def _inspect_one(driver: Any, trace: bool) -> Inspection:
    inspect = getattr(driver, "inspect", None)
    if inspect is not None:
        return await inspect(trace=trace)
    try:  # a driver without inspect: a plain poll
        result = await driver.poll()
    except DriverError as exc:
        return Inspection(points=[], error=str(exc) or "no response", trace=[])
    errors = result.errors or {}
    names, units = driver.points.names, driver.points.units
    rows = [PointRow(name=names[i], raw=None, value=v, unit=units[i], error=errors.get(i))
            for i, v in enumerate(result.values)]
    return Inspection(points=rows, error=None, trace=[])


async def _write_direct(spec: Any, point: str, value: str) -> dict[str, Any]:
    """Write on a connection of this process; the same answer shape as the daemon's."""
    driver = load_driver(spec.driver)(spec.options, DeviceInfo(spec.name, spec.interval, SharedPool()))
    write = getattr(driver, "write", None)
    if write is None:
        return {"ok": False, "refused": True, "error": f"driver {spec.driver!r} cannot write"}
    try:
        written = await write(point, value)
        report = await driver.inspect(points=[point]) if hasattr(driver, "inspect") else None
    except WriteRefused as exc:
        return {"ok": False, "refused": True, "error": str(exc)}
    except DriverError as exc:
        return {"ok": False, "error": str(exc) or "no response"}
    finally:
        await driver.close()
    readback = report["points"][0] if report and report["points"] else None
    if readback is not None and report and report["error"] and not readback["error"]:
        readback = {**readback, "error": report["error"]}
    return {"ok": True, "written": written, "readback": readback}


def _readback_line(written: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return "read back: not possible for this device"
    if row.get("error"):
        return f"read back: failed ({row['error']}); the write itself was acknowledged"
    unit = f" {row['unit']}" if row.get("unit") else ""
    raw = f" (raw {row['raw']})" if row.get("raw") else ""
    shown = f"read back: {row['value']}{unit}{raw}"
    if _same(written, row["value"]):
        return shown
    return f"{shown}: not the value written (the device may limit or round it)"


def _same(text: str, value: Any) -> bool:
    """Whether a value read back is the one written as ``text``."""
    if isinstance(value, bool):
        return text.strip().lower() in (("true", "on", "1", "yes") if value else ("false", "off", "0", "no"))
    if isinstance(value, int | float):
        try:
            given = float(int(text.strip(), 0))
        except ValueError:
            try:
                given = float(text)
            except ValueError:
                return False
        return math.isclose(given, value, rel_tol=1e-6, abs_tol=1e-9)
    return str(value) == text.strip()


def _print_reports(reports: list[tuple[str, str, str, Inspection]], as_json: bool) -> int:
    """Print (device, title, route, report) entries as tables or as one JSON document; the exit status."""
    if as_json:
        documents = [{"device": device, "title": title, "route": route, **report} for device, title, route, report
                     in reports]
        print(json.dumps({"devices": documents}, indent=2, default=str))
    else:
        for i, (_, title, _, report) in enumerate(reports):
            if i:
                print()
            print("\n".join(render_inspection(title, report)))
    return EXIT_FAILED if any(failed(report) for *_, report in reports) else 0


def _ask(sock: Path, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The running gateway's answer, or None when no gateway is running there.

    A gateway that runs but cannot be asked (not our user, no answer in time) is an error
    answer, never a reason to open its ports behind its back (or to repeat a write).
    """
    try:
        return request(sock, payload, timeout=DAEMON_TIMEOUT)
    except ConnectionError as exc:
        if isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError):
            return None  # no socket, or a stale one: nobody is running
        return {"ok": False, "error": str(exc)}
    except TimeoutError:
        return {"ok": False, "error": f"the running gateway did not answer within {DAEMON_TIMEOUT:g} s"}
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"talking to the running gateway failed: {exc}"}


def _socket(config: Any) -> Path:
    return Path(config.gateway.data_dir) / SOCKET_NAME


def _title(spec: Any) -> str:
    conn = getattr(spec.options, "connection", None)
    where = f" unit {conn.unit_id} {conn.where}" if hasattr(conn, "unit_id") and hasattr(conn, "where") else ""
    return f"{spec.name}: {spec.driver}{where}"


def _load(path: str) -> Any:
    from gateway.config.load import ConfigFileError, load_config

    try:
        return load_config(path)
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return None
