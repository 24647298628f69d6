"""A socat pty pair: two linked pseudo-terminals standing in for the two ends of a serial line.

Usage::

    pty = SerialPty(tmp_path)          # links tmp_path/ttyA and tmp_path/ttyB
    pty.start()                        # returns once both links exist
    ... a server on pty.a, a client on pty.b ...
    pty.stop()                         # socat ends, both links disappear (an unplugged adapter)
    pty.start()                        # the same link names again (plugged back in)
    pty.stop()

Also a context manager. ``stop`` is idempotent and never leaves socat running. Waits poll for a
condition with a deadline; nothing sleeps a guessed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from tests.support.wait import wait_until

WAIT = 5.0  # seconds to wait for socat to make or remove its links
POLL = 0.005


class SerialPty:
    """``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B``, started and stopped on demand."""

    def __init__(self, directory: str | Path, names: tuple[str, str] = ("ttyA", "ttyB")) -> None:
        self.directory = Path(directory)
        self.a = self.directory / names[0]
        self.b = self.directory / names[1]
        self.log = self.directory / f"socat-{names[0]}-{names[1]}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while socat runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> SerialPty:
        """Start socat and wait until both links exist."""
        if self.running:
            raise RuntimeError("socat is already running")
        binary = shutil.which("socat")
        if binary is None:
            raise RuntimeError("socat is not installed: sudo apt-get install socat")
        self.directory.mkdir(parents=True, exist_ok=True)
        ends = [f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen([binary, "-d", "-d", *ends], stdout=subprocess.DEVNULL, stderr=log)
        proc = self._proc

        def linked() -> bool:
            if proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"socat exited early: {self.log.read_text(errors='replace')[-500:]}")
            return self.a.exists() and self.b.exists()

        try:
            wait_until(linked, WAIT, "socat to make both links", every=POLL)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop socat (SIGTERM, then SIGKILL) and wait until both links are gone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT)
        try:
            wait_until(lambda: not (self.a.is_symlink() or self.b.is_symlink()), WAIT, "socat's links gone",
                       every=POLL)
        except AssertionError:  # socat killed hard leaves its links behind
            for link in (self.a, self.b):
                if link.is_symlink():
                    os.unlink(link)

    def __enter__(self) -> SerialPty:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
