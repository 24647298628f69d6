"""The telemetry wire format of the platform contract, in CBOR or JSON (same keys).

One message carries readings of one device::

    {"gateway": ID, "device": NAME,
     "readings": [{"seq": N, "ts": MS, "point": NAME, "value": V}, ...]}

A reading has ``"unit"`` when its point has one, and ``"error"`` (a text) with ``"value": None``
when the point could not be read. A float that is NaN or infinite is never sent as a number: it
goes out as ``"value": None, "error": "not a number"``.

This is the hot path of the publisher. CBOR is written a batch at a time by gateway.wire.cbor;
JSON (and the batches that CBOR fast path does not take) build the reading dicts in one loop with
locals, no function call per reading.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import cbor2

from gateway.model import StoredBatch
from gateway.wire.cbor import encode_readable
from gateway.wire.packed import ZLIB_FIRST_BYTE, decode_packed, encode_packed

Encoding = Literal["cbor", "json", "packed"]

NOT_A_NUMBER = "not a number"

_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def readings_of(batches: Sequence[StoredBatch]) -> list[dict[str, Any]]:
    """The reading dicts of ``batches``, in order: per batch, seq ``seq0`` upwards in point order."""
    out: list[dict[str, Any]] = []
    append = out.append
    float_ = float
    for batch in batches:
        seq = batch.seq0
        ts = batch.ts
        names = batch.names
        units = batch.units
        errors = batch.errors
        has_unit = any(u is not None for u in units)
        unsynced = batch.unsynced is not None  # read before the clock synced, sent past the hold limit
        for i, value in enumerate(batch.values):
            reading = {"seq": seq + i, "ts": ts, "point": names[i], "value": value}
            if has_unit and (unit := units[i]) is not None:
                reading["unit"] = unit
            if errors and i in errors:
                reading["value"] = None
                reading["error"] = errors[i]
            # x - x is 0.0 for every finite float and NaN for NaN and +-inf (NaN is truthy).
            elif isinstance(value, float_) and value - value:
                reading["value"] = None
                reading["error"] = NOT_A_NUMBER
            if unsynced:
                reading["synced"] = False
            append(reading)
    return out


def encode_telemetry(
    gateway_id: str, device: str, batches: Sequence[StoredBatch], fmt: Encoding = "cbor", *, compress: bool = False
) -> bytes:
    """One telemetry message for ``device`` carrying every reading of ``batches`` (all of that device).

    ``fmt`` is ``"cbor"``, ``"json"`` (compact, UTF-8) or ``"packed"`` (columnar CBOR, see
    gateway.wire.packed; ``compress`` deflates it). Raises ValueError for another format.
    """
    if fmt == "packed":
        return encode_packed(gateway_id, device, batches, compress=compress)
    if fmt == "cbor":
        return encode_readable(_cbor_head(gateway_id, device), batches, readings_of)
    if fmt == "json":
        doc = {"gateway": gateway_id, "device": device, "readings": readings_of(batches)}
        return _json_dumps(doc).encode()
    raise ValueError(f"unknown telemetry encoding {fmt!r} (use cbor or json)")


# Room for every device of a big cabinet: an evicted head is built again for each of its messages.
@functools.lru_cache(maxsize=4096)
def _cbor_head(gateway_id: str, device: str) -> bytes:
    """The readable CBOR message up to its readings: a map of 3, "gateway", "device", "readings"."""
    return b"\xa3" + b"".join(cbor2.dumps(x) for x in ("gateway", gateway_id, "device", device, "readings"))


def decode_telemetry(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a telemetry (or status) payload, telling JSON from CBOR by its first byte.

    A packed message (deflated or not) comes back in the readable form. A group message
    (``mqtt.batch.devices``, gateway.wire.group) comes back as ``{"gateway", "devices": [...]}``;
    ``split_devices`` turns any decoded message into one-device documents.

    A JSON document starts with ``{`` (after optional white space); the CBOR map this module writes
    starts with a byte in 0xA0..0xBF, never with ``{`` (0x7B) or white space.
    """
    data = bytes(payload)
    if data[:1] == bytes([ZLIB_FIRST_BYTE]):
        return decode_packed(data)
    doc = json.loads(data) if data.lstrip()[:1] == b"{" else cbor2.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"telemetry payload is a {type(doc).__name__}, not a map")
    if doc.get("packed") == 1:
        return decode_packed(data)
    return doc


def split_devices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A decoded telemetry message as one-device documents ``{"gateway", "device", "readings"}``.

    A group message gives one per device, in its order; a one-device message gives itself.
    """
    if "devices" not in doc:
        return [doc]
    gateway = doc.get("gateway")
    return [{"gateway": gateway, "device": part["device"], "readings": part["readings"]} for part in doc["devices"]]


def messages_of(
    batches: Sequence[StoredBatch], max_readings: int
) -> Iterator[tuple[str, list[StoredBatch]]]:
    """Group batches (ascending row) into messages of one device, each in row order.

    A device's batches are taken in order and cut at ``max_readings`` readings; a single batch
    larger than that goes alone. Devices come out in order of their first batch.
    """
    per_device: dict[str, list[StoredBatch]] = {}
    for batch in batches:
        per_device.setdefault(batch.device, []).append(batch)
    for device, device_batches in per_device.items():
        group: list[StoredBatch] = []
        size = 0
        for batch in device_batches:
            n = len(batch.values)
            if group and size + n > max_readings:
                yield device, group
                group, size = [], 0
            group.append(batch)
            size += n
        if group:
            yield device, group
