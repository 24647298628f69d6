"""The corpus of broken configs: tests/cases/<name>/config.yaml must be rejected with error.txt.

Each non-empty line of ``error.txt`` must be contained in one line of the rendered error, so a
case pins ``file:line: path: message`` (or a prefix of it). An optional ``env`` file holds
``NAME=value`` lines: the whole environment the config sees. A case without ``config.yaml``
tests the missing file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.load import ConfigFileError, load_config
from tests.support import REPO

CASES = REPO / "tests" / "cases"


def _case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "error.txt").is_file())


def _environ(case: Path) -> dict[str, str]:
    env_file = case / "env"
    if not env_file.is_file():
        return {}
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return {name.strip(): value for name, value in pairs}


def test_corpus_is_large_enough() -> None:
    assert len(_case_names()) >= 20


@pytest.mark.parametrize("name", _case_names())
def test_broken_config_is_rejected(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES / name
    monkeypatch.chdir(case)  # messages name the file as given: "config.yaml"
    with pytest.raises(ConfigFileError) as caught:
        load_config("config.yaml", environ=_environ(case))
    rendered = str(caught.value)
    lines = rendered.splitlines()
    assert lines and all(line.startswith("config.yaml") for line in lines), rendered
    assert "Traceback" not in rendered
    for expected in (case / "error.txt").read_text().splitlines():
        if expected.strip():
            assert any(expected in line for line in lines), f"{expected!r} not in:\n{rendered}"
    assert len(caught.value.problems) == len(lines)
