"""Secrets at rest: mqtt.password_file, TLS file checks, and the warning about files others can read."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest

from gateway.config.load import ConfigFileError, load_config
from gateway.config.secrets import read_secret_file, readable_by_others, warn_exposed_secrets

SECRET = "s3cr3t-Pa55"


def write(path: Path, mqtt_extra: str = "", mode: int = 0o640) -> Path:
    """A minimal config with ``mqtt_extra`` lines (already indented by two) under mqtt:."""
    path.write_text(textwrap.dedent("""\
        gateway:
          id: gw-1
          data_dir: /tmp/gw-1
        mqtt:
          host: broker.example.org
        """) + mqtt_extra)
    path.chmod(mode)
    return path


def problems(path: Path, **kw: object) -> str:
    with pytest.raises(ConfigFileError) as info:
        load_config(path, **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_read_secret_file_drops_the_trailing_newline_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(f" {SECRET} \n")
    assert read_secret_file(tmp_path / "pw") == f" {SECRET} "
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_secret_file(tmp_path / "empty")


def test_password_file_is_read_at_each_call(tmp_path: Path) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text(SECRET + "\n")
    config = load_config(write(tmp_path / "gateway.yaml", f"  username: gw\n  password_file: {pw}\n"))
    assert config.mqtt.secret_password() == SECRET
    pw.write_text("rotated\n")  # a new password takes effect at the next connection attempt
    assert config.mqtt.secret_password() == "rotated"
    pw.unlink()
    with pytest.raises(OSError, match=r"mqtt\.password_file"):
        config.mqtt.secret_password()


def test_password_from_env_is_a_secret_str(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "gateway.yaml", "  password: ${MQTT_PASSWORD}\n"),
                         environ={"MQTT_PASSWORD": SECRET})
    assert config.mqtt.secret_password() == SECRET
    assert SECRET not in repr(config) and SECRET not in str(config.mqtt)


def test_missing_password_file_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    text = problems(write(tmp_path / "gateway.yaml", f"  password_file: {tmp_path}/nope\n"))
    assert text == f"{tmp_path}/gateway.yaml:6: mqtt.password_file: cannot read the password file {tmp_path}/nope: " \
                   "No such file or directory"


def test_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    assert "is empty" in problems(write(tmp_path / "gateway.yaml", f"  password_file: {tmp_path}/pw\n"))


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    text = problems(write(tmp_path / "gateway.yaml", f"  password: other\n  password_file: {tmp_path}/pw\n"))
    assert "password or password_file, not both" in text
    assert SECRET not in text and "other" not in text


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    text = problems(write(tmp_path / "gateway.yaml", f"  tls:\n    ca_file: {tmp_path}/ca.pem\n"))
    assert f"mqtt.tls: cannot read ca_file {tmp_path}/ca.pem: no such file" in text
    (tmp_path / "client.key").write_text("key")
    text = problems(write(tmp_path / "gateway.yaml", f"  tls:\n    key_file: {tmp_path}/client.key\n"))
    assert "key_file needs cert_file" in text


@pytest.mark.parametrize(("mode", "exposed"), [(0o644, True), (0o640, False), (0o600, False), (0o604, True)])
def test_readable_by_others(tmp_path: Path, mode: int, exposed: bool) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(mode)
    assert readable_by_others(path) is exposed
    assert readable_by_others(tmp_path / "missing") is False


def test_warns_once_per_exposed_file_naming_it_and_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.config.secrets")
    pw = tmp_path / "mqtt-password"
    pw.write_text(SECRET)
    pw.chmod(0o640)
    path = write(tmp_path / "gateway.yaml", f"  password_file: {pw}\n", mode=0o644)
    config = load_config(path)
    assert warn_exposed_secrets(config) == [path]
    [record] = caplog.records
    message = record.getMessage()
    assert str(path) in message and "chmod 640" in message and "0644" in message
    assert SECRET not in message

    caplog.clear()
    path.chmod(0o640)
    pw.chmod(0o644)
    assert warn_exposed_secrets(config) == [pw]
    assert "mqtt.password_file" in caplog.records[0].getMessage()


def test_no_warning_for_a_private_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert warn_exposed_secrets(load_config(write(tmp_path / "gateway.yaml"))) == []
    assert not caplog.records


@pytest.mark.skipif(os.geteuid() == 0, reason="as root (CAP_DAC_OVERRIDE) a mode-000 file is still readable: "
                    "no permission error to name")
def test_unreadable_password_file_names_the_reason(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    (tmp_path / "pw").chmod(0)
    assert "Permission denied" in problems(write(tmp_path / "gateway.yaml", f"  password_file: {tmp_path}/pw\n"))
