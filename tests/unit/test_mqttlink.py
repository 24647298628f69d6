"""gateway.mqttlink.GatewayClient: paho's writes corked, so packets queued together leave together."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from gateway.mqttlink import GatewayClient

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux only")


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


async def test_without_a_socket_the_write_is_paho_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    client = GatewayClient("127.0.0.1", 1883)  # never connected: paho has no socket
    assert client._client.loop_write() == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
