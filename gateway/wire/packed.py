"""The packed telemetry format, for metered links: CBOR, columnar, deltas; optionally deflated.

Same readings as the readable format, in fewer bytes: point names and units once per message, one
entry per poll batch with its seq and timestamp as deltas, and the values in an array::

    {"gateway": ID, "device": NAME, "packed": 1,
     "points": [NAME, ...],              # every point name the message uses, once
     "units":  [UNIT or null, ...],      # parallel to "points"
     "batches": [[dseq, dts, idx, values, errors], ...]}

A batch's first reading has seq ``prev + dseq`` (``prev`` = the seq after the previous batch's last
reading, 0 before the first batch, so the first dseq is the absolute seq) and its readings count up
by one in order; its ``ts`` is ``prev_ts + dts`` (prev_ts 0 before the first). ``idx`` lists the
index into ``points`` of each value, or is null when the batch has every point in ``points``
order. ``errors`` is null or a map {position in values: text} (value null there).
Floats use the shortest CBOR float that keeps the value exactly.

With ``mqtt.compress: true`` the CBOR bytes are deflated (zlib format, RFC 1950): the payload then
starts with byte 0x78, which neither CBOR maps nor JSON start with.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import cbor2

from gateway.model import StoredBatch

ZLIB_FIRST_BYTE = 0x78
NOT_A_NUMBER = "not a number"


def encode_packed(gateway_id: str, device: str, batches: Sequence[StoredBatch], *, compress: bool = False) -> bytes:
    """One packed message for ``device`` (see the module docstring)."""
    doc = {"gateway": gateway_id, "device": device, "packed": 1, **packed_columns(batches)}
    data = cbor2.dumps(doc, canonical=True)
    return zlib.compress(data, 6) if compress else data


def packed_columns(batches: Sequence[StoredBatch]) -> dict[str, Any]:
    """The columns of one device's readings: ``points``, ``units`` and ``batches`` (module docstring)."""
    index: dict[str, int] = {}
    names: list[str] = []
    units: list[str | None] = []
    out: list[list[Any]] = []
    prev_seq = prev_ts = 0
    for batch in batches:
        idx = _indexes(batch, index, names, units)
        values, errors = _clean(batch)
        entry = [batch.seq0 - prev_seq, batch.ts - prev_ts, idx, values, errors]
        if batch.unsynced is not None:
            entry.append(False)  # "synced": false on each of its readings
        out.append(entry)
        prev_seq, prev_ts = batch.seq0 + len(batch.values), batch.ts
    return {"points": names, "units": units, "batches": out}


def _indexes(batch: StoredBatch, index: dict[str, int], names: list[str], units: list[str | None]) -> list[int] | None:
    positions = []
    for name, unit in zip(batch.names, batch.units, strict=True):
        at = index.get(name)
        if at is None:
            at = index[name] = len(names)
            names.append(name)
            units.append(unit)
        positions.append(at)
    if positions == list(range(len(names))) and len(positions) == len(names):
        return None
    return positions


def _clean(batch: StoredBatch) -> tuple[list[Any], dict[int, str] | None]:
    """Values with failed points nulled, and NaN/inf turned into errors (never sent as numbers)."""
    values = batch.values
    errors = dict(batch.errors) if batch.errors else {}
    if errors or any(isinstance(v, float) and v - v for v in values):
        values = list(values)
        for i, v in enumerate(values):
            if i in errors:
                values[i] = None
            elif isinstance(v, float) and v - v:
                values[i] = None
                errors[i] = NOT_A_NUMBER
    return values, errors or None


def decode_packed(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Unpack a packed message (deflated or not) into the readable form of the contract.

    A group message (``"devices"``, see gateway.wire.group) comes back as a readable group message.
    """
    data = bytes(payload)
    if data[:1] == bytes([ZLIB_FIRST_BYTE]):
        data = zlib.decompress(data)
    doc = cbor2.loads(data)
    if "devices" in doc:
        return {"gateway": doc["gateway"],
                "devices": [{"device": part["device"], "readings": _readings(part)} for part in doc["devices"]]}
    return {"gateway": doc["gateway"], "device": doc["device"], "readings": _readings(doc)}


def _readings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The readable readings of one device's columns (``points``, ``units``, ``batches``)."""
    names, units = doc["points"], doc["units"]
    readings: list[dict[str, Any]] = []
    seq = ts = 0
    for dseq, dts, idx, values, errors, *synced in doc["batches"]:
        seq, ts = seq + dseq, ts + dts
        positions = idx if idx is not None else range(len(values))
        for k, (at, value) in enumerate(zip(positions, values, strict=True)):
            reading: dict[str, Any] = {"seq": seq + k, "ts": ts, "point": names[at], "value": value}
            if units[at] is not None:
                reading["unit"] = units[at]
            if errors and k in errors:
                reading["error"] = errors[k]
            if synced:
                reading["synced"] = False
            readings.append(reading)
        seq += len(values)
    return readings
