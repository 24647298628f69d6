"""tests/support/needs.py: a test missing a command skips on a developer's machine and fails in CI."""

from __future__ import annotations

import shutil

import pytest

from tests.support.needs import have_tool, require_tool

ABSENT = "no-such-command-7f3a"


def test_a_missing_command_skips_without_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not installed \\(apt-get install pkg\\)"):
        require_tool(ABSENT, "pkg")
    assert have_tool(ABSENT, "pkg") is False


def test_a_missing_command_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI is set and {ABSENT} is not installed.*make system-deps"):
        require_tool(ABSENT, "pkg")
    with pytest.raises(pytest.fail.Exception):
        have_tool(ABSENT, "pkg")


def test_a_present_command_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_tool("sh", "dash") == shutil.which("sh") and have_tool("sh", "dash") is True
    assert require_tool("mosquitto", "mosquitto").endswith("/mosquitto")  # found in /usr/sbin too
