"""The `web:` section: off by default, always a password, no wildcard unless written, tls for writes off loopback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import listen_address
from gateway.web.passwd import hash_password
from tests.support.gateway_proc import run_cli

BASE = """\
gateway: {id: gw-1, data_dir: /tmp/gw}
mqtt: {host: 127.0.0.1}
"""


def load(tmp_path: Path, web: str) -> object:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + textwrap.dedent(web))
    return load_config(path)


def problems(tmp_path: Path, web: str) -> str:
    with pytest.raises(ConfigFileError) as info:
        load(tmp_path, web)
    return str(info.value)


def test_the_page_is_off_by_default_and_listens_on_loopback_only_when_enabled(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.web.enabled is False and config.web.listen == ["127.0.0.1:8080"] and config.web.writes is False


def test_an_enabled_page_without_a_password_file_is_an_error_naming_the_field(tmp_path: Path) -> None:
    text = problems(tmp_path, "web: {enabled: true}\n")
    assert "gateway.yaml:3: web: web.password_file is required when the page is enabled" in text


def test_a_missing_password_file_is_an_error_naming_the_field(tmp_path: Path) -> None:
    text = problems(tmp_path, f"web: {{enabled: true, password_file: {tmp_path}/nope}}\n")
    assert f"web.password_file: cannot read {tmp_path}/nope: no such file" in text


def test_writes_on_a_non_loopback_address_need_tls(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    text = problems(tmp_path, f"""\
        web: {{enabled: true, password_file: {tmp_path}/pw, listen: ["0.0.0.0:8080"], writes: true}}
        """)
    assert "writes: true needs tls on a non-loopback address (0.0.0.0:8080)" in text
    config = load(tmp_path, f"web: {{enabled: true, password_file: {tmp_path}/pw, listen: ['[::1]:80'], writes: true}}")
    assert config.web.open_addresses() == []


@pytest.mark.parametrize("bad", ["8080", "localhost:8080", "*:8080", "127.0.0.1:0", "127.0.0.1:http"])
def test_listen_takes_ip_addresses_with_ports_only(tmp_path: Path, bad: str) -> None:
    (tmp_path / "pw").write_text("x")
    text = problems(tmp_path, f"web: {{enabled: true, password_file: {tmp_path}/pw, listen: ['{bad}']}}")
    assert "web.listen" in text


def test_listen_address_parses_v4_and_v6() -> None:
    assert listen_address("10.0.0.2:8443") == ("10.0.0.2", 8443)
    assert listen_address("[::1]:8080") == ("::1", 8080)


def test_check_warns_about_a_non_loopback_page_without_tls(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(hash_password("secret") + "\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + f"web: {{enabled: true, password_file: {tmp_path}/pw, listen: ['0.0.0.0:8080']}}\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning: web.listen: 0.0.0.0:8080 is reachable from other machines without web.tls" in result.stderr
    path.write_text(BASE + f"web: {{enabled: true, password_file: {tmp_path}/pw}}\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0 and "warning" not in result.stderr


def test_check_refuses_a_malformed_password_file_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")  # a password in clear, not a hash
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + f"web: {{enabled: true, password_file: {tmp_path}/pw}}\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2 and "OK" not in result.stdout
    assert f"web.password_file: {tmp_path}/pw: malformed password file" in result.stderr
    assert "secret" not in result.stderr


def test_a_changed_web_section_waits_for_a_restart(tmp_path: Path) -> None:
    from dataclasses import replace

    from gateway.config.settings import WebSection
    from gateway.daemon.reload import diff

    old = load(tmp_path, "")
    new = replace(old, web=WebSection(listen=["127.0.0.1:8081"]))
    assert diff(old, new).restart_pending == ["web"]
    assert diff(old, old).restart_pending == []
