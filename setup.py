"""The one build step pyproject.toml cannot say: record the git commit in the wheel.

``gateway/daemon/build_stamp.py`` (``COMMIT = "..."``) is written into the build directory, never into the
source tree, so a checkout keeps asking git (gateway/daemon/buildinfo.py) and a wheel says what it was built
from. Outside a git checkout (an sdist) the commit is ``unknown``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


class BuildPyWithStamp(build_py):
    """build_py, plus gateway/daemon/build_stamp.py in the build directory."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install imports the checkout, which asks git itself
        stamp = Path(self.build_lib) / "gateway" / "daemon" / "build_stamp.py"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f'"""Written by setup.py when this wheel was built."""\n\nCOMMIT = {_git_commit()!r}\n')


setup(cmdclass={"build_py": BuildPyWithStamp})
