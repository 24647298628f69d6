"""Is the wall clock right? Boards without a battery-backed clock boot with a plausible but wrong time.

Raspberry Pi OS restores the last shutdown time at boot, and NTP may take minutes over a cellular
link. Readings taken meanwhile carry their monotonic time and the boot id; the publisher holds
them back, corrects their ``ts`` when the clock syncs (same boot: ``ts = now - (mono_now -
mono_read)``), and past the hold limit sends them with ``"synced": false``.

How the state is read (``gateway.clock.check``):
- ``timesyncd``: systemd-timesyncd touches ``/run/systemd/timesync/synchronized`` once synced
  (readable under ``ProtectClock=``, which forbids adjtimex).
- ``kernel``: the kernel's own flag (adjtimex with no change requested: STA_UNSYNC / TIME_ERROR).
- ``auto`` (default): timesyncd's file when timesyncd runs on the board, else the clock is trusted.
- ``off``: always trusted (a board with a real-time clock).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from gateway.model import StoredBatch

log = logging.getLogger(__name__)

TIMESYNC_FILE = Path("/run/systemd/timesync/synchronized")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
Check = Literal["auto", "timesyncd", "kernel", "off"]

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def boot_id() -> str:
    """This boot's id (monotonic times of another boot cannot be compared with ours)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h> on Linux: the fields up to "tai", then reserved space.
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Looked up once: find_library runs `ldconfig -p` in a subprocess, far too slow for each check.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def kernel_synced() -> bool | None:
    """The kernel's sync flag; None when it cannot be read (e.g. under systemd's ProtectClock=)."""
    libc = _libc()
    if libc is None:
        return None
    try:
        timex = _Timex()  # modes = 0: read only
        state = libc.adjtimex(ctypes.byref(timex))
    except AttributeError:
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


class WallClock:
    """Answers "is the wall clock synchronized?", re-checked at most once a second."""

    def __init__(self, check: Check = "auto", *, synced_file: Path = TIMESYNC_FILE, hold: float = 600.0) -> None:
        self.check = check
        self.synced_file = synced_file
        self.hold = hold  # seconds an unsynced reading may wait for the clock before it goes out as is
        self.boot = boot_id()
        self._state = True
        self._checked = -1e18
        self._warned = False

    def synced(self) -> bool:
        if time.monotonic() - self._checked >= 1.0:
            return self.refresh()
        return self._state

    def refresh(self) -> bool:
        """Look at the clock's state now (``synced`` looks at most once a second)."""
        self._checked = time.monotonic()
        state = self._probe()
        if state != self._state:
            log.warning("wall clock %s", "synchronized" if state else "NOT synchronized: holding readings back")
        self._state = state
        return state

    def stamp(self) -> tuple[int, str] | None:
        """What a batch read now carries: None when the clock is right, else (monotonic ms, boot id)."""
        return None if self.synced() else (int(time.monotonic() * 1000), self.boot)

    def _probe(self) -> bool:
        mode = self.check
        if mode == "off":
            return True
        if mode == "timesyncd" or (mode == "auto" and self.synced_file.parent.is_dir()):
            return self.synced_file.exists()
        if mode == "kernel":
            state = kernel_synced()
            if state is None:
                if not self._warned:
                    log.warning("cannot read the kernel's clock state (ProtectClock?): trusting the clock")
                    self._warned = True
                return True
            return state
        return True

    def release(self, batches: list[StoredBatch]) -> list[StoredBatch]:
        """The leading batches that may be published now, with ``ts`` corrected where it can be.

        A batch read while unsynced is corrected once the clock is synced (same boot); past the hold
        limit, or from an earlier boot, it goes out as it is, still marked unsynced. The first batch
        that must wait stops the list: rows go out in order.
        """
        out: list[StoredBatch] = []
        synced = self.synced()
        now_ms, mono_ms = int(time.time() * 1000), int(time.monotonic() * 1000)
        for batch in batches:
            if batch.unsynced is None:
                out.append(batch)
                continue
            mono, boot = batch.unsynced
            same_boot = boot == self.boot
            if synced and same_boot:
                out.append(replace(batch, ts=now_ms - (mono_ms - mono), unsynced=None))
            elif not same_boot or mono_ms - mono >= self.hold * 1000:
                out.append(batch)
            else:
                break
        return out
