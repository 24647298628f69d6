"""The group message: the readings of several devices in one telemetry message (``mqtt.batch.devices`` > 1).

Off by default. It goes to ``{topic_prefix}/{gateway.id}/telemetry`` (one level short of a
device's topic, so ``.../+/telemetry`` never matches it) and holds, per device, exactly what that
device's own message would hold::

    {"gateway": ID, "devices": [{"device": NAME, "readings": [...]}, ...]}             # cbor, json
    {"gateway": ID, "packed": 1, "devices": [{"device": NAME, "points": [...],
                                              "units": [...], "batches": [...]}, ...]}  # packed

A device's part is written by the encoder of its own message (gateway.wire.cbor's fast path, the
same reading dicts for JSON, gateway.wire.packed's columns), once per device, and the parts are
joined under the group's head; ``mqtt.compress`` deflates the whole packed message. Decoding is
gateway.wire.encoding's ``decode_telemetry`` and ``split_devices``.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence

import cbor2

from gateway.model import StoredBatch
from gateway.wire.cbor import array_head, encode_readable
from gateway.wire.encoding import Encoding, readings_of
from gateway.wire.packed import packed_columns

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_CBOR_PART_HEAD = b"\xa2" + cbor2.dumps("device")  # + NAME + "readings" + the readings
_READINGS = cbor2.dumps("readings")
_HEADS_KEPT = 4096  # devices whose CBOR entry head is kept (a group message is for many devices)


def encode_part(device: str, batches: Sequence[StoredBatch], fmt: Encoding = "cbor") -> bytes:
    """One device's entry of a group message in ``fmt`` (never deflated: the whole message is)."""
    if fmt == "cbor":
        return encode_readable(_cbor_part_head(device), batches, readings_of)
    if fmt == "json":
        return _dumps({"device": device, "readings": readings_of(batches)}).encode()
    if fmt == "packed":
        return cbor2.dumps({"device": device, **packed_columns(batches)}, canonical=True)
    raise ValueError(f"unknown telemetry encoding {fmt!r} (use cbor, json or packed)")


@functools.lru_cache(maxsize=_HEADS_KEPT)
def _cbor_part_head(device: str) -> bytes:
    """A device's CBOR entry up to its readings: a map of 2, "device", NAME, "readings"."""
    return _CBOR_PART_HEAD + cbor2.dumps(device) + _READINGS


def encode_group(gateway_id: str, parts: Sequence[bytes], fmt: Encoding = "cbor", *, compress: bool = False) -> bytes:
    """The group message of ``parts`` (from ``encode_part``, in the same ``fmt``), in their order."""
    if fmt == "json":
        return b'{"gateway":' + _dumps(gateway_id).encode() + b',"devices":[' + b",".join(parts) + b"]}"
    if fmt == "cbor":
        head = b"\xa2" + cbor2.dumps("gateway") + cbor2.dumps(gateway_id)
    elif fmt == "packed":
        head = b"\xa3" + cbor2.dumps("gateway") + cbor2.dumps(gateway_id) + cbor2.dumps("packed") + b"\x01"
    else:
        raise ValueError(f"unknown telemetry encoding {fmt!r} (use cbor, json or packed)")
    data = b"".join([head, cbor2.dumps("devices"), array_head(len(parts)), *parts])
    return zlib.compress(data, 6) if compress and fmt == "packed" else data


def envelope_bytes(gateway_id: str, fmt: Encoding, parts: int) -> int:
    """At most how many bytes a group message of ``parts`` parts adds to their sum (before deflate)."""
    return len(encode_group(gateway_id, [], fmt)) + 8 + parts  # array head up to 9 bytes; a comma per part
