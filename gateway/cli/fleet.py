"""``gateway fleet``: the platform's tools (``keygen``, ``sign``) and the technician's ``local``.

``sign`` prints the envelope a platform publishes on ``{topic_prefix}/{gateway.id}/config/set``
(QoS 1, not retained). The private key it reads can point a gateway at any broker and so learn
its broker password: keep it offline and treat it as root-equivalent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_fleet_command(sub: Any, config_arg: Any, duration: Any) -> None:
    """Add ``gateway fleet keygen|sign|local`` to the CLI's subparsers (sets ``args.fleet_cmd``)."""
    fleet = sub.add_parser("fleet", help="fleet configuration over MQTT: keys, signed pushes, back to the local file")
    cmds = fleet.add_subparsers(dest="fleet_cmd", required=True, metavar="FLEET_COMMAND")
    keygen = cmds.add_parser("keygen", help="write an Ed25519 key pair: PREFIX.key (private) and PREFIX.pub")
    keygen.add_argument("prefix", nargs="?", default="fleet", help="file name prefix (default: fleet)")
    sign = cmds.add_parser("sign", help="print a signed config/set envelope (or config/get with --get)")
    sign.add_argument("--key", required=True, help="the private key (PEM) from `gateway fleet keygen`")
    sign.add_argument("--gateway", required=True, help="the gateway.id the push is for")
    sign.add_argument("--config", help="the whole config file to push")
    sign.add_argument("--version", type=int, help="the push's version: above every version sent to this gateway")
    sign.add_argument("--expect", help="the config_hash the gateway runs now (its status or config/state)")
    sign.add_argument("--ttl", type=duration, default=600.0, help="how long the request is valid (default 10m)")
    sign.add_argument("--id", default=None, help="the request id (default: r-<time>)")
    sign.add_argument("--get", action="store_true", help="sign a config/get request instead")
    local = cmds.add_parser("local", help="leave the fleet config: run the local config file again")
    config_arg(local)


def cmd_fleet(args: argparse.Namespace) -> int:
    if args.fleet_cmd == "keygen":
        return _keygen(Path(args.prefix))
    if args.fleet_cmd == "sign":
        return _sign(args)
    return _local(args.config)


def _keygen(prefix: Path) -> int:
    from gateway.fleet.envelope import keygen

    private_path, public_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    if private_path.exists():
        print(f"gateway fleet keygen: {private_path} exists; not overwritten", file=sys.stderr)
        return EXIT_FAILED
    private, public = keygen()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public_path.write_bytes(public)
    print(f"private key {private_path} (keep it offline: it is root-equivalent on every gateway that trusts it)")
    print(f"public key  {public_path} (install as fleet.trust on the gateways)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from gateway.fleet.envelope import sign

    body: dict[str, Any] = {"gateway": args.gateway, "id": args.id or f"r-{int(time.time())}",
                            "expires": int((time.time() + args.ttl) * 1000)}
    if not args.get:
        if args.config is None or args.version is None or args.expect is None:
            print("gateway fleet sign: a push needs --config, --version and --expect", file=sys.stderr)
            return EXIT_USAGE
        body |= {"version": args.version, "expect": args.expect, "config": Path(args.config).read_text()}
    try:
        envelope = sign(Path(args.key).read_bytes(), body)
    except (OSError, ValueError) as exc:
        print(f"gateway fleet sign: {args.key}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(envelope))
    return 0


def _local(config: str) -> int:
    """Through the running daemon: end a trial, forget the fleet copy, reload the local file."""
    from gateway.config.lastgood import DEFAULT_DATA_DIR, data_dir_of
    from gateway.control import SOCKET_NAME, request
    from gateway.fleet.store import COPY

    data_dir = data_dir_of(config) or DEFAULT_DATA_DIR
    try:
        answer = request(data_dir / SOCKET_NAME, {"cmd": "fleet-local"}, timeout=60)
    except ConnectionError:
        # No daemon: forgetting the copy is enough, the next start runs the local file.
        copy = data_dir / COPY
        copy.unlink(missing_ok=True)
        print(f"no gateway running; {copy} removed: the next start runs {config}")
        return 0
    if not answer.get("ok"):
        print(f"gateway fleet local: {answer.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    print(f"running the local file {config} (config {answer.get('hash')})")
    return 0
