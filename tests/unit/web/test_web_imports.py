"""A gateway with the page off pays nothing for it: starting the daemon and the cli loads neither
gateway.web nor aiohttp, and the page's plain parts (password file, log ring, history) load no aiohttp."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

PLAIN_PARTS = ("gateway.web.passwd", "gateway.web.logring", "gateway.web.history")


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    return set(done.stdout.split())


def test_the_daemon_and_the_cli_load_no_page_at_start() -> None:
    loaded = loaded_after("import gateway.daemon.daemon, gateway.cli.main\n"
                          "gateway.cli.main.build_parser(['run'])")
    assert "gateway.daemon.daemon" in loaded and "gateway.cli.webcmd" in loaded  # what was imported
    assert {m for m in loaded if m == "aiohttp" or m.startswith(("aiohttp.", "gateway.web"))} == set()


@pytest.mark.parametrize("module", PLAIN_PARTS)
def test_the_pages_plain_parts_load_no_aiohttp(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert {m for m in loaded if m == "aiohttp" or m.startswith("aiohttp.")} == set()
