"""`gateway read`, `scan` and `write` run as a technician would: the real command, as a subprocess.

Against the test servers over TCP and over an RTU pty pair (several units on one line), with and
without a running gateway. The Modbus servers live in the test's event loop, so every blocking
call (the command, the daemon's start and status) runs in a thread while the loop serves them.

The pymodbus 3.16 test server answers an unknown unit id with exception 4 (its simulator falls
back to device 0) where a real bus stays silent; the tests mute the absent ids to get the silence.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.gateway_proc import GatewayProcess, base_config, run_cli, write_config
from tests.support.modbus_server import ModbusTestServer, Request, StartModbus, encode_registers
from tests.support.serial_pty import SerialPty

pytestmark = pytest.mark.integration

UNITS = (1, 2, 5)
ABSENT = tuple(u for u in range(1, 11) if u not in UNITS)
POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
     "min": 5, "max": 35},
    {"name": "flow", "address": 20, "type": "float32", "byte_order": "CDAB", "unit": "m3/h"},
    {"name": "relay", "table": "coil", "address": 3, "type": "bool", "writable": True},
]


async def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS...` to completion, without blocking the loop that runs the test servers."""
    return await asyncio.to_thread(run_cli, *args)


def rows(stdout: str) -> dict[str, list[str]]:
    """The table rows of a read, by point name: [raw, value, unit, error] (split on 2+ spaces)."""
    found = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if line.startswith("  ") and len(cells) >= 3 and cells[0] != "point" and not re.match(r"\d\d:", cells[0]):
            found[cells[0]] = cells[1:]
    return found


@pytest.fixture(autouse=True)
def quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
async def tcp_server(start_modbus: StartModbus) -> ModbusTestServer:
    server = await start_modbus()
    await server.set_registers("holding", 10, [215])
    await server.set_registers("holding", 20, encode_registers(12.5, "float32", "CDAB"))
    return server


@pytest.fixture
async def bus(pty: SerialPty, start_modbus: StartModbus) -> ModbusTestServer:
    server = await start_modbus(units=UNITS, transport="rtu", serial_port=str(pty.a))
    for unit in ABSENT:
        server.mute(unit=unit)
    for unit in UNITS:
        await server.set_registers("holding", 10, [200 + unit], unit=unit)
        await server.set_registers("holding", 20, encode_registers(unit * 1.5, "float32", "CDAB"), unit=unit)
    return server


def rtu_config(tmp_path: Path, port: Path, broker_port: int) -> Path:
    config = base_config(tmp_path / "data", broker_port)
    config["devices"] = [
        {"name": f"meter-{unit}", "driver": "modbus", "interval": "300ms",
         "connection": {"transport": "rtu", "serial_port": str(port), "unit_id": unit, "timeout": "300ms"},
         "points": POINTS}
        for unit in (1, 2)
    ]
    return write_config(tmp_path / "gateway.yaml", config)


# --- direct connections --------------------------------------------------------------------------------

async def test_read_a_new_meter_over_tcp(tcp_server: ModbusTestServer) -> None:
    done = await gateway("read", "--host", "127.0.0.1", "--tcp-port", str(tcp_server.port), "--address", "20",
                         "--count", "2", "--type", "float32", "--byte-order", "CDAB")
    assert done.returncode == 0, done.stderr
    assert f"unit 1 at 127.0.0.1:{tcp_server.port} (tcp, direct)" in done.stdout
    assert rows(done.stdout) == {"holding_20": ["0000 4148", "12.5"]}
    assert tcp_server.requests == [Request(3, 20, 2)]


async def test_read_fails_with_status_1_when_a_point_fails(tcp_server: ModbusTestServer) -> None:
    done = await gateway("read", "--host", "127.0.0.1", "--tcp-port", str(tcp_server.port), "--address", "99",
                         "--count", "2")
    assert done.returncode == 1
    assert rows(done.stdout) == {"holding_99": ["0000", "0"],
                                 "holding_100": ["-", "-", "exception 2 (illegal data address)"]}


async def test_read_trace_shows_frames_and_a_crc_error(bus: ModbusTestServer, pty: SerialPty) -> None:
    args = ("read", "--port", str(pty.b), "--unit", "2", "--address", "10", "--timeout", "0.3", "--trace")
    bus.corrupt(1)
    spoilt = await gateway(*args)
    good = await gateway(*args)
    bus.mute(unit=2)
    silent = await gateway(*args)

    assert spoilt.returncode == 1
    assert re.search(r"^  \d\d:\d\d:\d\d\.\d{3}  TX  02 03 00 0a 00 01 a4 3b$", spoilt.stdout, re.M)
    assert re.search(r"RX  02 03 02 00 ca \w\w \w\w  \[after [\d.]+ ms, CRC error\]$", spoilt.stdout, re.M)
    assert "error: bad answer from unit 2 on" in spoilt.stdout
    assert good.returncode == 0, good.stdout
    assert re.search(r"RX  02 03 02 00 ca \w\w \w\w  \[after [\d.]+ ms\]$", good.stdout, re.M)
    assert rows(good.stdout)["holding_10"] == ["00CA", "202"]
    assert silent.returncode == 1
    assert "RX  (nothing)  [timeout after 0.3 s]" in silent.stdout


async def test_scan_finds_exactly_the_units_on_the_line(bus: ModbusTestServer, pty: SerialPty) -> None:
    done = await gateway("scan", "--port", str(pty.b), "--units", "1-10", "--baudrate", "9600,19200",
                         "--parity", "N", "--timeout", "0.1")
    assert done.returncode == 0, done.stderr
    found = re.findall(r"^  (\d+ 8N1)\s+(\d+)\s+holding 0 = 0x0000$", done.stdout, re.M)
    # ptys ignore the baud rate: the same units answer at both settings
    assert found == [(rate, str(u)) for rate in ("9600 8N1", "19200 8N1") for u in UNITS]
    assert done.stdout.startswith(f"6 units answered on {pty.b}:")
    assert done.stderr.splitlines() == [f"scanning {pty.b} at 9600 8N1: units 1-10",
                                        f"scanning {pty.b} at 19200 8N1: units 1-10"]
    assert {r.unit for r in bus.requests} == set(range(1, 11))


async def test_scan_first_stops_at_the_first_answer(bus: ModbusTestServer, pty: SerialPty) -> None:
    done = await gateway("scan", "--port", str(pty.b), "--units", "3-10", "--baudrate", "9600", "--parity", "N,E",
                         "--first", "--timeout", "0.1")
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^  9600 8N1\s+(\d+)", done.stdout, re.M) == ["5"]
    assert [r.unit for r in bus.requests] == [3, 4, 5]


async def test_scan_over_tcp_and_nothing_found(tcp_server: ModbusTestServer) -> None:
    for unit in range(2, 6):
        tcp_server.mute(unit=unit)
    found = await gateway("scan", "--host", "127.0.0.1", "--tcp-port", str(tcp_server.port), "--units", "1-5",
                          "--timeout", "0.1")
    tcp_server.mute(True)
    nothing = await gateway("scan", "--host", "127.0.0.1", "--tcp-port", str(tcp_server.port), "--units", "1-2",
                            "--timeout", "0.1")
    assert found.returncode == 0, found.stderr
    assert re.findall(r"^  tcp 127\.0\.0\.1:\d+\s+(\d+)\s+holding 0 = 0x0000$", found.stdout, re.M) == ["1"]
    assert nothing.returncode == 1
    assert nothing.stdout.strip() == f"no unit answered on 127.0.0.1:{tcp_server.port}"


async def test_bad_arguments_exit_2(pty: SerialPty) -> None:
    bad_units = await gateway("scan", "--port", str(pty.b), "--units", "0-3")
    bad_count = await gateway("read", "--port", str(pty.b), "--type", "float32", "--count", "3")
    bad_address = await gateway("read", "--host", "127.0.0.1", "--address", "70000")
    assert (bad_units.returncode, bad_count.returncode, bad_address.returncode) == (2, 2, 2)
    assert "--units '0-3'" in bad_units.stderr
    assert "not a whole number of float32 values" in bad_count.stderr
    assert "points.0.address" in bad_address.stderr


@pytest.fixture
def held(pty: SerialPty) -> Iterator[None]:
    """The client end of the line locked by this test process, as minicom would hold it."""
    fd = os.open(pty.b, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


async def test_a_port_held_by_another_program_is_refused(bus: ModbusTestServer, pty: SerialPty, held: None,
                                                         tmp_path: Path) -> None:
    read = await gateway("read", "--port", str(pty.b))
    scan = await gateway("scan", "--port", str(pty.b), "--units", "1", "--baudrate", "9600", "--parity", "N")
    config = str(rtu_config(tmp_path, pty.b, broker_port=1))
    write = await gateway("write", "--config", config, "--device", "meter-1", "--point", "relay", "1")
    holder = f"serial port {pty.b} is in use by process {os.getpid()} ("
    assert (read.returncode, scan.returncode, write.returncode) == (1, 1, 1)
    assert holder in read.stderr and "; close that program first" in read.stderr
    assert holder in scan.stderr
    assert f"write failed: {holder}" in write.stderr
    assert bus.requests == []


# --- configured devices, no gateway running ------------------------------------------------------------

async def test_read_and_write_configured_devices_directly(bus: ModbusTestServer, pty: SerialPty,
                                                          tmp_path: Path) -> None:
    config = str(rtu_config(tmp_path, pty.b, broker_port=1))
    read = await gateway("read", "--config", config)
    as_json = await gateway("read", "--config", config, "--device", "meter-1", "--json")
    bus.clear_requests()
    written = await gateway("write", "--config", config, "--device", "meter-2", "--point", "setpoint", "22.5")
    refused = await gateway("write", "--config", config, "--device", "meter-2", "--point", "setpoint", "40")
    unknown = await gateway("write", "--config", config, "--device", "meter-2", "--point", "flow", "1")

    assert read.returncode == 0, read.stdout + read.stderr
    assert f"meter-1: modbus unit 1 on {pty.b} (direct)" in read.stdout
    assert f"meter-2: modbus unit 2 on {pty.b} (direct)" in read.stdout
    assert "flow      0000 3FC0  1.5    m3/h" in read.stdout
    [document] = json.loads(as_json.stdout)["devices"]
    assert (document["device"], document["route"], document["error"]) == ("meter-1", "direct", None)
    assert document["points"][0] == {"name": "setpoint", "raw": "00C9", "value": 20.1, "unit": "degC", "error": None}
    assert written.returncode == 0, written.stderr
    assert written.stdout.splitlines() == [
        "meter-2 setpoint = 22.5: written (holding 10 <- 00E1 (FC6)), direct",
        "read back: 22.5 degC (raw 00E1)",
    ]
    assert (refused.returncode, unknown.returncode) == (1, 1)
    assert "write refused: 40 is above the maximum 35 of point 'setpoint'" in refused.stderr
    assert "write refused: point 'flow' is not writable" in unknown.stderr
    assert bus.requests == [Request(6, 10, 0, 2), Request(3, 10, 1, 2)]  # the write and its read-back only


async def test_unknown_device_and_bad_config_exit_2(tmp_path: Path, pty: SerialPty) -> None:
    config = str(rtu_config(tmp_path, pty.b, broker_port=1))
    unknown = await gateway("read", "--config", config, "--device", "meter-9")
    (tmp_path / "bad.yaml").write_text("gateway: {id: x}\n")
    bad = await gateway("write", "--config", str(tmp_path / "bad.yaml"), "--device", "a", "--point", "b", "1")
    assert unknown.returncode == 2
    assert "no device 'meter-9'" in unknown.stderr and "meter-1, meter-2" in unknown.stderr
    assert bad.returncode == 2 and "bad.yaml" in bad.stderr


# --- with the gateway running --------------------------------------------------------------------------

@pytest.fixture
async def daemon(bus: ModbusTestServer, pty: SerialPty, tmp_path: Path,
                 mosquitto: Mosquitto) -> AsyncIterator[GatewayProcess]:
    path = rtu_config(tmp_path, pty.b, mosquitto.port)
    gw = GatewayProcess(path, tmp_path / "data")
    try:
        await asyncio.to_thread(gw.start)
        await asyncio.to_thread(gw.wait_status, lambda s: all(d["state"] == "ok" for d in s["devices"].values()))
        yield gw
    finally:
        await asyncio.to_thread(gw.cleanup)


async def test_read_and_write_go_through_the_running_gateway(daemon: GatewayProcess, bus: ModbusTestServer,
                                                             pty: SerialPty) -> None:
    config = str(daemon.config_path)
    read = await gateway("read", "--config", config, "--device", "meter-1", "--trace")
    written = await gateway("write", "--config", config, "--device", "meter-1", "--point", "relay", "on")
    refused = await gateway("write", "--config", config, "--device", "meter-1", "--point", "setpoint", "4")
    status = await asyncio.to_thread(daemon.status)

    assert read.returncode == 0, read.stdout + read.stderr
    assert f"meter-1: modbus unit 1 on {pty.b} (through the running gateway)" in read.stdout
    assert re.search(r"TX  01 03 00 0a 00 0c \w\w \w\w$", read.stdout, re.M)  # one coalesced read of 10..21
    assert rows(read.stdout)["setpoint"] == ["00C9", "20.1", "degC"]
    assert written.returncode == 0, written.stderr
    assert written.stdout.splitlines() == [
        "meter-1 relay = on: written (coil 3 <- 1 (FC5)), through the running gateway",
        "read back: True (raw 1)",
    ]
    assert refused.returncode == 1
    assert "write refused: 4 is below the minimum 5" in refused.stderr
    counters = status["devices"]["meter-1"]["counters"]
    assert (counters["tool_reads"], counters["writes"]) == (2, 1)  # the read, and the write's read-back
    assert "writes" not in status["devices"]["meter-2"]["counters"]
    assert [r for r in bus.requests if r.function_code in (5, 6, 15, 16)] == [Request(5, 3, 0, 1)]


async def test_the_held_port_is_refused_to_direct_tools(daemon: GatewayProcess, pty: SerialPty) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    read = await gateway("read", "--port", str(pty.b), "--unit", "1")
    scan = await gateway("scan", "--port", str(pty.b), "--units", "1-3", "--baudrate", "9600", "--parity", "N")

    assert read.returncode == 1
    assert f"serial port {pty.b} is in use by the running gateway (pid {pid}): read its devices with" in read.stderr
    assert scan.returncode == 1
    assert f"serial port {pty.b} is in use by the running gateway (pid {pid}): a scan would put" in scan.stderr
    status = await asyncio.to_thread(daemon.status)
    assert all(d["state"] == "ok" for d in status["devices"].values())


async def test_a_device_the_gateway_does_not_poll_is_read_directly(daemon: GatewayProcess, pty: SerialPty,
                                                                   tmp_path: Path) -> None:
    # Same data directory, one more device on the same port: the daemon (started with the old
    # config) does not poll it, so the tool opens the port itself, and finds it held.
    other = tmp_path / "other.yaml"
    text = daemon.config_path.read_text().replace("meter-2", "meter-5").replace("unit_id: 2", "unit_id: 5")
    other.write_text(text)
    done = await gateway("read", "--config", str(other), "--device", "meter-5")
    assert done.returncode == 1
    assert f"meter-5: modbus unit 5 on {pty.b} (direct)" in done.stdout
    assert f"error: serial port {pty.b} is in use by the running gateway (pid {daemon.proc.pid})" in done.stdout
