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
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.benchrun import LOOPBACK, BenchError, GroupShape

MODBUS_REGISTERS = 100  # holding registers 0..99, one uint16 point each
MODBUS_INTERVAL = 0.1  # seconds between polls
GATEWAY_NO_RESPONSE = 11  # the exception code the failing server answers with


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
