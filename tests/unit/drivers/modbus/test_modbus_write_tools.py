"""The pure parts of the technician tools: port lock lookup, frame traces, arguments, tables."""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from drivers.modbus.direct import add_read_arguments, connection_entry, point_entries
from drivers.modbus.portlock import Holder, lock_holder
from drivers.modbus.scancli import Progress, add_scan_arguments, parse_units, scan, settings_to_try
from drivers.modbus.trace import FrameTrace
from gateway.cli.render import failed, format_trace, render_inspection, show_value, table
from gateway.driver import DriverError, UsageError

# --- who holds a port ----------------------------------------------------------------------------------

def test_lock_holder_finds_this_process(tmp_path: Path) -> None:
    port = tmp_path / "ttyX"
    port.write_bytes(b"")
    assert lock_holder(port) is None
    with open(port, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder = lock_holder(port)
    assert holder is not None and holder.pid == os.getpid()
    assert lock_holder(port) is None  # closed: released


def test_lock_holder_reads_proc_locks(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB0"
    port.write_bytes(b"")
    st = os.stat(port)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    proc = tmp_path / "proc"
    (proc / "4321").mkdir(parents=True)
    (proc / "locks").write_text(
        f"1: POSIX  ADVISORY  WRITE 99 {dev} 0 EOF\n2: FLOCK  ADVISORY  WRITE 4321 {dev} 0 EOF\n"
    )
    (proc / "4321" / "cmdline").write_bytes(b"/usr/bin/python3\0-m\0gateway.cli\0run\0-c\0/etc/gateway/gateway.yaml\0")
    holder = lock_holder(port, proc)
    assert holder == Holder(4321, "gateway run -c /etc/gateway/gateway.yaml")
    assert holder.is_gateway
    assert holder.describe() == "the running gateway (pid 4321)"
    assert lock_holder(tmp_path / "missing", proc) is None


def test_holder_of_another_program() -> None:
    holder = Holder(77, "minicom -D /dev/ttyUSB0")
    assert not holder.is_gateway
    assert holder.describe() == "process 77 (minicom -D /dev/ttyUSB0)"
    assert Holder(5, "").describe() == "process 5"


# --- frame traces --------------------------------------------------------------------------------------

def test_trace_keeps_a_growing_buffer_once() -> None:
    trace = FrameTrace()
    started = time.monotonic()
    trace.begin()
    trace.packet(True, bytes.fromhex("01030000000184 0a"))
    trace.packet(False, bytes.fromhex("0103"))
    trace.packet(False, bytes.fromhex("01030200"))
    trace.packet(False, bytes.fromhex("01030200 00b844"))
    trace.end("")
    took_ms = (time.monotonic() - started) * 1000
    tx, rx = trace.events
    assert (tx["dir"], tx["data"], tx["note"]) == ("tx", "01 03 00 00 00 01 84 0a", "")
    assert (rx["dir"], rx["data"], rx["note"]) == ("rx", "01 03 02 00 00 b8 44", "")
    assert 0 <= rx["ms"] <= took_ms + 0.05  # the answer's time after the request, in ms (rounded to 0.1)


def test_trace_of_a_spoilt_answer_and_of_silence() -> None:
    trace = FrameTrace()
    trace.begin()
    trace.packet(True, b"\x02\x03")
    trace.packet(False, b"\x02\x03\x02\x00\x00\x00\x00")  # consumed as garbage by the framer...
    trace.packet(False, b"\xff")  # ...then more bytes
    trace.end("CRC error")
    trace.begin()
    trace.packet(True, b"\x07\x03")
    trace.end("timeout after 0.2 s")
    rx, silent = trace.events[1], trace.events[3]
    assert (rx["data"], rx["note"]) == ("02 03 02 00 00 00 00 ff", "CRC error")
    assert (silent["data"], silent["note"], silent["ms"]) == ("", "timeout after 0.2 s", None)
    lines = format_trace(trace.events)
    assert lines[1].endswith(f"RX  02 03 02 00 00 00 00 ff  [after {rx['ms']:g} ms, CRC error]")
    assert lines[3].endswith("RX  (nothing)  [timeout after 0.2 s]")


def test_trace_of_ascii_frames_is_text() -> None:
    trace = FrameTrace(text=True)
    trace.begin()
    trace.packet(True, b":010300000001FB\r\n")
    trace.end("")  # a request without an answer expected: no rx line
    assert [e["data"] for e in trace.events] == [":010300000001FB"]


# --- arguments -----------------------------------------------------------------------------------------

def read_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_read_arguments(parser)
    parser.add_argument("--trace", action="store_true")
    return parser.parse_args(argv)


def scan_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_scan_arguments(parser)
    return parser.parse_args(argv)


def test_direct_read_points() -> None:
    floats = point_entries(read_args("--port", "/dev/x", "--address", "4", "--count", "4", "--type", "float32",
                                     "--byte-order", "CDAB"))
    assert [(p["name"], p["address"], p["type"], p["byte_order"]) for p in floats] == [
        ("holding_4", 4, "float32", "CDAB"), ("holding_6", 6, "float32", "CDAB")]
    coils = point_entries(read_args("--host", "h", "--table", "coil", "--count", "3", "--type", "float32"))
    assert [(p["name"], p["type"]) for p in coils] == [("coil_0", "bool"), ("coil_1", "bool"), ("coil_2", "bool")]
    assert "byte_order" not in coils[0]
    text = point_entries(read_args("--host", "h", "--type", "string", "--count", "8"))
    assert [(p["type"], p["count"]) for p in text] == [("string", 8)]
    assert len(point_entries(read_args("--host", "h", "--type", "uint64"))) == 1
    with pytest.raises(UsageError, match="--count 3 is not a whole number of float32 values"):
        point_entries(read_args("--host", "h", "--type", "float32", "--count", "3"))


def test_direct_connection() -> None:
    serial = connection_entry(read_args("--port", "/dev/ttyUSB0", "--unit", "7"), baudrate=19200, parity="E")
    assert serial == {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 19200, "parity": "E",
                      "stopbits": 1, "bytesize": 8, "unit_id": 7, "timeout": 0.5}
    tcp = connection_entry(read_args("--host", "10.0.0.5", "--tcp-port", "5020", "--transport", "rtu-over-tcp"))
    assert tcp == {"transport": "rtu-over-tcp", "host": "10.0.0.5", "port": 5020, "unit_id": 1, "timeout": 0.5}
    for argv, message in [
        (("--port", "/dev/x", "--host", "h"), "not both"),
        (("--port", "/dev/x", "--transport", "tcp"), "--transport tcp needs --host"),
        (("--host", "h", "--transport", "ascii"), "--transport ascii needs --port"),
        ((), "give --port or --host"),
    ]:
        with pytest.raises(UsageError, match=message):
            connection_entry(read_args(*argv))


def test_units() -> None:
    assert parse_units("1-3,7,2") == [1, 2, 3, 7]
    assert parse_units("247") == [247]
    assert parse_units("0-2", low=0, high=255) == [0, 1, 2]
    for bad in ("0-3", "5-2", "x", "1-248", ""):
        with pytest.raises(UsageError):
            parse_units(bad)


def test_scan_settings() -> None:
    tried = settings_to_try(scan_args("--port", "/dev/x", "--baudrate", "9600,19200", "--parity", "n,E"))
    assert [(s["baudrate"], s["parity"]) for s in tried] == [(9600, "N"), (9600, "E"), (19200, "N"), (19200, "E")]
    assert len(settings_to_try(scan_args("--port", "/dev/x"))) == 7 * 2  # the defaults
    assert [s["transport"] for s in settings_to_try(scan_args("--host", "h"))] == ["tcp"]
    with pytest.raises(UsageError, match="for a serial --port"):
        settings_to_try(scan_args("--host", "h", "--baudrate", "9600"))
    with pytest.raises(UsageError, match="--parity"):
        settings_to_try(scan_args("--port", "/dev/x", "--parity", "X"))
    with pytest.raises(UsageError, match="--baudrate"):
        settings_to_try(scan_args("--port", "/dev/x", "--baudrate", "fast"))


# --- tables --------------------------------------------------------------------------------------------

def test_render_a_read() -> None:
    report: Any = {
        "points": [
            {"name": "voltage", "raw": "4366 6666", "value": 230.39999389648438, "unit": "V", "error": None},
            {"name": "mode", "raw": "0007", "value": None, "unit": None, "error": "unmapped value 7"},
        ],
        "error": None,
        "trace": [],
    }
    assert render_inspection("meter-1: modbus", report) == [
        "meter-1: modbus",
        "  point    raw        value  unit  error",
        "  voltage  4366 6666  230.4  V",
        "  mode     0007       -            unmapped value 7",
    ]
    assert failed(report)
    assert not failed({"points": [report["points"][0]], "error": None, "trace": []})
    assert failed({"points": [], "error": "no response", "trace": []})


def test_table_and_values() -> None:
    assert table(["a", "bb"], [["xyz", "1"]], indent="") == ["a    bb", "xyz  1"]
    assert [show_value(v) for v in (None, 1.0, 0.1 + 0.2, True, "on", 7)] == ["-", "1", "0.3", "True", "on", "7"]


# --- the scan loop -------------------------------------------------------------------------------------

class FakeLinkError(DriverError):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class FakeProber:
    """Units 2 and 4 answer; settings with parity E cannot be opened; baud rate 1 means the port is held."""

    opened: ClassVar[list[str]] = []

    def __init__(self, connection: dict[str, Any]) -> None:
        self.settings = f"{connection['baudrate']} 8{connection['parity']}1"
        self._connection = connection

    async def open(self) -> None:
        if self._connection["baudrate"] == 1:
            raise FakeLinkError("serial port /dev/x is in use by process 9", "busy")
        if self._connection["parity"] == "E":
            raise FakeLinkError("cannot open /dev/x: error: (22, 'Invalid argument')", "connect")
        self.opened.append(self.settings)

    async def probe(self, unit: int) -> Any:
        return SimpleNamespace(unit=unit, what="holding 0 = 0x0000") if unit in (2, 4) else None

    def close(self) -> None:
        pass


async def run_scan(argv: list[str], first: bool = False) -> tuple[list[Any], str]:
    stream = io.StringIO()
    found: list[Any] = []
    settings = settings_to_try(scan_args("--port", "/dev/x", *argv))
    await scan(FakeProber, settings, [1, 2, 3, 4], first=first, progress=Progress(stream, "/dev/x", [1, 2, 3, 4]),
               found=found)
    return found, stream.getvalue()


async def test_scan_skips_settings_the_port_cannot_take() -> None:
    found, log = await run_scan(["--baudrate", "9600,19200", "--parity", "E,N"])
    assert found == [("9600 8N1", 2, "holding 0 = 0x0000"), ("9600 8N1", 4, "holding 0 = 0x0000"),
                     ("19200 8N1", 2, "holding 0 = 0x0000"), ("19200 8N1", 4, "holding 0 = 0x0000")]
    assert log.splitlines() == [
        "scanning /dev/x at 9600 8E1: units 1-4",
        "skipping 9600 8E1: cannot open /dev/x: error: (22, 'Invalid argument')",
        "scanning /dev/x at 9600 8N1: units 1-4",
        "scanning /dev/x at 19200 8E1: units 1-4",
        "skipping 19200 8E1: cannot open /dev/x: error: (22, 'Invalid argument')",
        "scanning /dev/x at 19200 8N1: units 1-4",
    ]


async def test_scan_first_and_a_held_port() -> None:
    found, _ = await run_scan(["--baudrate", "9600,19200", "--parity", "N"], first=True)
    assert found == [("9600 8N1", 2, "holding 0 = 0x0000")]
    with pytest.raises(DriverError, match="in use by process 9"):
        await run_scan(["--baudrate", "1,9600", "--parity", "N"])
