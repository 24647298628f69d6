"""The modbus driver: TCP, RTU, ASCII and RTU-over-TCP through pymodbus; coalesced block reads.

pymodbus is imported in ``open`` (or the first ``poll``), never at module import, so a config
without Modbus devices never loads it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.modbus.bus import Link, LinkError
from drivers.modbus.config import ModbusConfig, overlapping_points
from drivers.modbus.connection import check_shared_ports
from drivers.modbus.decode import (
    ILLEGAL_ADDRESS,
    Block,
    decode_bits,
    decode_register_bytes,
    decode_registers,
    exception_text,
    fail_block,
    make_block,
    plan_reads,
    split_block,
)
from drivers.modbus.encode import WritePlan, merge_byte, plan_write
from drivers.modbus.trace import FrameTrace
from gateway.driver import DeviceInfo, DeviceProblem, DriverError, DriverTools, Inspection, PointRow, WriteRefused
from gateway.model import PointSet, PollResult

# Exception codes by which a TCP gateway says the unit behind it did not answer.
_READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_GATEWAY_NO_ANSWER = frozenset({10, 11})
# Which counter a failed request adds to.
_COUNTER_OF = {"timeout": "timeouts", "bad_frame": "crc_errors", "lost": "disconnects",
               "connect": "disconnects", "gone": "disconnects", "busy": "disconnects", "denied": "disconnects"}


class ModbusDriver:
    """Reads holding/input registers, coils and discrete inputs of one Modbus unit.

    Points are read in as few requests as the plan allows (see ``decode.plan_reads``). An
    exception response fails only the points of its request; an "illegal data address" on a
    coalesced request splits it into one request per point, for this and every later poll.
    Points with ``every: N`` are read on every Nth poll only: each combination of due points has
    its own plan (built on first use, split on its own); ``inspect`` reads every point.
    No valid answer at all (timeout, bad CRC, connection refused or lost, serial port gone,
    gateway exception 10/11) raises DriverError; the next poll opens the connection again.
    After close, poll reopens the link.

    Devices on one serial port (or one RTU-over-TCP server) share one connection from the
    daemon's SharedPool, and ``bus`` names it: the devices take turns on it (SharedPool's turn,
    see there), so the driver takes no lock for the line.

    ``counters`` (since construction): ``polls`` (attempts), ``requests`` sent, ``timeouts``,
    ``crc_errors`` (answers failing their CRC/LRC), ``exceptions`` (exception responses),
    ``disconnects`` (connection refused, lost or port gone), ``last_poll_seconds``; once used,
    ``writes`` and ``tool_reads`` (``inspect`` calls, i.e. technicians' reads).

    For the technician tools: ``write`` (see ``encode.py`` for what is accepted and refused)
    and ``inspect`` (one read now, with the raw registers and optionally the frames). An open, a
    poll, a write and an inspect of one device never overlap (one lock per driver, for the
    device's own state: its plans, counters and link); the daemon runs the tools in the turn of
    the device's bus, like its polls.
    """

    Config: ClassVar[type[BaseModel]] = ModbusConfig

    def __init__(self, config: ModbusConfig, device: DeviceInfo) -> None:
        self._config = config
        self._device = device
        conn = config.connection
        self.bus: str | None = conn.bus_key
        self._unit = conn.unit_id
        self._timeout = conn.timeout
        self._where = conn.where
        self._points = tuple(config.points)
        self.points = PointSet(
            names=tuple(p.name for p in config.points), units=tuple(p.unit for p in config.points)
        )
        self._blocks: list[Block] = plan_reads(
            self._points,
            max_gap=config.max_gap,
            max_registers=config.max_registers,
            max_bits=config.max_bits,
        )
        self.counters: dict[str, int | float] = {
            "polls": 0, "requests": 0, "timeouts": 0, "crc_errors": 0, "exceptions": 0, "disconnects": 0,
            "last_poll_seconds": 0.0,
        }
        self._link: Link | None = None
        self._busy = asyncio.Lock()  # one open, poll, write or inspect of this device at a time
        self._index = {p.name: i for i, p in enumerate(self._points)}
        self._raw: dict[int, str] | None = None  # while inspecting: the raw data of each point read
        # Slow points (``every: N``): the distinct N > 1, and per phase (which of them are due) its
        # plan, built on first use. The full phase's plan is ``self._blocks`` itself.
        self._every = tuple(sorted({p.every for p in self._points} - {1}))
        self._plans: dict[tuple[int, ...], _Plan] = {self._every: _Plan(self._blocks)}
        self._phase = 0  # polls so far: poll k reads the points with k % every == 0

    @classmethod
    def check_devices(cls, devices: Sequence[tuple[str, ModbusConfig]]) -> list[DeviceProblem]:
        """The config's checks across points and devices: devices sharing a serial port or server
        agree on its settings, and no two points of a device overlap.

        ``devices``: (name, config) of every modbus device, in config order.
        """
        problems = [DeviceProblem(name, message) for name, message in check_shared_ports(devices)]
        for name, config in devices:
            problems += overlapping_points(name, config.points)
        return problems

    @staticmethod
    def serial_ports(config: ModbusConfig) -> set[str]:
        """The local serial ports this device opens (the loader checks no other driver claims them)."""
        port = getattr(config.connection, "serial_port", None)
        return {port} if port else set()

    @staticmethod
    def tools() -> DriverTools:
        """``gateway scan`` and ``gateway read --port/--host ...``: see ``scancli`` and ``direct``."""
        from drivers.modbus.direct import DIRECT_READ  # argparse code: imported only for the tools
        from drivers.modbus.scancli import SCAN

        return DriverTools(commands=(SCAN,), direct_read=DIRECT_READ)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The current read plan: one entry per request of a poll."""
        return tuple(self._blocks)

    async def open(self) -> None:
        """Open the connection (or join the shared one); raises DriverError when it cannot."""
        async with self._busy:
            await self._counted(self._acquire().open(self._timeout))

    async def poll(self) -> PollResult:
        """Read the points due; raises DriverError when the unit gave no valid answer.

        A point with ``every: N`` is due on polls 0, N, 2N, ... of this driver. When some point is
        not due, the result names the points read (``points``); its values and errors follow them.
        """
        async with self._busy:
            started = time.monotonic()
            self.counters["polls"] += 1
            phase, self._phase = self._phase, self._phase + 1
            plan = self._plan(tuple(n for n in self._every if phase % n == 0))
            try:
                link = self._acquire()
                if not link.connected:  # each request opens the link too; this fails a poll early
                    await self._counted(link.open(self._timeout))
                values: list[Any] = [None] * len(self._points)
                errors: dict[int, str] = {}
                for block in tuple(plan.blocks):
                    await self._read_block(link, block, values, errors, plan.blocks)
                if plan.indices is None:
                    return PollResult(values, errors or None)
                return PollResult(
                    [values[i] for i in plan.indices],
                    {plan.position[i]: reason for i, reason in errors.items()} or None,
                    points=plan.points,
                )
            finally:
                self.counters["last_poll_seconds"] = round(time.monotonic() - started, 6)

    async def inspect(self, *, points: Sequence[str] | None = None, trace: bool = False) -> Inspection:
        """One read now, with each point's raw data and, with ``trace``, the frames on the wire.

        ``points``: read only these (one request each; used to read a write back). Never raises
        for a unit that does not answer: the report's ``error`` says so, and the points read
        before keep their values. Leaves the connection open or closed, as it found it.
        """
        indices = [self._point_index(name) for name in points] if points is not None else None
        async with self._busy:
            self._bump("tool_reads")
            if indices is None:
                blocks = list(self._blocks)
            else:
                blocks = [make_block(self._points, self._points[i].table, [i]) for i in indices]
            values: list[Any] = [None] * len(self._points)
            errors: dict[int, str] = {}
            tracer = FrameTrace(text=self._config.connection.transport == "ascii") if trace else None
            self._raw = {}
            try:
                error = await self._with_link(self._read_blocks(blocks, values, errors), tracer)
            finally:
                raw, self._raw = self._raw, None
        wanted = range(len(self._points)) if indices is None else indices
        rows = [self._row(i, values[i], errors.get(i), raw.get(i), error) for i in wanted]
        return Inspection(points=rows, error=error, trace=tracer.events if tracer else [])

    async def write(self, point: str, value: Any) -> str:
        """Write ``value`` (engineering units; text is parsed) to ``point``; returns what was sent.

        Raises WriteRefused, with nothing sent, when the point is unknown or not writable or the
        value does not fit it; DriverError when the unit did not take the write.
        """
        index = self._point_index(point)
        plan = plan_write(self._points[index], value, multiple=self._config.write_multiple)
        async with self._busy:
            error = await self._with_link(self._send_write(plan, index), None)
        if error is not None:
            raise DriverError(error)
        return plan.describe()

    async def close(self) -> None:
        """Leave the connection: closed when this device was its last user."""
        async with self._busy:
            self._leave()

    def _leave(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        if self.bus is None:
            link.close()
            return
        last = self._device.shared.release(self.bus)
        if last is not None:
            last.close()

    def _acquire(self) -> Link:
        if self._link is None:
            conn = self._config.connection
            if self.bus is None:
                self._link = Link(conn, name=self._device.name)
            else:
                self._link = self._device.shared.acquire(self.bus, lambda: Link(conn, name=self.bus or ""))
        return self._link

    def _plan(self, due: tuple[int, ...]) -> _Plan:
        """The plan of a phase where the slow points with ``every`` in ``due`` are due (built once)."""
        plan = self._plans.get(due)
        if plan is None:
            indices = tuple(i for i, p in enumerate(self._points) if p.every == 1 or p.every in due)
            blocks = plan_reads(
                self._points,
                max_gap=self._config.max_gap,
                max_registers=self._config.max_registers,
                max_bits=self._config.max_bits,
                only=frozenset(indices),
            )
            subset = PointSet(
                names=tuple(self.points.names[i] for i in indices),
                units=tuple(self.points.units[i] for i in indices),
            )
            plan = self._plans[due] = _Plan(blocks, indices, subset, {i: j for j, i in enumerate(indices)})
        return plan

    def _point_index(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            writable = [p.name for p in self._points if p.writable]
            hint = f" (writable points: {', '.join(writable)})" if writable else " (it has no writable points)"
            raise WriteRefused(f"device {self._device.name!r} has no point {name!r}{hint}")
        return index

    async def _with_link(self, work: Any, tracer: FrameTrace | None) -> str | None:
        """Run ``work`` (a coroutine using ``self._link``) on an open link; the failure's message or None."""
        was_open = self._link is not None
        link = self._acquire()
        link.tracer = tracer
        try:
            await self._counted(link.open(self._timeout))
            await work
        except DriverError as exc:
            return str(exc)
        finally:
            work.close()  # never awaited when the open failed
            link.tracer = None
            if not was_open:
                self._leave()
        return None

    async def _read_blocks(self, blocks: Sequence[Block], values: list[Any], errors: dict[int, str]) -> None:
        assert self._link is not None
        for block in blocks:
            await self._read_block(self._link, block, values, errors)

    async def _send_write(self, plan: WritePlan, index: int) -> None:
        link = self._link
        assert link is not None
        payload: Any = list(plan.bits or plan.registers)
        if plan.merge_byte:
            # int8/uint8: half a register; the other byte is kept (read-modify-write, see encode.py).
            current = await self._request(link, make_block(self._points, "holding", [index]))
            if current.isError():
                raise DriverError(f"cannot read register {plan.address} to merge the byte: "
                                  f"{exception_text(current.exception_code)}")
            payload = [merge_byte(current.registers[0], plan.registers[0], plan.merge_byte)]
        if plan.function in (5, 6):
            payload = payload[0]
        self._bump("writes")
        self.counters["requests"] += 1
        response = await self._counted(
            link.write(plan.function, plan.address, payload, unit=self._unit, timeout=self._timeout)
        )
        if response.isError():
            self.counters["exceptions"] += 1
            raise DriverError(f"unit {self._unit} {self._where} refused the write: "
                              f"{exception_text(response.exception_code)}")

    def _row(self, index: int, value: Any, error: str | None, raw: str | None, failed: str | None) -> PointRow:
        point = self._points[index]
        if raw is None and error is None and failed is not None:
            error = "not read"
        return PointRow(name=point.name, raw=raw, value=value, unit=point.unit, error=error)

    def _bump(self, counter: str) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + 1

    async def _read_block(
        self, link: Link, block: Block, values: list[Any], errors: dict[int, str], plan: list[Block] | None = None
    ) -> None:
        """Read ``block`` into ``values``/``errors``; a split is remembered in ``plan`` (default: the full plan)."""
        plan = self._blocks if plan is None else plan
        response = await self._request(link, block)
        if not response.isError():
            if self._raw is not None:
                _keep_raw(self._points, block, response, self._raw)
            if block.is_bits:
                decode_bits(block, response.bits, values, errors)
            elif (raw := getattr(response, "raw", None)) is not None:  # blockpdu: the bytes on the wire
                decode_register_bytes(block, raw, values, errors)
            else:
                decode_registers(block, response.registers, values, errors)
            return
        code = response.exception_code
        if code == ILLEGAL_ADDRESS and len(block.indices) > 1:
            # Some address inside the coalesced range is not served: read point by point from now
            # on, so only the points really at fault report an error.
            parts = split_block(self._points, block)
            if block in plan:
                where = plan.index(block)
                plan[where : where + 1] = parts
            for part in parts:
                await self._read_block(link, part, values, errors, plan)
            return
        fail_block(block, exception_text(code), errors)

    async def _request(self, link: Link, block: Block) -> Any:
        self.counters["requests"] += 1
        response = await self._counted(
            link.read(block.table, block.start, block.count, unit=self._unit, timeout=self._timeout)
        )
        expected = _READ_FUNCTION[block.table]
        if not response.isError() and getattr(response, "function_code", expected) != expected:
            # an answer to another request (some devices answer FC4 to FC3): never data
            self._bump("bad_frames")
            raise DriverError(f"bad answer from unit {self._unit} {self._where}: function "
                              f"{response.function_code} to a request of function {expected}")
        if response.isError():
            self.counters["exceptions"] += 1
            if response.exception_code in _GATEWAY_NO_ANSWER:
                via = f"behind gateway {self._where.removeprefix('at ')}" if self.bus is None else self._where
                raise DriverError(
                    f"no response from unit {self._unit} {via} ({exception_text(response.exception_code)})"
                )
        return response

    async def _counted(self, pending: Any) -> Any:
        try:
            return await pending
        except LinkError as exc:
            self.counters[_COUNTER_OF.get(exc.kind, "disconnects")] += 1
            raise


@dataclass(slots=True)
class _Plan:
    """The reads of one phase: its blocks (split in place after a hole) and, for a subset, which points."""

    blocks: list[Block]
    indices: tuple[int, ...] | None = None  # the points read, by index; None: all of them
    points: PointSet | None = None  # their names and units
    position: dict[int, int] = field(default_factory=dict)  # point index -> position in ``indices``


def _keep_raw(points: Sequence[Any], block: Block, response: Any, raw: dict[int, str]) -> None:
    """Note the raw data of each point of ``block``: registers in hex ("42F6 E979"), or a bit."""
    data = response.bits if block.is_bits else response.registers
    if len(data) < block.count:
        return  # a short answer: the decoder reports it
    for index in block.indices:
        offset = points[index].address - block.start
        if block.is_bits:
            raw[index] = "1" if data[offset] else "0"
        else:
            raw[index] = " ".join(f"{w:04X}" for w in data[offset : offset + points[index].span])
