"""The page's password file: salted scrypt lines that verify, and errors that never show the content."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from gateway.web.passwd import (
    COST_N,
    COST_P,
    COST_R,
    HASH_BYTES,
    MAX_LINE,
    SALT_BYTES,
    PasswordFileError,
    hash_password,
    read_hash,
    verify,
)

SECRET = "hunter2"  # in every malformed file below: no error may repeat it


def test_a_hash_verifies_its_password_only() -> None:
    line = hash_password("correct horse")
    assert verify(line, "correct horse")
    assert not verify(line, "correct hors")
    assert not verify(line, "")
    assert verify(hash_password("ünïcode ☃"), "ünïcode ☃")


def test_the_line_says_its_cost_and_every_hash_has_its_own_salt() -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", COST_N, COST_R, COST_P)
    assert len(base64.b64decode(salt)) == SALT_BYTES and len(base64.b64decode(digest)) == HASH_BYTES
    assert "\n" not in first and "same" not in first


def test_a_line_of_another_cost_still_verifies() -> None:
    """A file written with other parameters (a later, dearer default) verifies with its own."""
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=4, p=2, dklen=24)
    line = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify(line, "pw") and not verify(line, "pW")


def test_read_hash_returns_the_line_of_a_written_file(tmp_path: Path) -> None:
    line = hash_password("pw")
    (tmp_path / "web.passwd").write_text(line + "\n")
    assert read_hash(tmp_path / "web.passwd") == line


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError) as err:
        read_hash(tmp_path / "web.passwd")
    assert str(err.value) == (f"{tmp_path}/web.passwd: no such password file "
                              f"(create it with: gateway web passwd --file {tmp_path}/web.passwd)")


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    (tmp_path / "web.passwd").mkdir()  # root reads any file: a directory is what even root cannot read
    with pytest.raises(PasswordFileError, match=r"web.passwd: cannot read the password file: Is a directory"):
        read_hash(tmp_path / "web.passwd")


@pytest.mark.parametrize(("content", "reason"), [
    (SECRET, "not one line scrypt"),
    ("", "not one line scrypt"),
    (f"scrypt$16384$8$1${SECRET}$aGFzaGhhc2hoYXNoaGFzaA==", "not one line scrypt"),
    (f"bcrypt$16384$8$1$c2FsdHNhbHQ=${SECRET}", "not one line scrypt"),
    (f"scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==\n{SECRET}", "not one line scrypt"),
    (f"scrypt$1000$8$1$c2FsdHNhbHRz$aGFzaGhhc2hoYXNoaGFzaA==#{SECRET}", "not one line scrypt"),
    ("scrypt$1000$8$1$c2FsdHNhbHRz$aGFzaGhhc2hoYXNoaGFzaA==", "cost out of bounds"),
    ("scrypt$1073741824$8$1$c2FsdHNhbHRz$aGFzaGhhc2hoYXNoaGFzaA==", "cost out of bounds"),
    ("scrypt$1048576$32$1$c2FsdHNhbHRz$aGFzaGhhc2hoYXNoaGFzaA==", "more than 256 MiB"),
    ("scrypt$16384$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==", "salt or hash too short"),
    (f"{SECRET} ☃", "not one line scrypt"),
    ("x" * (MAX_LINE + 1), "longer than 512 bytes"),
], ids=["plain", "empty", "bad-base64", "other-scheme", "two-lines", "trailing", "n-not-power-of-2", "n-huge",
        "memory-huge", "short-salt", "not-ascii", "too-long"])
def test_a_malformed_file_is_named_without_its_content(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "web.passwd").write_text(content)
    with pytest.raises(PasswordFileError) as err:
        read_hash(tmp_path / "web.passwd")
    message = str(err.value)
    assert message.startswith(f"{tmp_path}/web.passwd: ") and reason in message
    assert SECRET not in message and "c2Fsd" not in message and "xxxx" not in message
    assert err.value.__context__ is None or err.value.__suppress_context__  # no chained error quoting it


def test_verify_refuses_a_ruinous_cost_without_computing_it() -> None:
    start = time.monotonic()
    with pytest.raises(ValueError, match="cost"):
        verify("scrypt$1048576$32$16$c2FsdHNhbHRz$aGFzaGhhc2hoYXNoaGFzaA==", "pw")
    assert time.monotonic() - start < 0.5  # scrypt at that cost would take minutes and 4 GiB
