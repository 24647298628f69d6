"""The signed envelope of a fleet request: ``{"body": "<JSON text>", "sig": "<base64 Ed25519 signature>"}``.

The signature covers the UTF-8 bytes of ``body`` exactly as sent, so no JSON canonicalisation is
needed on either side. ``cryptography`` is imported here only; the daemon imports this module only
when ``fleet.enabled``.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_ENVELOPE = 512 * 1024  # bytes; a whole config file, with room to spare


class Refused(Exception):
    """A request refused before anything changed; ``id`` is its id when one could be read."""

    def __init__(self, reason: str, id: str | None = None) -> None:
        super().__init__(reason)
        self.id = id


def keygen() -> tuple[bytes, bytes]:
    """A new key pair as PEM: (private key, PKCS#8 unencrypted; public key, SubjectPublicKeyInfo)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def sign(private_pem: bytes, body: dict[str, Any]) -> dict[str, str]:
    """The envelope of ``body`` signed with the private key ``private_pem``."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    text = json.dumps(body, separators=(",", ":"))
    return {"body": text, "sig": base64.b64encode(key.sign(text.encode("utf-8"))).decode("ascii")}


def load_trust(paths: list[Path]) -> list[Ed25519PublicKey]:
    """The public keys in ``paths`` (PEM); ValueError naming a file that holds no Ed25519 public key."""
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"fleet.trust {path}: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"fleet.trust {path}: not an Ed25519 public key")
        keys.append(key)
    return keys


def open_envelope(payload: bytes, keys: list[Ed25519PublicKey]) -> dict[str, Any]:
    """The body of a request signed by one of ``keys``, or Refused (with the id, if it can be read)."""
    if len(payload) > MAX_ENVELOPE:
        raise Refused(f"request too large ({len(payload)} bytes, at most {MAX_ENVELOPE})")
    try:
        envelope = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"malformed JSON: {exc}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        raise Refused('a request is a signed envelope {"body": "<JSON text>", "sig": "<base64>"}')
    body = _body(envelope["body"])
    id = body.get("id") if isinstance(body.get("id"), str) else None
    sig = envelope.get("sig")
    if not isinstance(sig, str) or not sig:
        raise Refused("the request is not signed (no sig)", id)
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the signature is not base64", id) from None
    data = envelope["body"].encode("utf-8")
    for key in keys:
        try:
            key.verify(raw, data)
            return body
        except InvalidSignature:
            continue
    raise Refused("bad signature: not signed by a key in fleet.trust", id)


def _body(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise Refused(f"malformed JSON in body: {exc}") from None
    if not isinstance(body, dict):
        raise Refused("the body is a JSON object")
    return body
