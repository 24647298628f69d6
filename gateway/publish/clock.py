"""Is the wall clock right? Boards without a battery-backed clock boot with a plausible but wrong time.

Raspberry Pi OS restores the last shutdown time at boot, and NTP may take minutes over a cellular
link. Readings taken meanwhile carry their monotonic time and the boot id; the publisher holds
them back, corrects their ``ts`` when the clock syncs (same boot: ``ts = now - (mono_now -
mono_read)``), and past the hold limit sends them with ``"synced": false``.

How the state is read (``gateway.clock.check``):
- ``timesyncd``: systemd-timesyncd touches ``/run/systemd/timesync/synchronized`` once synced
  (readable under ``ProtectClock=``, which forbids adjtimex).
- ``kernel``: the kernel's own flag (adjtimex with no change requested: STA_UNSYNC / TIME_ERROR).
- ``auto`` (default): timesyncd's file when timesyncd runs on the board (its folder
  ``/run/systemd/timesync`` exists); else chronyd's own answer when chronyd answers on its
  monitoring port (UDP 127.0.0.1:323, see gateway.publish.chrony; asked in the background, at most every
  few seconds); else (no NTP client recognised) the clock is trusted.
- ``off``: always trusted (a board with a real-time clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from gateway.model import StoredBatch
from gateway.publish import chrony

log = logging.getLogger(__name__)

TIMESYNC_FILE = Path("/run/systemd/timesync/synchronized")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
Check = Literal["auto", "timesyncd", "kernel", "off"]

CHRONY_RECHECK = 2.0  # seconds between questions to chronyd while it says it is not synchronized
CHRONY_RECHECK_QUIET = 30.0  # ... while it says it is, or while no chronyd answers

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

    def __init__(self, check: Check = "auto", *, synced_file: Path = TIMESYNC_FILE, hold: float = 600.0,
                 chrony_port: int = chrony.PORT) -> None:
        self.check = check
        self.synced_file = synced_file
        self.hold = hold  # seconds an unsynced reading may wait for the clock before it goes out as is
        self.chrony_port = chrony_port
        self.boot = boot_id()
        self._state = True
        self._said = True  # the state last logged
        self._checked = -1e18
        self._warned = False
        self._chrony: bool | None = None  # chronyd's last answer; None: no chronyd answered
        self._chrony_asked = False  # an answer (or the silence) came back at least once
        self._chrony_due = -1e18
        self._chrony_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Learn the clock's state before the first reading is stamped (``auto`` may ask chronyd)."""
        if self.check == "auto" and not self.synced_file.parent.is_dir():
            await self._ask_chrony()
        self.refresh()

    def synced(self) -> bool:
        if time.monotonic() - self._checked >= 1.0:
            return self.refresh()
        return self._state

    def refresh(self) -> bool:
        """Look at the clock's state now (``synced`` looks at most once a second)."""
        self._checked = time.monotonic()
        state = self._probe()
        # None: chronyd's first answer is still on its way; hold readings meanwhile, without a log line.
        if state is not None and state != self._said:
            log.warning("wall clock %s", "synchronized" if state else "NOT synchronized: holding readings back")
            self._said = state
        self._state = bool(state)
        return self._state

    def stamp(self) -> tuple[int, str] | None:
        """What a batch read now carries: None when the clock is right, else (monotonic ms, boot id)."""
        return None if self.synced() else (int(time.monotonic() * 1000), self.boot)

    def _probe(self) -> bool | None:
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
        return self._chrony_state()

    def _chrony_state(self) -> bool | None:
        """chronyd's last answer (True when none answers); asks again in the background when due."""
        if self._chrony_task is None and time.monotonic() >= self._chrony_due:
            with contextlib.suppress(RuntimeError):  # no event loop runs: keep the last answer
                loop = asyncio.get_running_loop()
                self._chrony_task = loop.create_task(self._ask_chrony(), name="clock-chrony")
        if not self._chrony_asked:
            return None
        return True if self._chrony is None else self._chrony

    async def _ask_chrony(self) -> None:
        try:
            answer = await chrony.tracking_synced(self.chrony_port)
        finally:
            self._chrony_task = None
        if not self._chrony_asked or (answer is None) != (self._chrony is None):
            if answer is None:
                log.info("no NTP client recognised (no timesyncd, no chronyd on 127.0.0.1:%d): trusting the clock",
                         self.chrony_port)
            else:
                log.info("NTP client: chronyd (answers on 127.0.0.1:%d)", self.chrony_port)
        self._chrony, self._chrony_asked = answer, True
        self._chrony_due = time.monotonic() + (CHRONY_RECHECK if answer is False else CHRONY_RECHECK_QUIET)
        self._checked = -1e18  # the next look takes this answer

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
