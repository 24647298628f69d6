"""The page's password file: one line, a salted scrypt hash, written by ``gateway web passwd``.

The line is ``scrypt$N$r$p$salt$hash`` (salt and hash in base64), so the cost can be raised later
and old files still verify. There is never a default password: without this file the page does not
start. Errors name the file and what is wrong with it, never its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

SCHEME = "scrypt"
# N=2^14, r=8 (16 MiB, ~50 ms here, a few hundred ms on a Pi): the scrypt paper's interactive-login
# cost, as much as a small board can spend on a login; failed logins are slowed down as well.
COST_N, COST_R, COST_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on a file's parameters: a crafted file must not make a login allocate gigabytes.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
MAX_MEMORY = 256 * 2**20  # bytes; scrypt needs about 128 * N * r
MAX_LINE = 512  # bytes; a password file is one short line
FORMAT = "one line scrypt$N$r$p$salt$hash, as `gateway web passwd` writes"


class PasswordFileError(Exception):
    """The password file is missing, unreadable or malformed; the message names the file, not its content."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=MAX_MEMORY + 2**20)


def hash_password(password: str) -> str:
    """The password-file line for ``password``: a fresh random salt, the cost of COST_N/R/P."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, COST_N, COST_R, COST_P, HASH_BYTES)
    return f"{SCHEME}${COST_N}${COST_R}${COST_P}${_b64(salt)}${_b64(digest)}"


def _parse(line: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, hash) of a password-file line; ValueError (without the line) if malformed."""
    fields = line.strip().split("$")
    if len(fields) != 6 or fields[0] != SCHEME:
        raise ValueError(f"not {FORMAT}")
    try:
        n, r, p = (int(f) for f in fields[1:4])
        salt = base64.b64decode(fields[4], validate=True)
        digest = base64.b64decode(fields[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"not {FORMAT}") from None
    if not (1 < n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise ValueError("scrypt cost out of bounds (N a power of 2 up to 2^20, r up to 32, p up to 16)")
    if 128 * n * r > MAX_MEMORY:
        raise ValueError("scrypt cost needs more than 256 MiB")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return n, r, p, salt, digest


def verify(line: str, password: str) -> bool:
    """Whether ``password`` is the one ``line`` (a password-file line) was made from. The hashes are
    compared in constant time. ValueError if ``line`` is malformed. CPU-bound for tens of ms: call it
    from an executor in an event loop."""
    n, r, p, salt, digest = _parse(line)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def read_hash(path: Path | str) -> str:
    """The password-file line in ``path``, checked well-formed; PasswordFileError if the file is
    missing, unreadable or malformed (the message names the file and the fault, never the content)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LINE + 1)
    except FileNotFoundError:
        raise PasswordFileError(f"{path}: no such password file (create it with: gateway web passwd "
                                f"--file {path})") from None
    except OSError as exc:
        raise PasswordFileError(f"{path}: cannot read the password file: {exc.strerror or type(exc).__name__}") \
            from None
    if len(data) > MAX_LINE:
        raise PasswordFileError(f"{path}: not a password file: longer than {MAX_LINE} bytes ({FORMAT})")
    try:
        lines = data.decode("ascii").splitlines()
        if len(lines) != 1:
            raise ValueError(f"not {FORMAT}")
        _parse(lines[0])
    except ValueError as exc:  # UnicodeDecodeError included; its text would quote the bytes
        reason = str(exc) if not isinstance(exc, UnicodeDecodeError) else f"not {FORMAT}"
        raise PasswordFileError(f"{path}: malformed password file: {reason}") from None
    return lines[0].strip()
