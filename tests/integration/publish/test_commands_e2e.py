"""Remote commands end to end: `gateway run` as a process, a real Mosquitto, a pymodbus server.

The test plays the platform: it publishes requests on ``city/gw-test/{device}/cmd`` and reads the
answers on ``.../cmd/result``. What reached the device is checked on the Modbus server (its
request log: function codes 5, 6, 15 and 16 are writes) and by reading its registers back with a
client of the test's own; what reached the gateway, on the broker's own log (``log_type all``:
every SUBSCRIBE and every PUBLISH it forwards, by client id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.gateway_proc import GatewayProcess, base_config, write_config
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus

pytestmark = pytest.mark.integration

PREFIX = "city/gw-test"
CLIENT_ID = "city-gateway-gw-test"
WRITES = (5, 6, 15, 16)
POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
     "min": 5, "max": 35},
    {"name": "reading", "address": 20, "type": "uint16"},  # not writable
    {"name": "relay", "table": "coil", "address": 3, "type": "bool", "writable": True},
]


@pytest.fixture(autouse=True)
def quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that logs every packet, so the test can see what the gateway subscribed to."""
    mosquitto = Mosquitto(tmp_path / "mosquitto", extra_config="log_type all\n").start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
async def server(start_modbus: StartModbus) -> ModbusTestServer:
    srv = await start_modbus(holding=[(0, 100)], coil=[(0, 16)])
    await srv.set_registers("holding", 10, [200])  # setpoint 20.0
    await srv.set_registers("holding", 20, [7])
    return srv


def writes(server: ModbusTestServer) -> list[Request]:
    return [r for r in server.requests if r.function_code in WRITES]


async def holding(server: ModbusTestServer, address: int) -> int:
    """One holding register as the device holds it, read by the test's own client."""
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0, reconnect_delay=0)
    try:
        assert await client.connect()
        response = await client.read_holding_registers(address, count=1, device_id=1)
        return int(response.registers[0])
    finally:
        client.close()


class Platform:
    """The command centre: publishes requests (QoS 1, waits for the PUBACK) and collects results."""

    def __init__(self, broker: Mosquitto) -> None:
        self.results = Subscriber(broker.host, broker.port, [f"{PREFIX}/+/cmd/result", "test/sentinel"])
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-platform")
        self._connected = threading.Event()
        self.client.on_connect = lambda *args: self._connected.set()
        self.broker = broker

    def start(self) -> Platform:
        self.results.start()
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self._connected.wait(10), "the platform client got no CONNACK"
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.results.close()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    async def send(self, device: str, request: dict[str, Any] | bytes, *, retain: bool = False) -> None:
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        await asyncio.to_thread(self.publish, f"{PREFIX}/{device}/cmd", payload, retain=retain)

    def answers(self, device: str, id: Any) -> list[dict[str, Any]]:
        """The results received so far on ``device``'s result topic for ``id``, in arrival order."""
        return [doc for doc in map(_doc, self._on(device)) if doc.get("id") == id]

    async def wait(self, device: str, id: Any, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` results for ``id`` arrived on ``device``'s result topic; returns them."""
        await self.results.wait_for_async(lambda _: len(self.answers(device, id)) >= count, timeout)
        return self.answers(device, id)

    async def flush(self) -> list[Received]:
        """Every result received once everything published before now has arrived (a sentinel overtakes none)."""
        await asyncio.to_thread(self.publish, "test/sentinel", b"x")
        messages = await self.results.wait_for_async(lambda ms: any(m.topic == "test/sentinel" for m in ms))
        return [m for m in messages if m.topic.endswith("/cmd/result")]

    def _on(self, device: str) -> list[Received]:
        return [m for m in self.results.messages if m.topic == f"{PREFIX}/{device}/cmd/result"]


def _doc(message: Received) -> dict[str, Any]:
    assert not message.retain, "a result is never retained"
    return dict(json.loads(message.payload))


StartGateway = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def platform(broker: Mosquitto) -> AsyncIterator[Platform]:
    client = await asyncio.to_thread(Platform(broker).start)
    yield client
    await asyncio.to_thread(client.close)


@pytest.fixture
async def start_gateway(tmp_path: Path, broker: Mosquitto, server: ModbusTestServer) -> AsyncIterator[StartGateway]:
    started: list[GatewayProcess] = []

    async def start(*, enabled: bool) -> GatewayProcess:
        config = base_config(tmp_path / "data", broker.port, encoding="json")
        config["commands"] = {"enabled": enabled}
        config["devices"] = [
            {"name": "meter-1", "driver": "modbus", "interval": "200ms",
             "connection": {"host": "127.0.0.1", "port": server.port, "timeout": "500ms"}, "points": POINTS},
            {"name": "sim-1", "driver": "simulated", "interval": "1s", "points": [{"name": "ramp"}]},
        ]
        gw = GatewayProcess(write_config(tmp_path / "gateway.yaml", config), tmp_path / "data")
        started.append(gw)
        await asyncio.to_thread(gw.start)
        # Broker connected, every device polled, and (when enabled) the SUBACK of the commands in.
        await asyncio.to_thread(gw.wait_status, lambda s: s["broker"]["connected"]
                                and all(d["state"] == "ok" for d in s["devices"].values())
                                and s["commands"]["subscribed"] is enabled)
        return gw

    yield start
    for gw in started:
        await asyncio.to_thread(gw.cleanup)


async def test_an_allowed_write_reaches_the_device(start_gateway: StartGateway, platform: Platform,
                                                   server: ModbusTestServer, broker: Mosquitto) -> None:
    gw = await start_gateway(enabled=True)
    await platform.send("meter-1", {"id": "c-1", "point": "setpoint", "value": 21.5})
    await platform.send("meter-1", {"id": "c-2", "point": "relay", "value": True})
    [setpoint] = await platform.wait("meter-1", "c-1")
    [relay] = await platform.wait("meter-1", "c-2")

    assert setpoint == {"id": "c-1", "ok": True, "point": "setpoint", "written": "holding 10 <- 00D7 (FC6)",
                        "readback": 21.5}
    assert relay == {"id": "c-2", "ok": True, "point": "relay", "written": "coil 3 <- 1 (FC5)", "readback": True}
    assert writes(server) == [Request(6, 10, 0), Request(5, 3, 0)]
    assert await holding(server, 10) == 215
    assert f"Received SUBSCRIBE from {CLIENT_ID}" in broker.log()
    assert f"\t{PREFIX}/+/cmd (QoS 1)" in broker.log()
    log = gw.log()
    assert "remote commands enabled: writes to writable points on city/gw-test/+/cmd" in log
    assert "command c-1 to meter-1: setpoint = 21.5: ok, written holding 10 <- 00D7 (FC6), read back 21.5" in log
    assert "command c-2 to meter-1: relay = True: ok, written coil 3 <- 1 (FC5), read back True" in log
    assert "setpoint written through remote command 'c-1'" in log and "control socket" not in log
    status = await asyncio.to_thread(gw.status)
    assert status["commands"] == {"enabled": True, "subscribed": True, "received": 2, "ok": 2, "refused": 0,
                                  "failed": 0, "duplicate": 0}


async def test_refused_commands_each_answer_their_reason(start_gateway: StartGateway, platform: Platform,
                                                         server: ModbusTestServer, broker: Mosquitto) -> None:
    # Retained before the gateway starts: its subscription receives it at once, and must not run it.
    await asyncio.to_thread(platform.publish, f"{PREFIX}/meter-1/cmd",
                            json.dumps({"id": "old", "point": "setpoint", "value": 30}).encode(), retain=True)
    gw = await start_gateway(enabled=True)
    refusals = {
        "r-1": ("meter-1", {"point": "reading", "value": 1},
                "point 'reading' is not writable (it needs writable: true in the config)"),
        "r-2": ("meter-1", {"point": "setpoint", "value": 35.5}, "35.5 is above the maximum 35 of point 'setpoint'"),
        "r-3": ("meter-1", {"point": "setpoint", "value": 4}, "4 is below the minimum 5 of point 'setpoint'"),
        "r-4": ("meter-1", {"point": "nosuch", "value": 1},
                "device 'meter-1' has no point 'nosuch' (writable points: setpoint, relay)"),
        "r-5": ("meter-9", {"point": "setpoint", "value": 20}, "device 'meter-9' is not polled by the running gateway"),
        "r-6": ("sim-1", {"point": "ramp", "value": 1}, "driver 'simulated' of device 'sim-1' cannot write"),
        "r-7": ("meter-1", {"point": "setpoint", "value": "warm"}, "point 'setpoint' takes a number, not 'warm'"),
        "r-8": ("meter-1", {"point": "setpoint"}, "the request needs a value: a number, true/false or text"),
    }
    for id, (device, request, _) in refusals.items():
        await platform.send(device, {"id": id, **request})
    await platform.send("meter-1", b'{"id": "r-9", "point": "setpoint", "value": 2')  # cut short
    await platform.send("meter-1", b'{"point": "setpoint", "value": 20}')  # no id

    for id, (device, _, error) in refusals.items():
        assert await platform.wait(device, id) == [{"id": id, "ok": False, "refused": True, "error": error}], id
    [retained] = await platform.wait("meter-1", "old")
    assert retained == {"id": "old", "ok": False, "refused": True,
                        "error": "a retained command is never executed (publish commands with retain false)"}
    malformed, no_id = await platform.wait("meter-1", None, count=2)
    assert malformed == {"id": None, "ok": False, "refused": True,
                         "error": "malformed JSON: Expecting ',' delimiter: line 1 column 46 (char 45)"}
    assert no_id == {"id": None, "ok": False, "refused": True,
                     "error": "the request needs an id: a string of 1 to 128 characters or an integer"}

    assert writes(server) == []  # nothing was sent to the device
    assert await holding(server, 10) == 200
    log = gw.log()
    assert "command r-2 to meter-1: setpoint = 35.5: refused: 35.5 is above the maximum 35 of point 'setpoint'" in log
    assert "command r-5 to meter-9: setpoint = 20: refused: device 'meter-9' is not polled" in log
    assert "command without id to meter-1: 45 bytes: refused: malformed JSON" in log
    assert "command old to meter-1: setpoint = 30: refused: a retained command is never executed" in log
    status = await asyncio.to_thread(gw.status)
    assert (status["commands"]["received"], status["commands"]["refused"], status["commands"]["ok"]) == (11, 11, 0)


async def test_a_repeated_id_is_executed_once(start_gateway: StartGateway, platform: Platform,
                                              server: ModbusTestServer) -> None:
    gw = await start_gateway(enabled=True)
    request = {"id": "d-1", "point": "setpoint", "value": 22}
    await platform.send("meter-1", request)
    await platform.send("meter-1", request)  # e.g. a platform retry that crossed the first answer
    first, second = await platform.wait("meter-1", "d-1", count=2)
    await platform.send("meter-1", {**request, "value": 23})  # later, same id: still the first result
    third = (await platform.wait("meter-1", "d-1", count=3))[2]

    original = {"id": "d-1", "ok": True, "point": "setpoint", "written": "holding 10 <- 00DC (FC6)", "readback": 22}
    assert first == original
    assert second == third == {**original, "duplicate": True}
    assert writes(server) == [Request(6, 10, 0)]  # executed once
    assert await holding(server, 10) == 220
    assert gw.log().count("command d-1 to meter-1: setpoint = 2") == 3  # each logged
    assert gw.log().count("duplicate, not executed again") == 2
    # A refusal is remembered as well: its repeat is answered, not re-checked.
    await platform.send("meter-1", {"id": "d-2", "point": "setpoint", "value": 99})
    await platform.send("meter-1", {"id": "d-2", "point": "setpoint", "value": 99})
    refused, repeat = await platform.wait("meter-1", "d-2", count=2)
    assert refused["error"] == "99 is above the maximum 35 of point 'setpoint'"
    assert repeat == {**refused, "duplicate": True}


async def test_with_commands_disabled_nothing_is_subscribed_answered_or_written(
        start_gateway: StartGateway, platform: Platform, server: ModbusTestServer, broker: Mosquitto) -> None:
    gw = await start_gateway(enabled=False)
    await platform.send("meter-1", {"id": "x-1", "point": "setpoint", "value": 21.5})
    status = await asyncio.to_thread(gw.status)
    assert await asyncio.to_thread(gw.terminate) == 0  # all it did is done, in the logs below

    assert status["commands"] == {"enabled": False, "subscribed": False, "received": 0, "ok": 0, "refused": 0,
                                  "failed": 0, "duplicate": 0}
    assert await platform.flush() == []  # no result
    log = broker.log()
    assert f" as {CLIENT_ID} (" in log  # it did connect (and published its status and telemetry)
    assert f"Received PUBLISH from test-platform (d0, q1, r0, m1, '{PREFIX}/meter-1/cmd'" in log
    # It subscribes to its own status topic only (issue 14), and the command was not forwarded to it.
    assert f"Received SUBSCRIBE from {CLIENT_ID}\n" in log and "/+/cmd (QoS" not in log
    assert not re.search(rf"Sending PUBLISH to {CLIENT_ID} \([^)]*'{PREFIX}/meter-1/cmd'", log)
    assert writes(server) == []
    assert await holding(server, 10) == 200
    assert "x-1" not in gw.log()


async def test_a_reload_turns_commands_on(start_gateway: StartGateway, platform: Platform,
                                          server: ModbusTestServer, tmp_path: Path) -> None:
    gw = await start_gateway(enabled=False)
    path = tmp_path / "gateway.yaml"
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(gw.wait_status, lambda s: s["commands"] == {**s["commands"], "enabled": True,
                                                                       "subscribed": True})
    await platform.send("meter-1", {"id": "h-1", "point": "setpoint", "value": 25})
    [result] = await platform.wait("meter-1", "h-1")
    assert result["ok"] is True and writes(server) == [Request(6, 10, 0)]
    assert "reload: remote commands enabled" in gw.log()
