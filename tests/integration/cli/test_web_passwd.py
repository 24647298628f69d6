"""`gateway web passwd --file PATH` as a technician runs it: the real command, the password on
standard input (piped, or typed at a terminal without echo), the file written atomically, 0640."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from gateway.web.passwd import read_hash, verify
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

COMMAND = [sys.executable, "-m", "gateway.cli", "web", "passwd", "--file"]


def passwd(path: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, str(path)], input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


def test_a_piped_password_is_written_as_a_hash_readable_by_owner_and_group(tmp_path: Path) -> None:
    path = tmp_path / "web.passwd"
    done = passwd(path, "s3cret pass\n")
    assert done.returncode == 0, done.stderr
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert verify(read_hash(path), "s3cret pass") and not verify(read_hash(path), "s3cret pass\n")
    assert "s3cret" not in path.read_text() + done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["web.passwd"]  # no temporary file left


def test_a_new_password_replaces_the_old_and_keeps_the_files_group(tmp_path: Path) -> None:
    path = tmp_path / "web.passwd"
    assert passwd(path, "first\n").returncode == 0
    if os.geteuid() == 0:  # as root: the group the gateway reads the file as survives the change
        os.chown(path, -1, 4242)
    assert passwd(path, "second\r\n").returncode == 0
    assert verify(read_hash(path), "second") and not verify(read_hash(path), "first")
    if os.geteuid() == 0:
        assert path.stat().st_gid == 4242


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_an_empty_password_is_refused_and_nothing_written(tmp_path: Path, stdin: str) -> None:
    done = passwd(tmp_path / "web.passwd", stdin)
    assert done.returncode == 2
    assert "empty password refused" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_an_error_naming_the_file(tmp_path: Path) -> None:
    done = passwd(tmp_path / "missing-dir" / "web.passwd", "pw\n")
    assert done.returncode == 1
    assert f"{tmp_path}/missing-dir/web.passwd: No such file or directory" in done.stderr


class Terminal:
    """The command with a pseudo-terminal as its controlling terminal and stdin/stdout/stderr."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()

        def take_terminal() -> None:  # in the child, after setsid: make the pty its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=take_terminal)
        os.close(slave)
        self.seen = b""

    def read_until(self, text: bytes) -> None:
        def arrived() -> bool:
            if select.select([self.master], [], [], 0)[0]:
                with contextlib.suppress(OSError):  # EIO: the command has ended and closed the terminal
                    self.seen += os.read(self.master, 4096)
            return text in self.seen

        wait_until(arrived, 20, lambda: f"{text!r} on the terminal, saw {self.seen!r}", every=0.02)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> int:
        status = self.proc.wait(timeout=20)
        os.close(self.master)
        return status


def at_terminal(path: Path, first: bytes, again: bytes, until: bytes) -> tuple[int, bytes]:
    """Run the command at a terminal, type ``first`` and ``again`` when asked, and wait for ``until``:
    (its exit status, all the terminal showed)."""
    term = Terminal([*COMMAND, str(path)])
    try:
        term.read_until(b"New password: ")
        term.type(first + b"\n")
        term.read_until(b"Again: ")
        term.type(again + b"\n")
        term.read_until(until)
    finally:
        status = term.close()
    return status, term.seen


def test_at_a_terminal_the_password_is_asked_twice_without_echo(tmp_path: Path) -> None:
    status, seen = at_terminal(tmp_path / "web.passwd", b"typed-secret", b"typed-secret", b"written (mode 640)")
    assert status == 0
    assert b"typed-secret" not in seen
    assert verify(read_hash(tmp_path / "web.passwd"), "typed-secret")


def test_at_a_terminal_two_different_entries_write_nothing(tmp_path: Path) -> None:
    status, _ = at_terminal(tmp_path / "web.passwd", b"one", b"two", b"the passwords differ; nothing written")
    assert status == 2
    assert list(tmp_path.iterdir()) == []
