"""`gateway web ...`: the technician page's own commands (``passwd``: set the page's password)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

EXIT_REFUSED = 2
FILE_MODE = 0o640  # the owner writes it, the gateway's group reads it, nobody else


def add_web_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway web`` and its subcommands to the ``gateway`` parser's subcommands ``sub``."""
    web = sub.add_parser("web", help="the technician's local page: set its password")
    commands = web.add_subparsers(dest="web_command", required=True, metavar="COMMAND")
    passwd = commands.add_parser(
        "passwd", help="set the page's password (read from standard input) in a password file",
        description="Reads the new password from standard input (without echo on a terminal, asked twice) "
                    "and writes its salted scrypt hash to --file, replacing the file atomically, mode 0640. "
                    "The page's web.password_file names that file. There is no default password.")
    passwd.add_argument("--file", required=True, type=Path, help="the password file (web.password_file)")
    passwd.set_defaults(tool=cmd_passwd)


def _read_password() -> str | None:
    """The new password: asked twice without echo on a terminal, else the first line of stdin.
    None (said on stderr) if the two entries differ."""
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if first and getpass.getpass("Again: ") != first:
            print("gateway web passwd: the passwords differ; nothing written", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    return line.removesuffix("\n").removesuffix("\r")


def cmd_passwd(args: argparse.Namespace) -> int:
    from gateway.atomic import write_atomic
    from gateway.web.passwd import hash_password

    password = _read_password()
    if password is None:
        return EXIT_REFUSED
    if not password:
        print("gateway web passwd: empty password refused; nothing written", file=sys.stderr)
        return EXIT_REFUSED
    path: Path = args.file
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        print(f"gateway web passwd: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        write_atomic(path, (hash_password(password) + "\n").encode("ascii"), mode=FILE_MODE)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(path, old.st_uid, old.st_gid)  # keep the group the gateway reads it as
    except OSError as exc:
        print(f"gateway web passwd: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"gateway web passwd: {path} written (mode {FILE_MODE:o})", file=sys.stderr)
    return 0
