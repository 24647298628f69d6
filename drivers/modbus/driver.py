"""The modbus driver: TCP, RTU, ASCII and RTU-over-TCP through pymodbus; coalesced block reads.

pymodbus is imported in ``open`` (or the first ``poll``), never at module import, so a config
without Modbus devices never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.modbus.bus import Link, LinkError
from drivers.modbus.config import ModbusConfig
from drivers.modbus.connection import check_shared_ports
from drivers.modbus.decode import (
    ILLEGAL_ADDRESS,
    Block,
    decode_bits,
    decode_registers,
    exception_text,
    fail_block,
    plan_reads,
    split_block,
)
from gateway.driver import DeviceInfo, DriverError
from gateway.model import PointSet, PollResult

# Exception codes by which a TCP gateway says the unit behind it did not answer.
_GATEWAY_NO_ANSWER = frozenset({10, 11})
# Which counter a failed request adds to.
_COUNTER_OF = {"timeout": "timeouts", "bad_frame": "crc_errors", "lost": "disconnects",
               "connect": "disconnects", "gone": "disconnects"}


class ModbusDriver:
    """Reads holding/input registers, coils and discrete inputs of one Modbus unit.

    Points are read in as few requests as the plan allows (see ``decode.plan_reads``). An
    exception response fails only the points of its request; an "illegal data address" on a
    coalesced request splits it into one request per point, for this and every later poll.
    No valid answer at all (timeout, bad CRC, connection refused or lost, serial port gone,
    gateway exception 10/11) raises DriverError; the next poll opens the connection again.

    Devices on one serial port (or one RTU-over-TCP server) share one connection from the
    daemon's SharedPool, and ``bus`` names it so the scheduler polls them one at a time.

    ``counters`` (since construction): ``polls`` (attempts), ``requests`` sent, ``timeouts``,
    ``crc_errors`` (answers failing their CRC/LRC), ``exceptions`` (exception responses),
    ``disconnects`` (connection refused, lost or port gone), ``last_poll_seconds``.
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

    @classmethod
    def check_devices(cls, devices: Sequence[tuple[str, ModbusConfig]]) -> list[tuple[str, str]]:
        """Cross-device checks: devices sharing a serial port or server must agree on its settings.

        ``devices``: (name, config) of every enabled modbus device, in config order. Returns
        (device name, message) for each device in conflict with an earlier one.
        """
        return check_shared_ports(devices)

    @staticmethod
    def serial_ports(config: ModbusConfig) -> set[str]:
        """The local serial ports this device opens (the loader checks no other driver claims them)."""
        port = getattr(config.connection, "serial_port", None)
        return {port} if port else set()

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The current read plan: one entry per request of a poll."""
        return tuple(self._blocks)

    async def open(self) -> None:
        """Open the connection (or join the shared one); raises DriverError when it cannot."""
        await self._counted(self._acquire().open(self._timeout))

    async def poll(self) -> PollResult:
        """Read every point once; raises DriverError when the unit gave no valid answer."""
        started = time.monotonic()
        self.counters["polls"] += 1
        try:
            link = self._acquire()
            await self._counted(link.open(self._timeout))
            values: list[Any] = [None] * len(self._points)
            errors: dict[int, str] = {}
            for block in tuple(self._blocks):
                await self._read_block(link, block, values, errors)
            return PollResult(values, errors or None)
        finally:
            self.counters["last_poll_seconds"] = round(time.monotonic() - started, 6)

    async def close(self) -> None:
        """Leave the connection: closed when this device was its last user."""
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

    async def _read_block(self, link: Link, block: Block, values: list[Any], errors: dict[int, str]) -> None:
        response = await self._request(link, block)
        if not response.isError():
            if block.is_bits:
                decode_bits(block, response.bits, values, errors)
            else:
                decode_registers(block, response.registers, values, errors)
            return
        code = response.exception_code
        if code == ILLEGAL_ADDRESS and len(block.indices) > 1:
            # Some address inside the coalesced range is not served: read point by point from now
            # on, so only the points really at fault report an error.
            parts = split_block(self._points, block)
            where = self._blocks.index(block)
            self._blocks[where : where + 1] = parts
            for part in parts:
                await self._read_block(link, part, values, errors)
            return
        fail_block(block, exception_text(code), errors)

    async def _request(self, link: Link, block: Block) -> Any:
        self.counters["requests"] += 1
        response = await self._counted(
            link.read(block.table, block.start, block.count, unit=self._unit, timeout=self._timeout)
        )
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
