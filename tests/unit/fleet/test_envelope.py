"""The signed envelope: what verifies, what is refused and why, and that cryptography stays out unless fleet is on."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from gateway.fleet.envelope import Refused, keygen, open_envelope, sign
from tests.support import REPO


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, list]:
    from cryptography.hazmat.primitives import serialization

    private, public = keygen()
    return private, [serialization.load_pem_public_key(public)]


def test_a_signed_body_opens_and_a_changed_byte_does_not(pair: tuple[bytes, list]) -> None:
    private, keys = pair
    envelope = sign(private, {"id": "r-1", "version": 3})
    assert open_envelope(json.dumps(envelope).encode(), keys) == {"id": "r-1", "version": 3}
    tampered = dict(envelope, body=envelope["body"].replace("3", "4"))
    with pytest.raises(Refused, match="bad signature") as info:
        open_envelope(json.dumps(tampered).encode(), keys)
    assert info.value.id == "r-1"  # the answer names the request, even a forged one


def test_a_key_not_trusted_is_refused(pair: tuple[bytes, list]) -> None:
    other, _ = keygen()
    with pytest.raises(Refused, match=r"not signed by a key in fleet\.trust"):
        open_envelope(json.dumps(sign(other, {"id": "r-2"})).encode(), pair[1])


@pytest.mark.parametrize(("payload", "words", "id"), [
    (b"{nope", "malformed JSON", None),
    (b"[1, 2]", "signed envelope", None),
    (json.dumps({"body": "{x", "sig": "AA=="}).encode(), "malformed JSON in body", None),
    (json.dumps({"body": json.dumps({"id": "r-3"})}).encode(), "not signed", "r-3"),
    (json.dumps({"body": json.dumps({"id": "r-4"}), "sig": "not base64!"}).encode(), "not base64", "r-4"),
])
def test_what_is_not_an_envelope_is_refused_with_a_reason(
    pair: tuple[bytes, list], payload: bytes, words: str, id: str | None
) -> None:
    with pytest.raises(Refused, match=words) as info:
        open_envelope(payload, pair[1])
    assert info.value.id == id


def test_the_signature_covers_the_body_text_exactly(pair: tuple[bytes, list]) -> None:
    """Same JSON, other spacing: another text, so not what was signed."""
    private, keys = pair
    envelope = sign(private, {"id": "r-5"})
    respaced = {"body": json.dumps(json.loads(envelope["body"]), indent=1), "sig": envelope["sig"]}
    with pytest.raises(Refused):
        open_envelope(json.dumps(respaced).encode(), keys)
    assert base64.b64decode(envelope["sig"])  # base64, as the contract says


def test_the_daemon_with_fleet_off_does_not_import_cryptography() -> None:
    code = ("import sys, gateway.daemon.daemon, gateway.cli.main, gateway.publish.publisher;"
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
