"""gateway.mqttlink.GatewayClient: paho's writes corked, so packets queued together leave together;
its housekeeping on whole seconds."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterator

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from gateway.mqttlink import GatewayClient
from gateway.timers import sleep_until

needs_cork = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux only")


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    """A real loopback TCP connection (the client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        try:
            yield client
        finally:
            client.close()
            peer.close()


def corked(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


@needs_cork
async def test_paho_writes_its_queued_packets_corked_and_leaves_the_socket_uncorked(
        tcp: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    during: list[int] = []

    def loop_write(self: mqtt.Client) -> mqtt.MQTTErrorCode:  # what paho would send, packet by packet
        during.append(corked(tcp))
        tcp.sendall(b"\x30\x00" * 3)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    monkeypatch.setattr(mqtt.Client, "loop_write", loop_write)
    monkeypatch.setattr(mqtt.Client, "socket", lambda self: tcp)
    client = GatewayClient("127.0.0.1", 1883)
    assert client._client.loop_write() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert during == [1]  # the packets of one write leave together...
    assert corked(tcp) == 0  # ...and nothing is held back after it


@needs_cork
async def test_without_a_socket_the_write_is_paho_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    client = GatewayClient("127.0.0.1", 1883)  # never connected: paho has no socket
    assert client._client.loop_write() == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN


async def test_paho_housekeeping_runs_on_whole_seconds_of_the_loop_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The override replaces aiomqtt's own loop (one call a second from whenever it started), so
    the housekeeping shares the wake-up of the polls and commits on their grids."""
    assert "_misc_loop" in vars(aiomqtt.Client)  # what GatewayClient overrides is still there
    loop = asyncio.get_running_loop()
    calls: list[float] = []

    def loop_misc(self: mqtt.Client) -> mqtt.MQTTErrorCode:
        calls.append(loop.time())
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS if len(calls) < 3 else mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN

    monkeypatch.setattr(mqtt.Client, "loop_misc", loop_misc)
    client = GatewayClient("127.0.0.1", 1883)
    await sleep_until(math.floor(loop.time()) + 1.5)  # start half-way through a second
    await client._misc_loop()
    assert len(calls) == 3
    for t in calls[1:]:  # after the first, each call is just past a whole second
        assert t - math.floor(t) < 0.25, calls
