"""What a test needs from the machine (a command, a mount, a package index): skip without it on a
developer's machine, but FAIL where the environment variable CI is set.

A skipped test passes in CI without testing anything; `make system-deps` installs every command the
tests use, so in CI a missing one is a broken set-up, not a reason to skip. Skips that depend on
the kernel, the platform or running as root are not this: they say so with ``pytest.skip``.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SBIN = "/usr/sbin:/sbin"  # where some commands live, outside a user's PATH


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}: `make system-deps` installs what the tests need", pytrace=False)
    pytest.skip(reason)


def require_tool(command: str, package: str) -> str:
    """The path of ``command``; the test is unavailable without it (Debian package ``package``)."""
    path = shutil.which(command) or shutil.which(command, path=SBIN)
    if path is None:
        unavailable(f"{command} is not installed (apt-get install {package})")
    return path


def have_tool(command: str, package: str) -> bool:
    """Whether ``command`` is there, for a check a test makes only where it is; missing under CI fails."""
    if shutil.which(command) or shutil.which(command, path=SBIN):
        return True
    if os.environ.get("CI"):
        unavailable(f"{command} is not installed (apt-get install {package})")
    return False
