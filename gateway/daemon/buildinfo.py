"""What this gateway was built from: its version, the git commit and the Python running it.

A wheel carries the commit in ``gateway/daemon/build_stamp.py``, written when the wheel is built (setup.py);
a source checkout without one asks ``git describe``. Shown by ``gateway version`` and in the status
document's ``build`` object.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from gateway import __version__

UNKNOWN = "unknown"


def _checkout_commit() -> str:
    """The commit of the git checkout this package is imported from, or ``unknown``."""
    top = Path(__file__).resolve().parents[2]
    if not (top / ".git").exists():
        return UNKNOWN
    try:
        done = subprocess.run(["git", "-C", str(top), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return UNKNOWN
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else UNKNOWN


@functools.cache
def commit() -> str:
    """The git commit this gateway was built from (``-dirty``: with uncommitted changes)."""
    try:
        from gateway.daemon.build_stamp import COMMIT
    except ImportError:
        return _checkout_commit()
    return COMMIT


def build_info() -> dict[str, str]:
    """The status document's ``build`` object."""
    return {"version": __version__, "commit": commit(), "python": platform.python_version()}


def version_line() -> str:
    """One line for ``gateway version`` (and for installers that print what they installed)."""
    info = build_info()
    return f"city-gateway {info['version']} (commit {info['commit']}, Python {info['python']})"
