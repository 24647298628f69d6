"""The MQTT link under the publisher: aiomqtt's client tuned for the gateway, and what a failure means.

* ``GatewayClient``: paho's housekeeping on whole seconds, its writes corked (see the class).
* ``PahoLog``: a client's paho log; a socket failure is kept as the reason for a lost link.
* ``describe`` and friends: one line for a failed session, and whether it was the network or a refused login.
* ``abandon``: leave no half-open connection behind (aiomqtt 2.5 internals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError  # a refused CONNACK (not exported by the package)

from gateway.publish.tls import tls_reason
from gateway.timers import sleep_until

# CONNACK codes that refuse the login: bad user name or password, not authorized (MQTT 3.1.1's 4 and 5
# reach us as MQTT 5's reason codes)
LOGIN_REFUSED = frozenset({4, 5, 134, 135})
PAHO_LOG = logging.getLogger("gateway.publish.publisher.paho")


class GatewayClient(aiomqtt.Client):
    """aiomqtt's client, with two changes that spare wake-ups (aiomqtt 2.5, paho 2):

    * paho's once-a-second housekeeping (keepalive, retries; aiomqtt's ``_misc_loop``) runs on whole
      seconds of the monotonic clock, so it shares the wake-up of the polls and commits on their grids;
    * paho's writes are corked (TCP_CORK, Linux), so the packets of one write leave together.
    """

    async def _misc_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await sleep_until(math.floor(loop.time()) + 1.0)

    def __init__(self, *args: Any, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if address is not None:
            self._connect_to(address)
        if hasattr(socket, "TCP_CORK"):
            paho, write = self._client, self._client.loop_write

            def corked_write() -> mqtt.MQTTErrorCode:
                """paho writes each queued packet with a send of its own: corked, the messages a
                drain queued together leave as one transmission, not one (and one wake-up of the
                broker) per message."""
                sock = paho.socket()
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                except (AttributeError, OSError):
                    return write()
                try:
                    return write()
                finally:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

            paho.loop_write = corked_write  # type: ignore[method-assign]

    def _connect_to(self, address: str) -> None:
        """Open the TCP connection to ``address`` (one address of the node), not to whatever the node's
        name resolves to now: paho keeps the name, so TLS still verifies the certificate against it
        (an IP-literal node: against an IP SAN). The TCP connect waits as long as the CONNACK."""
        paho = self._client
        if self.timeout and self.timeout > 0:
            paho.connect_timeout = self.timeout

        def connect() -> socket.socket:
            return socket.create_connection((address, paho.port), timeout=paho.connect_timeout)

        paho._create_socket_connection = connect  # type: ignore[method-assign]


class LinkDead(Exception):
    """The connection to the broker is lost or no longer answers."""


class PahoLog(logging.Logger):
    """One client's paho/aiomqtt log (under gateway.publish.publisher.paho). A socket failure is kept as the
    reason for the lost link and logged at DEBUG only: our one "broker lost" line reports it."""

    def __init__(self) -> None:
        super().__init__(PAHO_LOG.name)
        self.parent = PAHO_LOG  # levels and handlers come from the real logger
        self.socket_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level < logging.ERROR and not self.isEnabledFor(level):  # paho's per-packet DEBUG lines
            return
        # paho: "failed to receive on socket: %s", "timeout on socket: %s"
        if level >= logging.ERROR and str(msg).endswith("on socket: %s") and args:
            self.socket_error = str(args[0])
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


def pingresp_overdue(client: aiomqtt.Client, limit: float) -> float | None:
    """Seconds our PINGREQ has waited for its PINGRESP when that is ``limit`` or more, else None
    (paho 2 internals). paho alone gives up a keepalive after a second keepalive, up to twice
    ``keepalive`` after the broker's last word: too late for a failover within 1.5 keepalives."""
    sent = getattr(client._client, "_ping_t", 0.0)
    waited = mqtt.time_func() - sent if sent else 0.0
    return waited if sent and waited >= limit else None


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed session: a LinkDead if there is one, else the first leaf."""
    if isinstance(exc, aiomqtt.MqttError) and isinstance(exc.__context__, BaseExceptionGroup | LinkDead):
        exc = exc.__context__  # the goodbye failed too; the first failure is the reason
    found = leaves(exc)
    first = next((e for e in found if isinstance(e, LinkDead)), found[0])
    return tls_reason(str(first)) or type(first).__name__


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def login_refused(exc: BaseException) -> bool:
    rc = getattr(exc, "rc", None)
    return isinstance(exc, MqttConnectError) and getattr(rc, "value", rc) in LOGIN_REFUSED


def is_link_error(exc: BaseException) -> bool:
    return all(isinstance(e, aiomqtt.MqttError | OSError | LinkDead | TimeoutError) for e in leaves(exc))


def abandon(client: aiomqtt.Client) -> None:
    """Leave no connection behind (aiomqtt 2.5 internals): without a CONNACK in time aiomqtt leaves
    the socket open, a zombie a waking broker would accept under our client id; a DISCONNECT after
    its CONNECT ends it cleanly (no will). Marks an unawaited disconnect error as seen."""
    paho = client._client
    if paho.socket() is not None:
        paho.disconnect()
    client._disconnected.add_done_callback(lambda f: f.cancelled() or f.exception())


def socket_options(timeout: float) -> list[tuple[int, int, int]]:
    # Let the kernel drop the connection when sent data stays unacknowledged this long, so a
    # half-open link also ends a DISCONNECT or keepalive that would otherwise wait on it.
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        return [(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))]
    return []
