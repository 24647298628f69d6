"""Where each health value of the board comes from, and which of them this board has.

Every path is taken under ``root`` (``/`` on a real board, a fixture tree in tests). A source
reads one file (or one statvfs) and gives one or more points; ``probe`` keeps the sources that
can be read now, so a value the board lacks is left out rather than invented.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every point the driver knows, in report order, with its unit.
POINTS: dict[str, str | None] = {
    "cpu_temp": "°C",
    "under_voltage": None,
    "freq_capped": None,
    "throttled": None,
    "soft_temp_limit": None,
    "under_voltage_occurred": None,
    "freq_capped_occurred": None,
    "throttled_occurred": None,
    "soft_temp_limit_occurred": None,
    "throttled_flags": None,
    "load1": None,
    "load5": None,
    "load15": None,
    "mem_available": "B",
    "disk_free": "B",
    "bytes_written": "B",
    "uptime": "s",
}

# Raspberry Pi firmware throttled flags: bit -> point.
THROTTLE_BITS = {
    0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
THROTTLED_FILES = (
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "sys/devices/platform/*/soc:firmware/get_throttled",
)
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc-thermal", "soc_thermal")


@dataclass(frozen=True, slots=True)
class Source:
    """One place to read: ``read()`` returns values by point name; ``where`` names it in errors."""

    where: str
    points: tuple[str, ...]
    read: Callable[[], dict[str, Any]]


def probe(root: Path, data_path: str, thermal_zone: str | None = None) -> list[Source]:
    """The sources this board has (each read once to make sure)."""
    found = []
    makers: list[Callable[[], Source | None]] = [
        lambda: _thermal(root, thermal_zone), lambda: _throttled(root), lambda: _loadavg(root),
        lambda: _meminfo(root), lambda: _disk(root, data_path), lambda: _proc_io(root), lambda: _uptime(root),
    ]
    for make in makers:
        source = make()
        if source is None:
            continue
        try:
            source.read()
        except (OSError, ValueError, IndexError, KeyError):
            continue
        found.append(source)
    return found


def _text(path: Path) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def _shown(root: Path, path: Path) -> str:
    return "/" + str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _zones(root: Path) -> list[tuple[str, Path]]:
    """(type, directory) of every thermal zone, in zone number order."""
    base = root / "sys/class/thermal"
    zones = []
    for zone in base.glob("thermal_zone*"):
        number = re.fullmatch(r"thermal_zone(\d+)", zone.name)
        if number is None:
            continue
        try:
            kind = _text(zone / "type").strip()
        except OSError:
            kind = ""
        zones.append((int(number.group(1)), kind, zone))
    return [(kind, zone) for _, kind, zone in sorted(zones)]


def pick_zone(zones: list[tuple[str, Path]], wanted: str | None) -> Path | None:
    """The zone named ``wanted`` (by type or directory name), else the CPU's, else the first."""
    if wanted is not None:
        return next((z for kind, z in zones if wanted in (kind, z.name)), None)
    for cpu_type in CPU_ZONE_TYPES:
        for kind, zone in zones:
            if kind == cpu_type:
                return zone
    return next((z for kind, z in zones if "cpu" in kind.lower()), zones[0][1] if zones else None)


def _thermal(root: Path, wanted: str | None) -> Source | None:
    zone = pick_zone(_zones(root), wanted)
    if zone is None:
        return None
    path = zone / "temp"
    return Source(_shown(root, path), ("cpu_temp",), lambda: {"cpu_temp": int(_text(path).strip()) / 1000})


def decode_throttled(flags: int) -> dict[str, Any]:
    """The firmware's throttled word as points: each known bit, and the word itself."""
    values: dict[str, Any] = {name: bool(flags >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    values["throttled_flags"] = flags
    return values


def _throttled(root: Path) -> Source | None:
    for pattern in THROTTLED_FILES:
        for path in sorted(root.glob(pattern)):
            return Source(_shown(root, path), (*THROTTLE_BITS.values(), "throttled_flags"),
                          lambda path=path: decode_throttled(int(_text(path).strip(), 16)))
    return _rpi_volt(root)


def _rpi_volt(root: Path) -> Source | None:
    """Kernels without get_throttled: the rpi_volt hwmon's under-voltage alarm (last ~2 s)."""
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        try:
            name = _text(hwmon / "name").strip()
        except OSError:
            continue
        if name == "rpi_volt":
            path = hwmon / "in0_lcrit_alarm"
            return Source(_shown(root, path), ("under_voltage",),
                          lambda path=path: {"under_voltage": _text(path).strip() == "1"})
    return None


def _loadavg(root: Path) -> Source:
    path = root / "proc/loadavg"

    def read() -> dict[str, Any]:
        one, five, fifteen = (float(x) for x in _text(path).split()[:3])
        return {"load1": one, "load5": five, "load15": fifteen}
    return Source(_shown(root, path), ("load1", "load5", "load15"), read)


def _meminfo(root: Path) -> Source:
    path = root / "proc/meminfo"

    def read() -> dict[str, Any]:
        for line in _text(path).splitlines():
            if line.startswith("MemAvailable:"):
                return {"mem_available": int(line.split()[1]) * 1024}  # the kernel's "kB" is KiB
        raise KeyError("MemAvailable")
    return Source(_shown(root, path), ("mem_available",), read)


def _disk(root: Path, data_path: str) -> Source:
    path = root / data_path.lstrip("/")

    def read() -> dict[str, Any]:
        st = os.statvfs(path)
        return {"disk_free": st.f_bavail * st.f_frsize}  # what a non-root writer could still use
    return Source(_shown(root, path), ("disk_free",), read)


def _proc_io(root: Path) -> Source:
    path = root / "proc/self/io"

    def read() -> dict[str, Any]:
        for line in _text(path).splitlines():
            if line.startswith("write_bytes:"):
                return {"bytes_written": int(line.split()[1])}
        raise KeyError("write_bytes")
    return Source(_shown(root, path), ("bytes_written",), read)


def _uptime(root: Path) -> Source:
    path = root / "proc/uptime"
    return Source(_shown(root, path), ("uptime",), lambda: {"uptime": float(_text(path).split()[0])})
