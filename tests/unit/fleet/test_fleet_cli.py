"""`gateway fleet keygen` and `gateway fleet sign`: the envelope they print opens with the public key they wrote."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.fleet.envelope import load_trust, open_envelope


def test_keygen_then_sign_makes_an_envelope_the_gateway_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "keygen", str(tmp_path / "fleet")]) == 0
    assert os.stat(tmp_path / "fleet.key").st_mode & 0o077 == 0  # the private key is its owner's alone
    assert main(["fleet", "keygen", str(tmp_path / "fleet")]) == 1  # never overwritten
    (tmp_path / "new.yaml").write_text("gateway: {id: gw-1}\n")
    capsys.readouterr()
    assert main(["fleet", "sign", "--key", str(tmp_path / "fleet.key"), "--gateway", "gw-1", "--config",
                 str(tmp_path / "new.yaml"), "--version", "8", "--expect", "abc", "--ttl", "5m", "--id", "r-1"]) == 0
    envelope = capsys.readouterr().out
    body = open_envelope(envelope.encode(), load_trust([tmp_path / "fleet.pub"]))
    assert body["gateway"] == "gw-1" and body["version"] == 8 and body["expect"] == "abc" and body["id"] == "r-1"
    assert body["config"] == "gateway: {id: gw-1}\n"
    assert abs(body["expires"] - (time.time() + 300) * 1000) < 60_000
    assert main(["fleet", "sign", "--key", str(tmp_path / "fleet.key"), "--gateway", "gw-1"]) == 2  # a push needs more
    assert main(["fleet", "sign", "--key", str(tmp_path / "fleet.key"), "--gateway", "gw-1", "--get"]) == 0
    assert set(json.loads(json.loads(capsys.readouterr().out.splitlines()[-1])["body"])) == {"gateway", "id", "expires"}
