"""The `gateway` command: run, check, status, demo, bench, web, version."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.settings import Config

DEFAULT_CONFIG = "/etc/gateway/gateway.yaml"
EXIT_BAD_CONFIG = 2
# Commands that use no driver's technician tools: for them the parser is built without importing
# every installed driver (which ``gateway run`` would otherwise pay for at each start).
PLAIN_COMMANDS = ("run", "check", "status", "demo", "bench", "version", "fleet", "web")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG),
        help=f"the config file (default: $GATEWAY_CONFIG or {DEFAULT_CONFIG})",
    )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``gateway`` command's parser; for ``argv`` naming one of PLAIN_COMMANDS, without the drivers' tools."""
    parser = argparse.ArgumentParser(prog="gateway", description="city-gateway: field devices to MQTT")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway (what the service does)")
    _config_arg(run)
    check = sub.add_parser("check", help="validate a config file and summarise it")
    _config_arg(check)
    status = sub.add_parser("status", help="show the state of the gateway running on this machine")
    _config_arg(status)
    status.add_argument("--data-dir", help="the running gateway's data directory (instead of --config)")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    demo = sub.add_parser("demo", help="run against simulated devices and a local broker, show readings")
    demo.add_argument("--config", default=None, help="a config of simulated devices (default: built in)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _bench_parser(sub)
    from gateway.cli.tools import add_tool_commands  # read, write and the drivers' own (the modbus scan)
    from gateway.driver import driver_tools

    plain = argv is not None and _command_word(argv) in PLAIN_COMMANDS
    add_tool_commands(sub, _config_arg, {} if plain else driver_tools(), taken=PLAIN_COMMANDS)
    from gateway.cli.fleet import add_fleet_command

    add_fleet_command(sub, _config_arg, _duration)
    from gateway.cli.webcmd import add_web_commands

    add_web_commands(sub)
    sub.add_parser("version", help="print the version, the git commit it was built from and the Python version")
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is neither an option nor ``--log-level``'s value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _duration(text: str) -> float:
    from gateway.fields import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench", help="measure the real pipeline: throughput, CPU, memory, latency, drain, bytes",
        description="Runs `gateway run` with simulated devices against a real broker and counts every "
                    "reading that arrives, by seq; exits 1 if any reading was lost. Scenarios: load "
                    "(--devices x --points every --interval), saturation (4x the load's devices), moderate "
                    "(--devices x --points every 1 s), modbus (one Modbus TCP device served by pymodbus in the "
                    "bench process: 100 holding registers every 100 ms, whatever --devices and --points; then "
                    "the same polls with no gateway, for the floor), "
                    "drain (a backlog built at the load's rate with the broker away, drained while the "
                    "moderate load polls on), wire (cbor and json at the "
                    "moderate load, at most 5 s each), startup, failover (the broker node the gateway "
                    "is on is killed: a three-node NATS cluster, or two Mosquittos without nats-server), "
                    "many (1,000 devices x 1 point and 100 x 10, or --shapes, every second, whatever --devices "
                    "and --points). GATEWAY_BENCH_PROFILE=FILE runs the gateway under cProfile, its stats to FILE.",
    )
    bench.add_argument("--scenario", default="all",
                       help="comma list of load,saturation,moderate,modbus,drain,wire,startup,failover,many"
                            " (default: all), or web (the page's cost: 5 interleaved moderate runs without"
                            " and with it)")
    bench.add_argument("--devices", type=_positive, default=10, help="simulated devices (default 10)")
    bench.add_argument("--points", type=_positive, default=100, help="points per device (default 100)")
    bench.add_argument("--interval", type=_duration, default=0.01,
                       help="poll interval of the load, saturation and drain-fill devices (default 10ms)")
    bench.add_argument("--duration", type=_duration, default=10.0,
                       help="measuring window per scenario, after the warm-up (default 10s)")
    bench.add_argument("--warmup", type=_duration, default=2.0, help="warm-up before measuring (default 2s)")
    bench.add_argument("--encoding", choices=["cbor", "json", "packed"], default="cbor", help="telemetry encoding")
    bench.add_argument("--signals", default="counter,sine,random",
                       help="comma list of counter,sine,random, assigned to points round-robin")
    bench.add_argument("--commit-interval", type=_duration, default=1.0,
                       help="the buffer's commit interval (default 1s)")
    bench.add_argument("--drain-readings", type=_positive, default=300_000,
                       help="backlog the drain scenario builds with the broker away (default 300000)")
    bench.add_argument("--shapes", default="1000x1,100x10",
                       help="the many scenario's shapes, a comma list of DEVICESxPOINTS (default 1000x1,100x10)")
    bench.add_argument("--group-devices", type=_positive, default=1, metavar="N",
                       help="the many scenario with mqtt.batch.devices N: up to N devices per message on the"
                            " gateway's group topic (default 1: one device per message)")
    bench.add_argument("--broker", metavar="HOST:PORT", default=None,
                       help="use this broker instead of a private Mosquitto "
                            "(the drain and failover scenarios are skipped)")
    bench.add_argument("--data-dir", default=None,
                       help="where the temporary data directories go (default: the system temp dir)")
    bench.add_argument("--json", action="store_true", help="print one JSON object with every figure")


def setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def _load(path: str) -> Config | None:
    from gateway.config.load import ConfigFileError, load_config

    try:
        return load_config(path)
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return None


def _fallback(path: str) -> Config | None:
    """The last config that ran well, when the config file at ``path`` is invalid."""
    from dataclasses import replace

    from gateway.config import lastgood
    from gateway.config.load import ConfigFileError, load_config

    found = lastgood.find(path)
    if found is None:
        return None
    try:
        config = load_config(found)
    except ConfigFileError as exc:
        print(f"gateway: the last good config {found} does not load either:\n{exc}", file=sys.stderr)
        return None
    reason = f"{path} is invalid; running {found} instead until the file is fixed"
    print(f"gateway: {reason}", file=sys.stderr)
    return replace(config, path=Path(path), fallback=reason)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config) or _fallback(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    from gateway.config.secrets import warn_exposed_secrets
    from gateway.daemon.daemon import AlreadyRunning, Daemon

    warn_exposed_secrets(config)
    daemon = Daemon(config)
    try:
        status = asyncio.run(daemon.run())
    except AlreadyRunning as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    if daemon.stop_gave_up:  # the interpreter would join the buffer's stuck writer thread at exit: never
        logging.shutdown()
        os._exit(status)
    return status


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    if config.web.enabled:  # a malformed password file: no one could log in
        from gateway.web.passwd import PasswordFileError, read_hash

        try:
            read_hash(config.web.password_file or "")
        except PasswordFileError as exc:
            print(f"{args.config}: web.password_file: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    mqtt = config.mqtt
    print(f"{args.config}: OK (config {config.hash})")
    if config.fleet.enabled:
        _fleet_note(args.config, config)
    print(f"  gateway  {config.gateway.id}, data in {config.gateway.data_dir}")
    tls = "TLS" if mqtt.tls else "plain TCP"
    nodes = ", ".join(str(node) for node in mqtt.nodes)
    if len(mqtt.nodes) > 1:
        nodes += f" (failover {mqtt.failover.order})"
    print(f"  broker   {nodes} ({tls}), topics {mqtt.topic_prefix}/{config.gateway.id}/..., "
          f"{mqtt.encoding}")
    print(f"  buffer   up to {config.buffer.max_mb:g} MB, committed every {config.buffer.commit_interval:g}s")
    for dev in config.devices:
        npoints = len(getattr(dev.options, "points", ()) or ())
        state = "" if dev.enabled else " (disabled)"
        print(f"  device   {dev.name}: {dev.driver}, {npoints} points every {dev.interval:g}s{state}")
    web = config.web
    if web.enabled:
        print(f"  web      {'https' if web.tls else 'http'} on {', '.join(web.listen)}, "
              f"writes {'on' if web.writes else 'off'}, password in {web.password_file}")
        if web.open_addresses() and web.tls is None:
            print(f"{args.config}: warning: web.listen: {', '.join(web.open_addresses())} is reachable from other"
                  " machines without web.tls: the page's password crosses the network in clear", file=sys.stderr)
    return 0


def _fleet_note(path: str, config: Config) -> None:
    """Say so when a pushed fleet config runs instead of this file (it is unchanged since the push)."""
    from gateway.fleet.store import FleetStore

    store = FleetStore(config.gateway.data_dir)
    if store.in_force(Path(path)) is not None:
        meta = store.copy_meta() or {}
        print(f"  NOTE     a fleet config (version {meta.get('version')}, push {meta.get('id')}) is in force "
              f"instead of this file; `gateway fleet local` returns to it")


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.control import SOCKET_NAME, request

    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        # Only the data directory is needed: no secrets, no full validation (the daemon may be
        # running a config whose ${MQTT_PASSWORD} this shell does not have).
        from gateway.config.lastgood import DEFAULT_DATA_DIR, data_dir_of

        if not Path(args.config).is_file():
            print(f"gateway: {args.config}: file not found (or give --data-dir)", file=sys.stderr)
            return EXIT_BAD_CONFIG
        data_dir = data_dir_of(args.config) or DEFAULT_DATA_DIR
    try:
        answer = request(data_dir / SOCKET_NAME, {"cmd": "status"})
    except ConnectionError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    status = answer["status"]
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from gateway.cli.statusview import render

        print(render(status))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(args.config, args.duration)


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench.main import options_from_args, run_bench

    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"gateway bench: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return run_bench(opts, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args.command == "version":
        from gateway.daemon.buildinfo import version_line

        print(version_line())
        return 0
    setup_logging(args.log_level)
    from gateway.cli.fleet import cmd_fleet

    handlers = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "demo": cmd_demo, "bench": cmd_bench,
                "fleet": cmd_fleet}
    handler = handlers.get(args.command) or args.tool  # tools.add_tool_commands sets args.tool
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
