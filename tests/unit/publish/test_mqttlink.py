"""gateway.publish.mqttlink.GatewayClient: paho's writes corked, so packets queued together leave together;
its housekeeping on whole seconds."""

from __future__ import annotations

import asyncio
import math
import socket
import tomllib
from collections.abc import Iterator
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from gateway.publish.mqttlink import GatewayClient, abandon, login_refused
from gateway.timers import sleep_until
from tests.support import REPO
from tests.support.broker import LOOPBACK, Mosquitto
from tests.support.wait import wait_until_async

needs_cork = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="socket.TCP_CORK exists on Linux only")


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
    assert "_misc_loop" in vars(aiomqtt.Client)  # what GatewayClient overrides is still there (driven: below)
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


class _Watched(GatewayClient):
    """GatewayClient, counting the runs of its housekeeping loop."""

    misc_runs = 0

    async def _misc_loop(self) -> None:
        type(self).misc_runs += 1
        await super()._misc_loop()


async def test_aiomqtt_and_paho_still_drive_every_private_part_gateway_client_relies_on(mosquitto: Mosquitto) -> None:
    """The pins (aiomqtt~=2.5.0, paho-mqtt~=2.2.0) hold these; a new minor version that moves them fails here.

    Over a real broker session: aiomqtt starts the housekeeping through ``_misc_loop`` (overridden),
    writes through the paho client's ``loop_write`` (wrapped, corked), keeps the paho client in
    ``_client`` and the end of the session in ``_disconnected`` (read by ``abandon``), and a refused
    login is ``aiomqtt.exceptions.MqttConnectError`` with the reason in ``rc`` (``login_refused``).
    """
    client = _Watched(LOOPBACK, mosquitto.port, identifier="pins-check")
    paho = client._client
    assert isinstance(paho, mqtt.Client)
    corked_write = paho.loop_write
    assert "loop_write" in vars(paho)  # the wrapper sits on the instance, where aiomqtt's callback finds it
    writes: list[int] = []

    def counted() -> mqtt.MQTTErrorCode:
        writes.append(1)
        return corked_write()

    paho.loop_write = counted  # type: ignore[method-assign]
    await client.__aenter__()
    await client.publish("pins/check", b"x", qos=1)  # returns on PUBACK: written, answered
    await wait_until_async(lambda: _Watched.misc_runs == 1, 5, "aiomqtt to start the (overridden) housekeeping loop")
    assert writes, "aiomqtt no longer writes through the paho client's loop_write"
    ended = client._disconnected
    assert isinstance(ended, asyncio.Future) and not ended.done()
    abandon(client)  # a DISCONNECT; aiomqtt resolves _disconnected once paho saw the end
    await wait_until_async(ended.done, 5, "aiomqtt to resolve _disconnected")
    assert issubclass(MqttConnectError, aiomqtt.MqttError)
    assert login_refused(MqttConnectError(mqtt.ReasonCode(mqtt.PacketTypes.CONNACK, identifier=135)))


def test_aiomqtt_and_paho_are_pinned_to_the_minor_versions_tested_here() -> None:
    pyproject = REPO / "pyproject.toml"
    requires = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = dict(r.split("~=") for r in requires if "~=" in r)
    for name in ("aiomqtt", "paho-mqtt"):  # ~=X.Y.Z: X.Y.* only, the minor this test run uses
        assert pins.get(name, "").rsplit(".", 1)[0] == version(name).rsplit(".", 1)[0], (name, pins)
