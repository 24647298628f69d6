"""The modbus scenario of `gateway bench`: one Modbus TCP device, served by pymodbus in this process.

The workload of the issue: one TCP device, 100 holding registers (uint16 at addresses 0..99) read
every 100 ms, measured like the moderate scenario. A real pymodbus ``ModbusTcpServer`` serves them
on 127.0.0.1 (a free port), on its own event loop in a thread of the bench process, so its CPU
counts as the bench's, never as the gateway's. Every read request moves each register on by its own
step, so the readings vary as a meter's would (and are not all one small, cheap-to-encode number).

At the end of the run the bench makes the device fail, as the simulated devices' fail flags do:
the server answers every request with exception 11 (gateway target failed to respond), which the
driver takes as "no answer" (a DriverError), so the device goes to state ``error`` and the buffer
drains, and what was produced can be checked against what was delivered.

The floor (``run_floor``): the same polls of the same server with no gateway around them, in a
process of their own, so the gateway's figure can be read against what the event loop and the
client library cost alone on this machine. Two clients: pymodbus' ``AsyncModbusTcpClient`` (what
the driver uses), and a bare socket that sends a fixed 12-byte request and waits for the whole
answer (what asyncio costs with no Modbus library at all). Polls fall on the interval's grid of the
monotonic clock, as the scheduler's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.bench.groups import GroupShape
from gateway.bench.run import LOOPBACK, BenchError, child_json, child_main, child_parser

MODBUS_REGISTERS = 100  # holding registers 0..99, one uint16 point each
MODBUS_INTERVAL = 0.1  # seconds between polls
GATEWAY_NO_RESPONSE = 11  # the exception code the failing server answers with
FLOOR_CLIENTS = ("pymodbus", "socket")
MBAP = struct.Struct(">HHHBBHH")  # transaction, protocol 0, length 6, unit, function 3, start, count


class ModbusBenchServer:
    """A pymodbus TCP server of one unit with ``registers`` holding registers, on a thread of its own.

    Use as a context manager: ``port`` is set once it listens. ``failing`` makes it answer every
    request with exception 11; ``reads`` counts the read requests served.
    """

    def __init__(self, registers: int = MODBUS_REGISTERS, *, unit: int = 1) -> None:
        self.registers = registers
        self.unit = unit
        self.port = 0
        self.reads = 0
        self.failing = threading.Event()
        # Each register starts somewhere else and moves by its own step (1..7) per read.
        self._base = [(k * 613) & 0xFFFF for k in range(registers)]
        self._step = [k % 7 + 1 for k in range(registers)]
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="bench-modbus-server", daemon=True)

    def __enter__(self) -> ModbusBenchServer:
        self._thread.start()
        if not self._ready.wait(10.0):
            self.close()
            raise BenchError("modbus: the Modbus server did not start within 10 s")
        if self._error is not None:
            raise BenchError(f"modbus: cannot start the Modbus server: {type(self._error).__name__}: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (every connection is dropped) and end the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__; the thread must not die silently
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # "Server listening." is no bench figure
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        device = SimDevice(
            id=self.unit,
            simdata=[SimData(address=0, count=self.registers, values=0, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        server = ModbusTcpServer(device, address=(LOOPBACK, 0))
        await server.serve_forever(background=True)
        try:
            self.port = int(server.transport.sockets[0].getsockname()[1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await server.shutdown()

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> Any:
        """pymodbus' hook on every access: fail while ``failing``, else move the registers read on."""
        if self.failing.is_set():
            from pymodbus.constants import ExcCodes

            return ExcCodes(GATEWAY_NO_RESPONSE)
        if set_values is None:
            self.reads += 1
            n, first = self.reads, address - start_address
            base, step = self._base, self._step
            registers[first:first + count] = [
                (base[k] + n * step[k]) & 0xFFFF for k in range(first, min(first + count, self.registers))
            ]
        return None


@dataclass(frozen=True, slots=True)
class ModbusGroup(GroupShape):
    """``count`` Modbus TCP devices (each its own connection) reading ``points`` holding registers
    (uint16 at 0..points-1) of ``server`` every ``interval`` seconds; they fail while it does."""

    driver: ClassVar[str] = "modbus"
    prefix: str
    server: ModbusBenchServer
    points: int = MODBUS_REGISTERS
    interval: float = MODBUS_INTERVAL
    count: int = 1

    def entries(self) -> list[dict[str, Any]]:
        """The group's device entries for gateway.yaml."""
        points = [{"name": f"r{i:03d}", "table": "holding", "address": i, "type": "uint16"}
                  for i in range(self.points)]
        connection = {"transport": "tcp", "host": LOOPBACK, "port": self.server.port,
                      "unit_id": self.server.unit, "timeout": 1.0}
        return [{"name": name, "driver": self.driver, "interval": self.interval, "connection": connection,
                 "points": points} for name in self.names]

    def fail(self) -> None:
        """Make the server answer every request with exception 11 (no answer from the unit)."""
        self.server.failing.set()

    def revive(self) -> None:
        """Make the server answer again."""
        self.server.failing.clear()


# -- the floor: the same polls with no gateway ------------------------------------------------------


def run_floor(client: str, port: int, *, unit: int = 1, registers: int = MODBUS_REGISTERS,
              interval: float = MODBUS_INTERVAL, warmup: float = 1.0, window: float = 5.0) -> dict[str, Any]:
    """Poll ``registers`` holding registers at ``port`` every ``interval`` with ``client`` (one of
    FLOOR_CLIENTS) in a child process; return its CPU over ``window`` after ``warmup``.

    The result: ``polls`` answered in the window, ``cpu_s`` (the child's CPU time in it) and
    ``cpu_us_per_reading``. BenchError when the child fails or a poll goes unanswered.
    """
    argv = [sys.executable, "-m", "gateway.bench.modbus", "--client", client, "--port", str(port),
            "--unit", str(unit), "--registers", str(registers), "--interval", str(interval),
            "--warmup", str(warmup), "--window", str(window)]
    return child_json(argv, f"modbus floor ({client})", warmup + window + 30.0)


class _Answers(asyncio.Protocol):
    """The bare client's end of the connection: completes ``waiting`` with each whole MBAP frame."""

    def __init__(self) -> None:
        self.waiting: asyncio.Future[bytes] | None = None
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < 6:
            return
        end = 6 + int.from_bytes(self._buffer[4:6], "big")
        if len(self._buffer) >= end:
            frame, self._buffer = self._buffer[:end], self._buffer[end:]
            if self.waiting is not None and not self.waiting.done():
                self.waiting.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("the Modbus server closed the connection"))


async def _bare_poller(port: int, unit: int, registers: int, timeout: float) -> Any:
    """A poll function over a bare socket: one FC3 request, the whole answer checked for length."""
    loop = asyncio.get_running_loop()
    transport, answers = await loop.create_connection(_Answers, LOOPBACK, port)
    tid = 0
    expected = 9 + 2 * registers  # MBAP 7 + function + byte count + the registers

    async def poll() -> None:
        nonlocal tid
        tid = (tid + 1) & 0xFFFF
        answers.waiting = loop.create_future()
        transport.write(MBAP.pack(tid, 0, 6, unit, 3, 0, registers))
        async with asyncio.timeout(timeout):
            frame = await answers.waiting
        if len(frame) != expected or frame[:2] != tid.to_bytes(2, "big"):
            raise BenchError(f"unexpected answer of {len(frame)} bytes to request {tid}")

    return poll, transport.close


async def _pymodbus_poller(port: int, unit: int, registers: int, timeout: float) -> Any:
    """A poll function with pymodbus' async TCP client, as the driver sends its block read."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient(LOOPBACK, port=port, timeout=timeout, retries=0)
    if not await client.connect():
        raise BenchError(f"cannot connect to the Modbus server on port {port}")

    async def poll() -> None:
        answer = await client.read_holding_registers(0, count=registers, device_id=unit)
        if answer.isError() or len(answer.registers) != registers:
            raise BenchError(f"unexpected answer: {answer}")

    return poll, client.close


async def _floor(client: str, port: int, unit: int, registers: int, interval: float,
                 warmup: float, window: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    make = _pymodbus_poller if client == "pymodbus" else _bare_poller
    poll, close = await make(port, unit, registers, 1.0)
    try:
        start = loop.time() + warmup
        end = start + window
        polls = 0
        cpu0: float | None = None
        due = (loop.time() // interval + 1) * interval
        while due < end:
            if due >= start:
                if cpu0 is None:  # the window starts before the wake-up of its first poll
                    cpu0 = time.process_time()
                polls += 1
            woken = loop.create_future()
            loop.call_at(due, woken.set_result, None)
            await woken
            await poll()
            due += interval
        cpu = 0.0 if cpu0 is None else time.process_time() - cpu0
    finally:
        close()
    return {"client": client, "polls": polls, "cpu_s": cpu,
            "cpu_us_per_reading": cpu / max(polls * registers, 1) * 1e6}


def _floor_cli(argv: list[str]) -> int:
    ap = child_parser("python -m gateway.bench.modbus",
                      "The modbus scenario's floor: its polls with no gateway; prints JSON.")
    ap.add_argument("--client", choices=FLOOR_CLIENTS, required=True)
    ap.add_argument("--unit", type=int, default=1)
    ap.add_argument("--registers", type=int, default=MODBUS_REGISTERS)
    ap.add_argument("--interval", type=float, default=MODBUS_INTERVAL)
    a = ap.parse_args(argv)
    return child_main(_floor(a.client, a.port, a.unit, a.registers, a.interval, a.warmup, a.window))


if __name__ == "__main__":
    sys.exit(_floor_cli(sys.argv[1:]))
