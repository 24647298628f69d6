"""A broker node's address as written in ``mqtt.servers`` (``host:port``, ``host``, ``[v6]:port``, an
IPv4 literal): parsed into a :class:`ServerAddress`, with an error that says what is wrong."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_SERVER = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One broker node: a host name or IP literal and a port. ``str()`` is ``host:port``
    (``[v6]:port`` for an IPv6 literal), the form the log and the status use."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_server(text: str, default_port: int) -> ServerAddress:
    """``host:port``, ``host`` (``default_port``), ``[v6]:port``/``[v6]`` or an IPv4 literal; ValueError
    saying what is wrong with ``text`` otherwise."""
    text = text.strip()
    match = _SERVER.fullmatch(text)
    if match is None:
        if text.count(":") > 1 and "[" not in text:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. [fd00::7]:8883")
        raise ValueError(f"{text!r} is not host:port, host or [IPv6]:port")
    port = default_port
    if match["port"] is not None:
        if not match["port"].isdigit() or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        port = int(match["port"])
    if match["v6"] is not None:
        try:
            return ServerAddress(str(ipaddress.IPv6Address(match["v6"])), port)
        except ValueError:
            raise ValueError(f"{text!r}: {match['v6']!r} in brackets is not an IPv6 address") from None
    host = match["host"]
    if re.fullmatch(r"[0-9.]+", host):  # all digits and dots: meant as an IPv4 address
        try:
            return ServerAddress(str(ipaddress.IPv4Address(host)), port)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name (letters, digits, '-' and '.')")
    return ServerAddress(host, port)
