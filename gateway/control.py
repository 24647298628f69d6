"""The local control socket's protocol: one JSON request per line, one JSON answer per line.

The socket (``SOCKET_NAME`` in the data directory, mode 0600) is served by the daemon
(gateway.daemon.control); the technician tools (`gateway status`, `read`, `write`) and the bench
ask a running daemon through ``request``. It lives outside the daemon's package so that they need
not import the daemon.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

SOCKET_NAME = "gateway.sock"


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its answer (blocking; for the CLI).

    Raises ConnectionError with a readable reason when no daemon answers at ``path``.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(f"no gateway is running with data directory {path.parent}") from exc
        except PermissionError as exc:
            raise ConnectionError(f"not allowed to talk to the gateway at {path} (run as its user)") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the gateway closed the connection without answering")
    return json.loads(data)
