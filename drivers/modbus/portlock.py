"""Who holds a serial port: the process with the exclusive lock on it, for messages.

pymodbus 3.16 opens serial ports with pyserial's ``exclusive=True``: an ``flock(LOCK_EX |
LOCK_NB)`` on the device, taken when the port is opened and held until it is closed. So two
processes (the daemon and a technician's tool, two tools) can never share an RS-485 line: the
second open fails. This module only finds out *who* holds a port, to say so, without opening it
(opening a real serial port toggles its modem lines): ``/proc/locks`` lists every flock with the
pid that took it and the locked file's device and inode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Holder:
    """A process holding a lock on a port."""

    pid: int
    command: str  # its command line, shortened; "" if unknown

    @property
    def is_gateway(self) -> bool:
        """True when the holder looks like a running gateway daemon (``gateway run``)."""
        words = self.command.split()
        return "run" in words and any("gateway" in w for w in words)

    def describe(self) -> str:
        """``process 1234 (gateway run -c /etc/gateway/gateway.yaml)``."""
        if self.is_gateway:
            return f"the running gateway (pid {self.pid})"
        return f"process {self.pid} ({self.command})" if self.command else f"process {self.pid}"


def lock_holder(port: str | Path, proc: Path = PROC) -> Holder | None:
    """The process holding an flock on ``port`` (a device path or a link to one), or None."""
    try:
        stat = os.stat(port)
        table = (proc / "locks").read_text()
    except OSError:
        return None
    wanted = (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 29044 00:1a:4 0 EOF" (major, minor in hex; inode in decimal)
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            found = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if found == wanted:
            return Holder(pid, _command(proc, pid))
    return None


def _command(proc: Path, pid: int) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if len(words) > 1 and os.path.basename(words[0]).startswith("python"):
        words = words[1:]  # "python -m gateway.cli run" reads better as "-m gateway.cli run"
        if words[:1] == ["-m"] and len(words) > 1:
            words = [words[1].removesuffix(".cli"), *words[2:]]
    text = " ".join(words)
    return text if len(text) <= 80 else text[:77] + "..."
