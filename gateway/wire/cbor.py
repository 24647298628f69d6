"""The readable CBOR telemetry message, written a batch at a time instead of a reading at a time.

The message is the same CBOR document as ``cbor2.dumps`` of the readable form (gateway.wire.encoding),
decoded to equal readings, but the common batch -- every value an int >= 0 or a finite float, no
error, clock synced -- is written by one ``struct`` call over the whole batch: the bytes that do not
change from poll to poll (map heads, keys, point names, units) are built once per point set and
type layout and kept, and only seq, ts and the values are filled in. Any other batch goes through
``cbor2`` as before.

The one difference to cbor2's bytes: in the fast path seq, ts and int values use a fixed-width
head (``0x1a`` + 4 bytes, or ``0x1b`` + 8 bytes when a batch needs it) rather than the shortest one. CBOR allows both
(RFC 8949, section 3: "preferred serialization" is a recommendation) and every decoder reads them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from gateway.model import StoredBatch

_U32 = 1 << 32
_U64 = 1 << 64
_TS_KEY = cbor2.dumps("ts") + b"\x1b"  # + 8-byte ts
_SEQ_KEY = cbor2.dumps("seq")
_POINT_KEY = cbor2.dumps("point")
_VALUE_KEY = cbor2.dumps("value")
_UNIT_KEY = cbor2.dumps("unit")
_FLOAT_HEAD = b"\xfb"
# Layouts kept (a layout is one point set with one pattern of value types). Keyed by the point
# set's contents, so a thousand devices of one model share one layout; room for a cabinet of
# distinct small devices, so one message per device never rebuilds its layout (a full cache is
# emptied and refilled).
_CACHE_MAX = 2048

# (names, units, value types, wide seq, wide ints) -> the layout: a Struct and its argument template
_layouts: dict[tuple[tuple[str, ...], tuple[str | None, ...], tuple[type, ...], bool, bool], _Layout] = {}


class _Layout:
    """How one kind of batch is written: ``pack(*args)`` with seq, ts and values put into ``args``."""

    __slots__ = ("args", "n", "pack")

    def __init__(self, names: tuple[str, ...], units: tuple[str | None, ...], types: tuple[type, ...],
                 wide_seq: bool, wide_int: bool) -> None:
        self.n = len(names)
        fmt = [">"]
        args: list[Any] = []
        seq_head, seq_code = (b"\x1b", "Q") if wide_seq else (b"\x1a", "I")
        int_head, int_code = (b"\x1b", "Q") if wide_int else (b"\x1a", "I")
        carry = b""  # the previous reading's unit, written before this reading's map head
        for name, unit, kind in zip(names, units, types, strict=True):
            lead = carry + _map_head(4 if unit is None else 5) + _SEQ_KEY + seq_head
            middle = _POINT_KEY + cbor2.dumps(name) + _VALUE_KEY
            middle += _FLOAT_HEAD if kind is float else int_head
            fmt += [f"{len(lead)}s", seq_code, f"{len(_TS_KEY)}s", "Q", f"{len(middle)}s",
                    "d" if kind is float else int_code]
            args += [lead, 0, _TS_KEY, 0, middle, 0]
            carry = b"" if unit is None else _UNIT_KEY + cbor2.dumps(unit)
        fmt.append(f"{len(carry)}s")
        args.append(carry)
        self.pack: Callable[..., bytes] = struct.Struct("".join(fmt)).pack
        self.args = args

    def write(self, seq0: int, ts: int, values: list[Any]) -> bytes:
        """The readings of one batch, one after the other (struct.error if a value does not fit)."""
        n = self.n
        args = self.args.copy()
        end = 6 * n
        args[1:end:6] = range(seq0, seq0 + n)
        args[3:end:6] = [ts] * n
        args[5:end:6] = values
        return self.pack(*args)


def _map_head(n: int) -> bytes:
    return bytes([0xA0 + n])


def array_head(n: int) -> bytes:
    """The CBOR head of an array of ``n`` items (shortest form, as cbor2 writes it)."""
    if n < 24:
        return bytes([0x80 + n])
    if n < 0x100:
        return bytes([0x98, n])
    if n < 0x10000:
        return b"\x99" + n.to_bytes(2, "big")
    if n < _U32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


def batch_records(batch: StoredBatch) -> bytes | None:
    """The readings of ``batch`` as consecutive CBOR maps, or None when it needs the general path."""
    values = batch.values
    if batch.errors or batch.unsynced is not None or not values:
        return None
    types = tuple(map(type, values))
    try:
        if (total := sum(values)) - total:  # NaN or an infinity somewhere (x - x is 0.0 when finite)
            return None
    except (TypeError, OverflowError):  # a text, a None, an int too big for a float
        return None
    seq0, n = batch.seq0, len(values)
    if not 0 <= batch.ts < _U64 or not seq0 >= 0 or seq0 + n > _U64:
        return None
    wide_seq = seq0 + n > _U32
    for wide_int in (False, True):  # ints in 4 bytes, else (struct.error) in 8
        key = (batch.names, batch.units, types, wide_seq, wide_int)
        layout = _layouts.get(key)
        if layout is None:
            if any(t is not float and t is not int for t in types):  # bool, a float or int subclass...
                return None
            if len(_layouts) >= _CACHE_MAX:
                _layouts.clear()
            layout = _layouts[key] = _Layout(batch.names, batch.units, types, wide_seq, wide_int)
        try:
            return layout.write(seq0, batch.ts, values)
        except struct.error:  # a negative int, or one too big for the head
            continue
    return None


def encode_readable(head: bytes, batches: Sequence[StoredBatch],
                    general: Callable[[Sequence[StoredBatch]], list[dict[str, Any]]]) -> bytes:
    """The readable CBOR message: ``head`` (the map up to its "readings" key), then the readings.

    ``general`` turns batches into reading dicts (gateway.wire.encoding.readings_of), for the batches
    the fast path does not take.
    """
    parts = [head, b""]
    total = 0
    for batch in batches:
        records = batch_records(batch)
        if records is None:
            readings = general([batch])
            records = cbor2.dumps(readings)[len(array_head(len(readings))):]
            total += len(readings)
        else:
            total += len(batch.values)
        parts.append(records)
    parts[1] = array_head(total)
    return b"".join(parts)
