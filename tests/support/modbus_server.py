"""A real pymodbus Modbus server for tests: settable values, stop/restart, request counting.

Usage::

    server = ModbusTestServer(holding=[(0, 100)])        # serves holding 0..99, the rest: defaults
    await server.start()                                 # 127.0.0.1, a free port (server.port)
    await server.set_registers("holding", 10, [0x42F6, 0xE979])
    ...
    await server.stop()                                  # the port refuses connections
    await server.start()                                 # same port, same values
    server.mute(True)                                    # connected, but never answers
    await server.stop()

Transports: ``tcp`` (default), ``rtu-over-tcp`` (RTU frames on a TCP socket, like a serial device
server), and ``rtu`` / ``ascii`` on ``serial_port`` (one end of a socat pty pair, see
``serial_pty``). Several ``units`` may share the server, as units share an RS-485 line; each has
its own values, and ``mute(unit=N)`` silences one of them. ``corrupt(n)`` spoils the checksum
of the next n answers, as line noise would.

Each table serves the address ranges given (default: 0..99). A register outside them answers
with exception 2 (illegal data address), so a range list with a hole makes a hole in the map.
Bit tables are stored 16 bits to a register: bits between two ranges read as False rather than
failing; only reads past the last range fail.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

TABLES = ("coil", "discrete", "holding", "input")
BIT_TABLES = ("coil", "discrete")
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
DEFAULT_RANGE = ((0, 100),)
FRAMERS = {"tcp": FramerType.SOCKET, "rtu-over-tcp": FramerType.RTU, "rtu": FramerType.RTU, "ascii": FramerType.ASCII}

_CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
          "float32": "f", "float64": "d"}


@dataclass(frozen=True, slots=True)
class Request:
    """A request the server received."""

    function_code: int
    address: int
    count: int
    unit: int = 1


class ModbusTestServer:
    """A pymodbus server with one or more units that can be stopped and revived on its port.

    ``requests`` lists every request received (across restarts) until ``clear_requests``.
    """

    def __init__(
        self,
        *,
        unit_id: int = 1,
        units: Sequence[int] = (),
        transport: str = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        coil: Sequence[tuple[int, int]] = DEFAULT_RANGE,
        discrete: Sequence[tuple[int, int]] = DEFAULT_RANGE,
        holding: Sequence[tuple[int, int]] = DEFAULT_RANGE,
        input: Sequence[tuple[int, int]] = DEFAULT_RANGE,  # shadows the builtin: it is the table name
    ) -> None:
        if transport not in FRAMERS:
            raise ValueError(f"unknown transport {transport!r}")
        if transport in ("rtu", "ascii") and not serial_port:
            raise ValueError(f"transport {transport!r} needs serial_port")
        self.units = tuple(units) or (unit_id,)
        self.unit_id = self.units[0]
        self.transport = transport
        self.host = host
        self.port = port  # 0 until the first start picks a free one (TCP transports)
        self.serial_port = serial_port
        self.ranges: dict[str, tuple[tuple[int, int], ...]] = {
            "coil": tuple(coil), "discrete": tuple(discrete), "holding": tuple(holding), "input": tuple(input)
        }
        for table, ranges in self.ranges.items():
            if not ranges:
                raise ValueError(f"table {table!r} needs at least one (address, count) range")
        self._images: dict[int, dict[str, dict[int, Any]]] = {unit: self._blank() for unit in self.units}
        self.requests: list[Request] = []
        self.muted = False
        self.muted_units: set[int] = set()
        self._corrupt = 0
        self._silence_next = False
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._server is not None

    async def start(self) -> None:
        """Serve on ``host:port`` (a free port the first time when port is 0) or on ``serial_port``."""
        if self._server is not None:
            raise RuntimeError("the test server is already running")
        devices = [self._device(unit) for unit in self.units]
        traces = {"trace_pdu": self._trace_pdu, "trace_packet": self._trace_packet}
        framer = FRAMERS[self.transport]
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial_port is not None and self.transport in ("rtu", "ascii"):
            server = ModbusSerialServer(devices, framer=framer, port=self.serial_port, baudrate=9600, **traces)
        else:
            server = ModbusTcpServer(devices, framer=framer, address=(self.host, self.port), **traces)
        await server.serve_forever(background=True)
        if self.port == 0 and isinstance(server, ModbusTcpServer):
            self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        """Stop serving and drop every client connection; values are kept for a restart."""
        server, self._server = self._server, None
        if server is None:
            return
        for unit, image in self._images.items():
            for table, ranges in self.ranges.items():
                for start, count in ranges:
                    live = await server.async_getValues(unit, FUNCTION_CODES[table], start, count)
                    image[table].update(zip(range(start, start + count), live, strict=False))
        await server.shutdown()

    async def restart(self) -> None:
        """Stop, then start again on the same port."""
        await self.stop()
        await self.start()

    def mute(self, on: bool = True, *, unit: int | None = None) -> None:
        """While muted the server counts requests but sends no answer (``unit``: that unit only)."""
        if unit is None:
            self.muted = on
        elif on:
            self.muted_units.add(unit)
        else:
            self.muted_units.discard(unit)

    def corrupt(self, count: int = 1) -> None:
        """Spoil the checksum of the next ``count`` answers (RTU: CRC, ASCII: LRC)."""
        self._corrupt += count

    async def set_registers(self, table: str, address: int, values: Sequence[int], *, unit: int | None = None) -> None:
        """Set registers of ``holding`` or ``input`` (0..65535 each), live when running."""
        if table not in ("holding", "input"):
            raise ValueError(f"{table!r} is not a register table")
        await self._set(table, address, [int(v) & 0xFFFF for v in values], unit)

    async def set_bits(self, table: str, address: int, values: Sequence[bool], *, unit: int | None = None) -> None:
        """Set bits of ``coil`` or ``discrete``, live when running."""
        if table not in BIT_TABLES:
            raise ValueError(f"{table!r} is not a bit table")
        await self._set(table, address, [bool(v) for v in values], unit)

    def get(self, table: str, address: int, *, unit: int | None = None) -> Any:
        """The value last set (or snapshot at stop) at ``address``; not live client writes."""
        return self._images[self.unit_id if unit is None else unit][table][address]

    def clear_requests(self) -> None:
        """Forget the requests counted so far."""
        self.requests.clear()

    def requests_of(self, unit: int) -> list[Request]:
        """The requests addressed to ``unit``."""
        return [r for r in self.requests if r.unit == unit]

    def _blank(self) -> dict[str, dict[int, Any]]:
        return {
            table: {a: (False if table in BIT_TABLES else 0) for start, n in ranges for a in range(start, start + n)}
            for table, ranges in self.ranges.items()
        }

    async def _set(self, table: str, address: int, values: list[Any], unit: int | None) -> None:
        unit = self.unit_id if unit is None else unit
        image = self._images[unit][table]
        missing = [a for a in range(address, address + len(values)) if a not in image]
        if missing:
            raise ValueError(f"{table} address {missing[0]} is not served by this server")
        image.update(zip(range(address, address + len(values)), values, strict=True))
        if self._server is not None:
            await self._server.async_setValues(unit, FUNCTION_CODES[table], address, values)

    def _device(self, unit: int) -> SimDevice:
        def blocks(table: str) -> list[SimData]:
            datatype = DataType.BITS if table in BIT_TABLES else DataType.REGISTERS
            image = self._images[unit][table]
            return [
                SimData(address=start, values=[image[a] for a in range(start, start + n)], datatype=datatype)
                for start, n in self.ranges[table]
            ]

        # Four separate tables (not the shared layout): coil 5 and holding 5 are different things.
        return SimDevice(id=unit, simdata=tuple(blocks(t) for t in TABLES))  # type: ignore[arg-type]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            # The frame built from this answer comes next through _trace_packet.
            self._silence_next = self.muted or pdu.dev_id in self.muted_units
        else:
            self.requests.append(Request(pdu.function_code, pdu.address, pdu.count, pdu.dev_id))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._silence_next:
            self._silence_next = False
            return b""
        if self._corrupt and data:
            self._corrupt -= 1
            return _spoil(data, self.transport)
        return data


def _spoil(frame: bytes, transport: str) -> bytes:
    """``frame`` with a wrong checksum (still well-formed otherwise)."""
    if transport == "ascii":  # ":" ... LRC(2 hex chars) "\r\n"
        lrc = int(frame[-4:-2], 16) ^ 0xFF
        return frame[:-4] + f"{lrc:02X}".encode() + frame[-2:]
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


def encode_registers(value: float | int, type_: str, byte_order: str = "ABCD") -> list[int]:
    """The registers a device sends for ``value`` of ``type_`` in ``byte_order``.

    Written independently of the driver's decoder: the big-endian bytes are cut into words, the
    word order reversed for CDAB/DCBA and the bytes of each word swapped for BADC/DCBA.
    """
    raw = struct.pack(">" + _CODES[type_], value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order in ("CDAB", "DCBA"):
        words.reverse()
    if byte_order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


StartModbus = Callable[..., Awaitable[ModbusTestServer]]
"""The ``start_modbus`` fixture (tests/integration/conftest.py): ``await start_modbus(**kw)``."""
