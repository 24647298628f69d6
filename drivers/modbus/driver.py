"""The modbus driver: Modbus TCP through pymodbus, coalesced reads, block decoding with struct.

pymodbus is imported in ``open`` (or the first ``poll``), never at module import, so a config
without Modbus devices never loads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pydantic import BaseModel

from drivers.modbus.config import ModbusConfig
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

_READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}
# Exception codes by which a TCP gateway says the unit behind it did not answer.
_GATEWAY_NO_ANSWER = frozenset({10, 11})


class ModbusDriver:
    """Reads holding/input registers, coils and discrete inputs of one Modbus TCP unit.

    Points are read in as few requests as the plan allows (see ``decode.plan_reads``). An
    exception response fails only the points of its request; an "illegal data address" on a
    coalesced request splits it into one request per point, for this and every later poll.
    No answer at all (timeout, connection refused or lost, gateway exception 10/11) raises
    DriverError; the next poll reconnects.

    ``counters`` counts, since construction: ``requests`` sent, ``timeouts``, ``exceptions``
    (exception responses), ``disconnects`` (connection refused or lost).
    """

    Config: ClassVar[type[BaseModel]] = ModbusConfig
    bus: str | None = None  # TCP: every device has its own connection

    def __init__(self, config: ModbusConfig, device: DeviceInfo) -> None:
        self._config = config
        self._device = device
        conn = config.connection
        self._unit = conn.unit_id
        self._timeout = conn.timeout
        self._where = f"{conn.host}:{conn.port}"
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
        self.counters: dict[str, int] = {"requests": 0, "timeouts": 0, "exceptions": 0, "disconnects": 0}
        self._client: Any = None
        self._readers: dict[str, Any] = {}
        self._timeout_errors: tuple[type[BaseException], ...] = ()
        self._link_errors: tuple[type[BaseException], ...] = ()

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The current read plan: one entry per request of a poll."""
        return tuple(self._blocks)

    async def open(self) -> None:
        """Connect; raises DriverError when the device cannot be reached."""
        await self._connect()

    async def poll(self) -> PollResult:
        """Read every point once; raises DriverError when the unit did not answer."""
        if self._client is None or not self._client.connected:
            await self._connect()
        values: list[Any] = [None] * len(self._points)
        errors: dict[int, str] = {}
        for block in tuple(self._blocks):
            await self._read_block(block, values, errors)
        return PollResult(values, errors or None)

    async def close(self) -> None:
        """Close the connection (a later ``poll`` or ``open`` connects again)."""
        if self._client is not None:
            self._client.close()

    async def _read_block(self, block: Block, values: list[Any], errors: dict[int, str]) -> None:
        response = await self._request(block)
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
                await self._read_block(part, values, errors)
            return
        fail_block(block, exception_text(code), errors)

    async def _request(self, block: Block) -> Any:
        self.counters["requests"] += 1
        read = self._readers[block.table]
        try:
            response = await read(block.start, count=block.count, device_id=self._unit)
        except self._timeout_errors as exc:
            self.counters["timeouts"] += 1
            # A fresh connection next time: a rebooted device has forgotten this one.
            self._client.close()
            raise DriverError(
                f"no response from unit {self._unit} at {self._where} (timeout {self._timeout}s)"
            ) from exc
        except self._link_errors as exc:
            self.counters["disconnects"] += 1
            self._client.close()
            raise DriverError(
                f"no response from unit {self._unit} at {self._where} (connection lost)"
            ) from exc
        if response.isError():
            self.counters["exceptions"] += 1
            if response.exception_code in _GATEWAY_NO_ANSWER:
                raise DriverError(
                    f"no response from unit {self._unit} behind gateway {self._where} "
                    f"({exception_text(response.exception_code)})"
                )
        return response

    async def _connect(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        started = time.monotonic()
        if await self._client.connect():
            return
        self.counters["disconnects"] += 1
        # pymodbus reports only False; the time taken tells a refusal from silence.
        if time.monotonic() - started >= 0.9 * self._timeout:
            raise DriverError(f"no connection to {self._where} within {self._timeout}s")
        raise DriverError(f"cannot connect to {self._where} (refused or unreachable)")

    def _make_client(self) -> Any:
        from pymodbus.client import AsyncModbusTcpClient
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        self._timeout_errors = (ModbusIOException, asyncio.TimeoutError)
        self._link_errors = (ConnectionException, OSError)
        conn = self._config.connection
        # retries=0: TCP already retransmits, and each Modbus retry costs a full timeout on a dead
        # unit; the scheduler decides when to try again. reconnect_delay=0: no background
        # reconnect task (its own backoff grows to minutes and would race ours); poll reconnects.
        client = AsyncModbusTcpClient(
            conn.host,
            port=conn.port,
            name=self._device.name,
            timeout=conn.timeout,
            retries=0,
            reconnect_delay=0,
        )
        self._readers = {table: getattr(client, method) for table, method in _READERS.items()}
        return client
