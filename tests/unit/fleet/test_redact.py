"""Secrets never leave: get's YAML masks literal secrets, keeps ${ENV} and password_file as written;
a pushed "***" keeps the running value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from gateway.config.load import load_config
from gateway.fleet.redact import has_mask, keep_current, redacted_yaml, secret_paths, secret_values

SECRET = "Lit3ral-pw"


def _config(tmp_path: Path, mqtt: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent("""\
        gateway: {id: gw-1, data_dir: /tmp/gw-1}
        mqtt:
          host: broker.example.org
        """) + mqtt + textwrap.dedent("""\
        devices:
          - {name: a, driver: simulated, points: [{name: n, signal: counter}]}
        """))
    return path


def test_a_literal_password_is_masked_and_nothing_else_changes(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, f"  username: gw\n  password: {SECRET}\n"))
    assert secret_paths(config) == [("mqtt", "password")] and secret_values(config) == [SECRET]
    text = redacted_yaml(config)
    assert SECRET not in text
    data = yaml.safe_load(text)
    assert data["mqtt"] == {"host": "broker.example.org", "username": "gw", "password": "***"}
    assert data["devices"][0]["name"] == "a"


def test_env_references_and_password_files_stay_as_written(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "  password: ${PW}\n"), environ={"PW": SECRET})
    assert yaml.safe_load(redacted_yaml(config))["mqtt"]["password"] == "${PW}"
    (tmp_path / "pw").write_text(SECRET)
    config = load_config(_config(tmp_path, f"  password_file: {tmp_path / 'pw'}\n"))
    text = redacted_yaml(config)
    assert SECRET not in text and yaml.safe_load(text)["mqtt"]["password_file"] == str(tmp_path / "pw")


def test_a_pushed_mask_keeps_the_running_value_and_devices_match_by_name() -> None:
    current = {"mqtt": {"password": SECRET}, "devices": [{"name": "a", "key": "k-a"}, {"name": "b", "key": "k-b"}]}
    pushed = {"mqtt": {"password": "***"}, "devices": [{"name": "b", "key": "***"}, {"name": "c", "key": "new"}]}
    assert has_mask(pushed)
    assert keep_current(pushed, current) == []
    assert pushed == {"mqtt": {"password": SECRET},
                      "devices": [{"name": "b", "key": "k-b"}, {"name": "c", "key": "new"}]}
    assert not has_mask(pushed)


def test_a_mask_with_nothing_to_keep_is_named() -> None:
    pushed = {"mqtt": {"password": "***", "client_id": "***"}, "devices": [{"name": "z", "key": "***"}]}
    missing = keep_current(pushed, {"mqtt": {"password": SECRET}, "devices": [{"name": "a", "key": "k"}]})
    assert missing == ["mqtt.client_id", "devices[0].key"]
