"""Free loopback ports for test servers that bind later, safe when tests run in parallel (xdist).

A server handed a port number binds it a moment later (Mosquitto, its TLS or password listener),
or again after a stop (a broker restarted on its port). Any other process that picks a port in
between may take it. The kernel gives ports of its ephemeral range (net.ipv4.ip_local_port_range,
32768-60999 by default) to every ``bind(("...", 0))`` and every outgoing connection, so the ports
here come from below that range, from a block of its own for each pytest-xdist worker, and this
process hands a port out once only: a broker stopped for a while finds its port free again.
Servers that bind at once (the Modbus test server, the fault servers) still bind port 0.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
FIRST = 20000  # the lowest port handed out

_given: set[int] = set()
_rng = random.Random()  # our own: hypothesis seeds the global one, so every worker would pick alike


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block() -> range:
    """This worker's ports: the range below the ephemeral one, split evenly among the workers."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3"; unset without xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    end = _ephemeral_start()
    if end - FIRST < 1000 * count:  # an unusual ephemeral range: fall back to the kernel's choice
        return range(0, 1)
    size = (end - FIRST) // count
    return range(FIRST + index * size, FIRST + (index + 1) * size)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free now and that no other test worker will be given (TCP by
    default; ``socket.SOCK_DGRAM`` for UDP)."""
    block = _block()
    for _ in range(500):
        port = _rng.choice(block)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])  # port 0 (the fallback): the kernel's choice
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")
