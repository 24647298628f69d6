"""sd_notify without a dependency: one datagram to $NOTIFY_SOCKET.

systemd passes the address of its notification socket in ``NOTIFY_SOCKET`` (a path, or an
abstract address written with a leading ``@``), and for ``WatchdogSec=`` the heartbeat period in
``WATCHDOG_USEC`` (microseconds) with the process it is meant for in ``WATCHDOG_PID``. Outside
systemd none of them is set and every call here is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

SEND_TIMEOUT = 1.0  # seconds; systemd reads its socket at once, a full queue must not hang the loop


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``; several assignments separated by newlines) to systemd.

    Returns False when not run by systemd or when the datagram could not be sent; never raises.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds; None when there is none.

    Like sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer, and when
    ``WATCHDOG_PID`` is set it must be this process (otherwise the variables were inherited from
    a parent the watchdog is meant for).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000
