"""The page's safety rules, as plain logic: Host and Origin checks, sessions with CSRF tokens, the login throttle.

- Host: a request is answered only when its ``Host`` names a listen address, one of
  ``web.host_names``, the address the connection came in on, or ``localhost`` on a loopback
  listener. A DNS-rebinding page reaches us under its own name, so it is refused.
- Origin: a POST must carry an ``Origin`` equal to this page's own (scheme://Host); the live
  stream refuses a foreign one. Browsers send Origin with every POST.
- Sessions: a random token in an HttpOnly, SameSite=Strict cookie (Secure under TLS), kept in memory
  only (a restart logs everyone out), each with its own CSRF token for the forms.
- Failed logins: each source address waits 1 s after its first failure, doubling with each further
  one up to 30 s; a success clears it. Never a lock-out: after the wait, the right password works.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.config.settings import is_loopback, listen_address

MAX_DELAY = 30.0  # seconds a source address waits after many failed logins, at most
FORGET_FAILURES = 900.0  # seconds after its last failure an address starts again from 1 s
MAX_ADDRESSES = 1024  # addresses whose failures are remembered (the oldest go first)
MAX_SESSIONS = 32  # sessions at once (the oldest go first)
SESSION_IDLE = 8 * 3600.0  # seconds a session lives unused


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` header -> (lower-case host without brackets or trailing dot, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if port and not port.isdigit():
        return "", None
    return host.rstrip("."), int(port) if port else None


class HostCheck:
    """Which ``Host`` values the page answers to (see the module docstring)."""

    def __init__(self, listen: list[str], host_names: list[str]) -> None:
        self.names: set[str] = set()
        for text in listen:
            host, _ = listen_address(text)
            if not ipaddress.ip_address(host).is_unspecified:
                self.names.add(ipaddress.ip_address(host).compressed)
            if is_loopback(host):
                self.names.add("localhost")
        self.names.update(split_host(name)[0] for name in host_names)

    def allowed(self, header: str | None, local: tuple[str, int] | None) -> bool:
        """True when ``header`` (the request's Host) may be answered on a connection to ``local``."""
        if not header:
            return False
        host, port = split_host(header)
        if local is not None and port is not None and port != local[1]:
            return False
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(host).compressed
        if local is not None and host == _compressed(local[0]):
            return True
        return host in self.names


def _compressed(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).compressed


def same_origin(origin: str | None, host: str | None, tls: bool) -> bool:
    """True when ``origin`` is this page's own origin (the scheme and the already checked Host)."""
    if not origin or not host:
        return False
    return origin.strip().lower() == f"{'https' if tls else 'http'}://{host.strip().lower()}"


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    token: str
    csrf: str
    source: str  # the address it logged in from (for the log)
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


class Sessions:
    """The logged-in sessions, in memory, at most MAX_SESSIONS."""

    def __init__(self, idle: float = SESSION_IDLE) -> None:
        self.idle = idle
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def new(self, source: str) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), source)
        self._by_token[session.token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None, now: float | None = None) -> Session | None:
        session = self._by_token.get(token) if token else None
        if session is None:
            return None
        now = time.monotonic() if now is None else now
        if now - session.seen > self.idle:
            del self._by_token[session.token]
            return None
        session.seen = now
        self._by_token.move_to_end(session.token)
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


class Throttle:
    """Failed logins per source address: the wait before the next attempt, doubling up to MAX_DELAY."""

    def __init__(self, max_delay: float = MAX_DELAY) -> None:
        self.max_delay = max_delay
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, when)

    def delay(self, failures: int) -> float:
        return min(self.max_delay, 2.0 ** (failures - 1)) if failures > 0 else 0.0

    def wait_left(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must still wait before its next login attempt is checked (0: none)."""
        now = time.monotonic() if now is None else now
        count, when = self._failures.get(address, (0, 0.0))
        if count and now - when > FORGET_FAILURES:
            del self._failures[address]
            return 0.0
        return max(0.0, when + self.delay(count) - now)

    def failed(self, address: str, now: float | None = None) -> float:
        """Count a failed login; returns the wait it sets."""
        now = time.monotonic() if now is None else now
        self.wait_left(address, now)  # forgets an old run of failures
        count = self._failures.pop(address, (0, 0.0))[0] + 1
        self._failures[address] = (count, now)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        return self.delay(count)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
