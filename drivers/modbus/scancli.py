"""``gateway scan``: which unit ids answer on a line, at which settings.

For each setting (baud rate x parity on a serial port; the one server with ``--host``) every unit
id in ``--units`` is asked for holding register 0; any answer, an exception included, means a
unit is there. A progress line goes to stderr (rewritten in place on a terminal, one line per
setting otherwise); the units found are printed as a table at the end (also after Ctrl-C).
The port is opened exclusively: a port the running gateway holds is refused, never shared.
``SCAN`` is the command the driver's ``tools`` hook offers ``gateway``; the probing is ``scan.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from pydantic import ValidationError

from drivers.modbus.direct import add_line_arguments, connection_entry, describe_validation, refusal_if_held
from drivers.modbus.scan import Prober
from gateway.driver import DriverError, ToolCommand, UsageError

DEFAULT_BAUDRATES = "9600,19200,38400,57600,115200,4800,2400"
DEFAULT_PARITIES = "N,E"
Found = tuple[str, int, str]  # settings, unit id, what answered


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``gateway scan``."""
    group = add_line_arguments(parser)
    group.add_argument("--baudrate", default=None, help=f"baud rates to try, in order (default {DEFAULT_BAUDRATES})")
    group.add_argument("--parity", default=None, help=f"parities to try: N, E, O (default {DEFAULT_PARITIES})")
    parser.add_argument("--units", default="1-247", help="unit ids to try: 1-247, 1-10,20 (default 1-247)")
    parser.add_argument("--first", action="store_true", help="stop at the first unit that answers")
    parser.add_argument("--timeout", type=float, default=0.2, help="seconds to wait for each unit (default 0.2)")


def parse_units(text: str, *, low: int = 1, high: int = 247) -> list[int]:
    """``"1-10,20"`` -> [1, ..., 10, 20] (each id once, in the order given); UsageError if invalid."""
    units: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise UsageError(f"--units {text!r}: {part.strip()!r} is not a unit id or a range like 1-247") from None
        if not low <= start <= stop <= high:
            raise UsageError(f"--units {text!r}: {part.strip()!r} is outside {low}-{high} (or reversed)")
        units += [u for u in range(start, stop + 1) if u not in units]
    return units


def settings_to_try(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One connection mapping per setting, in the order they are tried."""
    if args.host:
        if args.baudrate or args.parity:
            raise UsageError("--baudrate and --parity are for a serial --port, not --host")
        return [connection_entry(args)]
    try:
        rates = [int(r) for r in (args.baudrate or DEFAULT_BAUDRATES).split(",")]
    except ValueError:
        raise UsageError(f"--baudrate {args.baudrate!r}: give numbers separated by commas") from None
    parities = [p.strip().upper() for p in (args.parity or DEFAULT_PARITIES).split(",")]
    if any(p not in ("N", "E", "O") for p in parities):
        raise UsageError(f"--parity {args.parity!r}: give N, E or O, separated by commas")
    return [connection_entry(args, baudrate=rate, parity=parity) for rate in rates for parity in parities]


class Progress:
    """The progress line on stderr: rewritten with \\r on a terminal, a line per setting otherwise."""

    def __init__(self, stream: TextIO, where: str, units: list[int]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._where = where
        self._span = f"{units[0]}-{units[-1]}" if units == list(range(units[0], units[-1] + 1)) else f"{len(units)} ids"
        self._total = len(units)

    def setting(self, settings: str) -> None:
        if not self._tty:
            print(f"scanning {self._where} at {settings}: units {self._span}", file=self._stream, flush=True)

    def skipped(self, settings: str, reason: str) -> None:
        """A setting the port could not take (an adapter without that baud rate or parity)."""
        self.clear()
        print(f"skipping {settings}: {reason}", file=self._stream, flush=True)

    def unit(self, settings: str, done: int, unit: int, found: int) -> None:
        if self._tty:
            line = f"scanning {self._where} at {settings}: unit {unit} ({done}/{self._total}), found {found}"
            self._stream.write(f"\r{line}\x1b[K")
            self._stream.flush()

    def clear(self) -> None:
        """Remove the progress line (a terminal) before anything else is printed."""
        if self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


async def scan(prober_of: Callable[[Mapping[str, Any]], Prober], settings: list[dict[str, Any]], units: list[int],
               *, first: bool, progress: Progress, found: list[Found]) -> None:
    """Probe ``units`` at each of ``settings`` (a ``prober_of`` each); answers go to ``found`` as they come.

    A setting the port cannot be opened with is skipped (and said so); a port that is not there,
    or that another process holds, ends the scan (DriverError).
    """
    for connection in settings:
        prober = prober_of(connection)
        progress.setting(prober.settings)
        try:
            try:
                await prober.open()
            except DriverError as exc:
                if getattr(exc, "kind", None) in ("gone", "busy", "denied"):
                    raise  # no setting will do better
                progress.skipped(prober.settings, str(exc))
                continue
            for done, unit in enumerate(units, 1):
                progress.unit(prober.settings, done, unit, len(found))
                answer = await prober.probe(unit)
                if answer is not None:
                    found.append((prober.settings, answer.unit, answer.what))
                    if first:
                        return
        finally:
            prober.close()


def cmd_scan(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``gateway scan``; returns 0 when some unit answered, 1 when none did, 2 on bad arguments."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = settings_to_try(args)
        tcp = bool(args.host) and (args.transport or "tcp") == "tcp"  # unit ids 0..255; a serial line 1..247
        units = parse_units(args.units, low=0 if tcp else 1, high=255 if tcp else 247)
        for connection in settings:
            Prober({**connection, "timeout": args.timeout})  # every setting valid before starting
    except ValidationError as exc:
        print(f"gateway scan: {describe_validation(exc)}", file=err)
        return 2
    except UsageError as exc:
        print(f"gateway scan: {exc}", file=err)
        return 2
    refusal = refusal_if_held(
        args.port,
        "a scan would put its frames on the gateway's line. Stop the gateway first; configured devices can be "
        "checked with `gateway read --device NAME`, which goes through it",
    )
    if refusal:
        print(f"gateway scan: {refusal}", file=err)
        return 1
    settings = [{**c, "timeout": args.timeout} for c in settings]
    where = args.port or f"{args.host}:{args.tcp_port}"
    progress = Progress(err, where, units)
    return _run(lambda found: scan(Prober, settings, units, first=args.first, progress=progress, found=found),
                where, progress, out, err)


def _run(start: Callable[[list[Found]], Any], where: str, progress: Progress, out: TextIO, err: TextIO) -> int:
    found: list[Found] = []
    status = 0
    try:
        asyncio.run(start(found))
    except KeyboardInterrupt:
        progress.clear()
        print("interrupted", file=err)
        status = 130
    except Exception as exc:  # the port vanished, the server refused: say so, keep what was found
        progress.clear()
        print(f"gateway scan: {exc}", file=err)
        status = 1
    progress.clear()
    if not found:
        print(f"no unit answered on {where}", file=out)
        return status or 1
    print(f"{len(found)} unit{'s' if len(found) > 1 else ''} answered on {where}:", file=out)
    for line in _found_table(found):
        print(line, file=out)
    return status


def _found_table(found: list[Found]) -> list[str]:
    """The units found, in columns as wide as their widest cell (the last one not padded)."""
    rows = [("settings", "unit", "answer"), *((settings, str(unit), what) for settings, unit, what in found)]
    first, second = (max(len(row[column]) for row in rows) for column in (0, 1))
    return [f"  {a.ljust(first)}  {b.ljust(second)}  {c}".rstrip() for a, b, c in rows]


SCAN = ToolCommand(name="scan", help="find which unit ids answer on a line, at which settings",
                   add_arguments=add_scan_arguments, run=cmd_scan)
