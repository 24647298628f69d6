"""The broker's nodes: their order, their addresses, and the probe that fail-back makes.

* ``resolve``: a node's addresses, asked again at every attempt (nodes behind DNS change address).
  Every lookup goes through this one module attribute, so a test can replace it (a name with
  several addresses, where the machine's ``localhost`` has one).
* ``node_order``: ``ordered`` keeps the list as written (the first is the primary); ``random``
  shuffles it with a seed from the gateway id, so a fleet spreads over the nodes and each
  gateway keeps its own order across restarts.
* ``probe``: does a node answer a TCP (and TLS) handshake? Never an MQTT CONNECT: a second
  session under our client id would make a cluster drop the live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import random
import socket
import ssl
from collections.abc import Sequence

from gateway.config.settings import ServerAddress


async def _getaddrinfo(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), in the resolver's order, without repeats."""
    try:
        ipaddress.ip_address(host)
        return [host]  # a literal: nothing to ask
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


resolve = _getaddrinfo
"""``await resolve(host, port)`` -> the addresses to try, in order; OSError when the name does not resolve."""


def node_order(nodes: Sequence[ServerAddress], order: str, gateway_id: str) -> list[ServerAddress]:
    """The order to try ``nodes`` in: as written, or (``random``) shuffled stably by ``gateway_id``."""
    out = list(nodes)
    if order == "random":
        seed = int.from_bytes(hashlib.sha256(gateway_id.encode()).digest()[:8], "big")
        random.Random(seed).shuffle(out)
    return out


async def probe(node: ServerAddress, tls: ssl.SSLContext | None, timeout: float) -> str | None:
    """None when one of ``node``'s addresses completes a TCP handshake (and, with ``tls``, a TLS
    handshake verified against the node's own name) within ``timeout``; else why not."""
    try:
        async with asyncio.timeout(timeout):
            addresses = await resolve(node.host, node.port)
    except (OSError, TimeoutError) as exc:
        return f"cannot resolve {node.host}: {exc or 'timed out'}"
    reason = f"{node.host} has no address"
    for address in addresses:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(
                    address, node.port, ssl=tls, server_hostname=node.host if tls else None)
        except (OSError, TimeoutError) as exc:
            reason = f"{address}: {exc or 'no answer within ' + format(timeout, 'g') + ' s'}"
            continue
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        return None
    return reason


class Rotation:
    """Which node to try next. A round gives every node one try, starting after the last one used;
    a node that failed (unreachable, no answer, refused the login, lost the session) is not tried
    again in the same round. ``next()`` returns None once the round is over: back off, then
    ``restart()`` begins the next round at the first node of the order (the primary)."""

    def __init__(self, nodes: Sequence[ServerAddress]) -> None:
        self.nodes = list(nodes)
        self.failures: dict[ServerAddress, tuple[str, bool]] = {}  # this round: node -> (reason, login refused)
        self._at = 0

    @property
    def primary(self) -> ServerAddress:
        return self.nodes[0]

    def next(self) -> ServerAddress | None:
        """The next node to try in this round, or None when every node failed in it."""
        n = len(self.nodes)
        for step in range(n):
            node = self.nodes[(self._at + step) % n]
            if node not in self.failures:
                self._at = (self._at + step) % n
                return node
        return None

    def failed(self, node: ServerAddress, reason: str, *, refused: bool = False) -> None:
        """``node`` failed in this round (``refused``: it refused our login); the next try is the node after it."""
        self.failures[node] = (reason, refused)
        self._at = (self.nodes.index(node) + 1) % len(self.nodes)

    def restart(self, at: ServerAddress | None = None) -> None:
        """A new round, beginning at ``at`` (default: the primary)."""
        self.failures.clear()
        self._at = self.nodes.index(at) if at is not None else 0

    def all_refused(self) -> bool:
        """Every node of the round refused our login (a wrong password, not an outage)."""
        return len(self.failures) == len(self.nodes) and all(refused for _, refused in self.failures.values())

    def summary(self) -> str:
        """Why the round failed, in one line: the reason alone for one node, else per node."""
        if len(self.nodes) == 1:
            return next(iter(self.failures.values()))[0]
        return "; ".join(f"{node}: {reason}" for node, (reason, _) in self.failures.items())
