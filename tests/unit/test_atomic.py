"""The one atomic file write (gateway.atomic), as the seq marks and the last-good config use it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.atomic import write_atomic
from gateway.buffer.seqfile import load_marks, save_marks
from gateway.config import lastgood


def test_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_write_that_fails_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    (tmp_path / "state.json.tmp").mkdir()  # the temporary file cannot be created
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"


def test_modes_are_those_each_caller_needs(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        lastgood.save(tmp_path, "gateway: {id: gw1}\n")
        save_marks(tmp_path / "seq.json", {"dev1": 7})
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(umask)
    assert (tmp_path / lastgood.FILE_NAME).stat().st_mode & 0o777 == 0o600  # may hold a password
    assert (tmp_path / "seq.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644
    assert load_marks(tmp_path / "seq.json") == {"dev1": 7}
    assert not list(tmp_path.glob("*.tmp"))
