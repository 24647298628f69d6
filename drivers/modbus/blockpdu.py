"""Register read answers (FC 3, FC 4) kept as the bytes on the wire; imports pymodbus, so load it lazily.

pymodbus decodes a register answer one register at a time (a ``struct.unpack`` and a list append
per register), and on every answer formats the whole PDU, each register included, as text for a
debug line even when debug logging is off: about 55 µs for an answer of 100 registers, more than
the driver's own decoding of the block. The response classes here, registered on the driver's
client only (``register``), take the answer's data bytes with one slice instead: ``raw`` holds the
registers big-endian, exactly the buffer ``decode.decode_register_bytes`` unpacks per lane, and
``registers`` is made from it (one unpack) only for whoever asks (a technician's raw dump, a scan).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse


class _RawRegisters:
    """The data of a register read answer as bytes; ``registers`` on demand."""

    function_code: int
    raw: bytes = b""

    def decode(self, data: bytes) -> None:
        """Take the data bytes after the byte count (as pymodbus does, the count must fit the frame)."""
        if (size := data[0]) >= len(data):
            raise ModbusIOException(f"byte_count {size} > length of packet {len(data)}",
                                    function_code=self.function_code)
        self.raw = bytes(data[1 : 1 + size])

    @property
    def registers(self) -> list[int]:
        """The registers as ints (an odd trailing byte is ignored, as pymodbus does)."""
        n = len(self.raw) // 2
        return list(struct.unpack_from(f">{n}H", self.raw))

    @registers.setter
    def registers(self, values: Sequence[int]) -> None:
        self.raw = struct.pack(f">{len(values)}H", *values)

    def __str__(self) -> str:
        # pymodbus builds this for a debug line on every answer, logged or not: keep it cheap.
        return (f"{type(self).__name__}(dev_id={getattr(self, 'dev_id', 0)}, "
                f"transaction_id={getattr(self, 'transaction_id', 0)}, registers={self.raw.hex(' ', 2)})")


class HoldingRegisters(_RawRegisters, ReadHoldingRegistersResponse):
    """The answer to FC 3 (read holding registers)."""


class InputRegisters(_RawRegisters, ReadInputRegistersResponse):
    """The answer to FC 4 (read input registers)."""


def register(client: Any) -> None:
    """Make ``client`` (a pymodbus client) decode register read answers with these classes."""
    client.register(HoldingRegisters)
    client.register(InputRegisters)
