"""`gateway version` and the status's `build`: the version, the git commit, the Python."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.daemon import buildinfo
from tests.support import REPO


def test_a_checkout_reports_git_describe() -> None:
    # These tests run from the checkout (an editable install: no build stamp), so git is asked.
    described = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert buildinfo.build_info() == {"version": __version__, "commit": described,
                                      "python": platform.python_version()}


def test_gateway_version_prints_one_line_with_all_three() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "version"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    info = buildinfo.build_info()
    assert out == f"city-gateway {__version__} (commit {info['commit']}, Python {platform.python_version()})\n"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildinfo, "__file__", str(tmp_path / "gateway" / "daemon" / "buildinfo.py"))
    assert buildinfo._checkout_commit() == buildinfo.UNKNOWN
