"""Direct-connection arguments of ``gateway read`` and ``gateway scan``: a device without a config.

A technician checking a new meter before writing any YAML gives the line (``--port`` or
``--host``) and what to read (``--table``, ``--address``, ``--count``, ``--type``); this module
turns that into the same device entry a config would hold and validates it with the driver's
own model, so the checks and the messages are the config's. ``DIRECT_READ`` is what the
driver's ``tools`` hook offers ``gateway read``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from drivers.modbus.config import BIT_TABLES, REGISTER_COUNT, ModbusConfig
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.portlock import lock_holder
from gateway.driver import DeviceInfo, DirectRead, DriverError, Inspection, UsageError

SERIAL_TRANSPORTS = ("rtu", "ascii")
TCP_TRANSPORTS = ("tcp", "rtu-over-tcp")
# The --type choices, in the order --help lists them; their widths in registers are the config's
# REGISTER_COUNT (a string takes --count; bit tables hold one bool per address).
TYPES = ("int8", "uint8", "int16", "uint16", "float16", "int32", "uint32", "float32", "int64", "uint64", "float64",
         "bool", "string")


def add_line_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--port / --host and the settings shared by read and scan (baud rate and parity: the caller's)."""
    group = parser.add_argument_group("direct connection (no config needed)")
    group.add_argument("--port", help="serial port, e.g. /dev/ttyUSB0 (Modbus RTU unless --transport ascii)")
    group.add_argument("--host", help="a Modbus TCP device, or a serial device server (--transport rtu-over-tcp)")
    group.add_argument("--tcp-port", type=int, default=502, help="TCP port with --host (default 502)")
    group.add_argument("--transport", choices=[*SERIAL_TRANSPORTS, *TCP_TRANSPORTS],
                       help="default: rtu with --port, tcp with --host")
    group.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    group.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    return group


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """The direct-connection arguments of ``gateway read``."""
    group = add_line_arguments(parser)
    group.add_argument("--baudrate", type=int, default=9600, help="default 9600")
    group.add_argument("--parity", choices=["N", "E", "O"], default="N", help="default N")
    group.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    group.add_argument("--timeout", type=float, default=0.5, help="seconds per request (default 0.5)")
    group.add_argument("--table", choices=["holding", "input", "coil", "discrete"], default="holding")
    group.add_argument("--address", type=int, default=0, help="first address, as on the wire (default 0)")
    group.add_argument("--count", type=int, help="registers (or coils) to read; default: one value of --type")
    group.add_argument("--type", choices=TYPES, default="uint16", help="how to decode (default uint16)")
    group.add_argument("--byte-order", choices=["ABCD", "CDAB", "BADC", "DCBA"], default="ABCD")


def connection_entry(args: argparse.Namespace, *, baudrate: int = 9600, parity: str = "N") -> dict[str, Any]:
    """The ``connection`` mapping of a config for the line the arguments name."""
    timeout = getattr(args, "timeout", 0.5)
    unit = getattr(args, "unit", 1)
    if args.port and args.host:
        raise UsageError("give --port (a serial line) or --host (TCP), not both")
    if args.port:
        transport = args.transport or "rtu"
        if transport not in SERIAL_TRANSPORTS:
            raise UsageError(f"--transport {transport} needs --host, not --port")
        return {"transport": transport, "serial_port": args.port, "baudrate": baudrate, "parity": parity,
                "stopbits": args.stopbits, "bytesize": args.bytesize, "unit_id": unit, "timeout": timeout}
    if args.host:
        transport = args.transport or "tcp"
        if transport not in TCP_TRANSPORTS:
            raise UsageError(f"--transport {transport} needs --port (a serial port), not --host")
        return {"transport": transport, "host": args.host, "port": args.tcp_port, "unit_id": unit, "timeout": timeout}
    raise UsageError("give --port or --host (or --config for configured devices)")


def point_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points of a direct read: ``--count`` registers from ``--address``, cut into ``--type`` values."""
    table, address = args.table, args.address
    bits = table in BIT_TABLES
    kind = "bool" if bits else args.type
    if kind == "string":
        return [{"name": f"{table}_{address}", "table": table, "address": address, "type": "string",
                 "count": args.count or 1, "byte_order": args.byte_order}]
    width = REGISTER_COUNT[kind]
    count = args.count if args.count is not None else width
    if count < 1 or count % width:
        raise UsageError(f"--count {count} is not a whole number of {kind} values ({width} registers each)")
    extra = {} if bits else {"byte_order": args.byte_order}
    return [{"name": f"{table}_{a}", "table": table, "address": a, "type": kind, **extra}
            for a in range(address, address + count, width)]


def validated(entry: dict[str, Any]) -> ModbusConfig:
    """``entry`` checked by the driver's Config model; UsageError with the model's messages."""
    try:
        return ModbusConfig.model_validate(entry)
    except ValidationError as exc:
        raise UsageError(describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    """A model's complaints on one line: ``connection.baudrate: Input should be ...; ...``."""
    problems = []
    for error in exc.errors(include_url=False):
        # Tagged unions put the transport in the path ("connection.rtu.baudrate"): keep the field.
        where = ".".join(str(part) for part in error["loc"] if part not in (*SERIAL_TRANSPORTS, *TCP_TRANSPORTS))
        ctx = error.get("ctx") or {}
        problems.append(f"{where or 'value'}: {ctx['error'] if 'error' in ctx else error['msg']}")
    return "; ".join(problems)


def refusal_if_held(port: str | None, advice: str) -> str | None:
    """A message refusing to open ``port`` when another process holds it, else None."""
    holder = lock_holder(port) if port else None
    if holder is None:
        return None
    message = f"serial port {port} is in use by {holder.describe()}"
    return f"{message}: {advice}" if holder.is_gateway else f"{message}; close that program first"


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a direct read: a line is given."""
    return bool(args.port or args.host)


async def read_direct(args: argparse.Namespace) -> tuple[str, Inspection]:
    """One read of the device the arguments describe: a title and the report."""
    entry = {"connection": connection_entry(args, baudrate=args.baudrate, parity=args.parity),
             "points": point_entries(args)}
    config = validated(entry)
    refusal = refusal_if_held(
        args.port,
        "read its devices with `gateway read --config FILE --device NAME` (that goes through the gateway), "
        "or stop the gateway first",
    )
    if refusal:
        raise DriverError(refusal)
    driver = ModbusDriver(config, DeviceInfo(name="direct", interval=1.0))
    try:
        report = await driver.inspect(trace=args.trace)
    finally:
        await driver.close()
    conn = config.connection
    return f"unit {conn.unit_id} {conn.where} ({conn.transport}, direct)", report


DIRECT_READ = DirectRead(add_arguments=add_read_arguments, requested=requested, read=read_direct)
