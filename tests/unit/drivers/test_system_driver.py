"""The system driver against a Raspberry Pi-style fixture tree, and against this machine's /sys and /proc."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.system.driver import SystemConfig, SystemDriver
from drivers.system.sources import POINTS, decode_throttled
from gateway.driver import DeviceInfo, DriverError
from tests.support.wait import wait_until_async

DEVICE = DeviceInfo("health", 60.0)
THROTTLE_POINTS = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit", "under_voltage_occurred",
                   "freq_capped_occurred", "throttled_occurred", "soft_temp_limit_occurred", "throttled_flags")


def put(root: Path, path: str, text: str) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.fixture
def pi(tmp_path: Path) -> Path:
    """A Raspberry Pi's files as its kernel shows them (under-voltage now and throttled: 0x50005)."""
    root = tmp_path / "pi"
    put(root, "sys/class/thermal/thermal_zone0/type", "acpitz\n")
    put(root, "sys/class/thermal/thermal_zone0/temp", "27800\n")
    put(root, "sys/class/thermal/thermal_zone1/type", "cpu-thermal\n")
    put(root, "sys/class/thermal/thermal_zone1/temp", "61234\n")
    put(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    put(root, "proc/loadavg", "0.52 0.58 0.59 1/300 1234\n")
    put(root, "proc/meminfo", "MemTotal:        3884328 kB\nMemFree:          123456 kB\n"
                              "MemAvailable:    2867404 kB\nBuffers:           1234 kB\n")
    put(root, "proc/self/io", "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 40960\n"
                              "cancelled_write_bytes: 0\n")
    put(root, "proc/uptime", "12345.67 45678.90\n")
    (root / "var/lib/gateway").mkdir(parents=True)
    return root


def driver(root: Path | str, **options: object) -> SystemDriver:
    return SystemDriver(SystemConfig(root=str(root), **options), DEVICE)


async def read(drv: SystemDriver) -> dict[str, object]:
    await drv.open()
    result = await drv.poll()
    assert result.errors is None, result.errors
    return dict(zip(drv.points.names, result.values, strict=True))


async def test_every_point_of_a_pi(pi: Path) -> None:
    drv = driver(pi)
    values = await read(drv)
    assert drv.points.names == tuple(POINTS)
    st = os.statvfs(pi / "var/lib/gateway")
    assert values == {
        "cpu_temp": 61.234,  # the cpu-thermal zone, not the first one
        "under_voltage": True, "freq_capped": False, "throttled": True, "soft_temp_limit": False,
        "under_voltage_occurred": True, "freq_capped_occurred": False, "throttled_occurred": True,
        "soft_temp_limit_occurred": False, "throttled_flags": 0x50005,
        "load1": 0.52, "load5": 0.58, "load15": 0.59,
        "mem_available": 2867404 * 1024,
        "disk_free": pytest.approx(st.f_bavail * st.f_frsize, rel=0.01),
        "bytes_written": 40960,
        "uptime": 12345.67,
    }
    assert dict(zip(drv.points.names, drv.points.units, strict=True))["cpu_temp"] == "°C"


@pytest.mark.parametrize(
    ("flags", "on"),
    [(0x0, set()), (0x1, {"under_voltage"}), (0x2, {"freq_capped"}), (0x4, {"throttled"}),
     (0x8, {"soft_temp_limit"}), (0x10000, {"under_voltage_occurred"}), (0x20000, {"freq_capped_occurred"}),
     (0x40000, {"throttled_occurred"}), (0x80000, {"soft_temp_limit_occurred"}),
     (0xF000F, set(THROTTLE_POINTS) - {"throttled_flags"})],
)
def test_throttled_bits(flags: int, on: set[str]) -> None:
    decoded = decode_throttled(flags)
    assert {k for k, v in decoded.items() if v is True} == on
    assert decoded["throttled_flags"] == flags


async def test_points_pick_and_order(pi: Path) -> None:
    drv = driver(pi, points=["uptime", "cpu_temp", "under_voltage"])
    assert await read(drv) == {"uptime": 12345.67, "cpu_temp": 61.234, "under_voltage": True}
    assert drv.points.units == ("s", "°C", None)


async def test_a_point_the_board_lacks_is_left_out_with_one_warning(
    pi: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (pi / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    drv = driver(pi, points=["cpu_temp", "throttled", "load1"])
    assert drv.points.names == ("cpu_temp", "load1")
    with caplog.at_level(logging.WARNING):
        await read(drv)
        await drv.close()
        await read(drv)  # opened again after an error: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["device health: this board has no throttled; left out"]


async def test_by_default_only_what_exists_and_no_warning(pi: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in ("sys/class/thermal", "sys/devices"):
        for f in sorted((pi / path).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    drv = driver(pi)
    with caplog.at_level(logging.WARNING):
        values = await read(drv)
    assert "cpu_temp" not in values and "under_voltage" not in values
    assert set(values) == {"load1", "load5", "load15", "mem_available", "disk_free", "bytes_written", "uptime"}
    assert not caplog.records


async def test_thermal_zone_chosen_by_type_or_name(pi: Path) -> None:
    assert (await read(driver(pi, points=["cpu_temp"], thermal_zone="acpitz")))["cpu_temp"] == 27.8
    assert (await read(driver(pi, points=["cpu_temp"], thermal_zone="thermal_zone1")))["cpu_temp"] == 61.234


async def test_rpi_volt_hwmon_when_get_throttled_is_missing(pi: Path) -> None:
    (pi / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    put(pi, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
    put(pi, "sys/class/hwmon/hwmon1/name", "rpi_volt\n")
    put(pi, "sys/class/hwmon/hwmon1/in0_lcrit_alarm", "1\n")
    drv = driver(pi)
    values = await read(drv)
    assert values["under_voltage"] is True
    assert "throttled" not in values and "throttled_flags" not in values


async def test_a_source_failing_later_fails_only_its_points(pi: Path) -> None:
    drv = driver(pi, points=["cpu_temp", "load1", "load15"])
    await drv.open()
    (pi / "proc/loadavg").write_text("garbage\n")
    result = await drv.poll()
    assert result.values == [61.234, None, None]
    assert result.errors is not None and set(result.errors) == {1, 2}
    assert "cannot read /proc/loadavg" in result.errors[1]


async def test_nothing_readable_is_a_device_error(pi: Path) -> None:
    drv = driver(pi, points=["uptime"])
    await drv.open()
    (pi / "proc/uptime").unlink()
    with pytest.raises(DriverError, match="no health value could be read"):
        await drv.poll()


async def test_none_of_the_asked_points_exists(tmp_path: Path) -> None:
    drv = driver(tmp_path, points=["cpu_temp", "under_voltage"])
    with pytest.raises(DriverError, match="none of the points asked for"):
        await drv.open()


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="cpu_temp"):
        SystemConfig(points=["cpu_temperature"])
    with pytest.raises(ValidationError, match="duplicate point name 'load1'"):
        SystemConfig(points=["load1", "load1"])
    with pytest.raises(ValidationError, match="disk"):
        SystemConfig(disk="/")


# -- this machine ---------------------------------------------------------------------------------


def _has_thermal_zone() -> bool:
    for zone in Path("/sys/class/thermal").glob("thermal_zone*"):
        try:
            int((zone / "temp").read_text())
            return True
        except (OSError, ValueError):
            continue
    return False


def _has_throttled_file() -> bool:
    return Path("/sys/devices/platform/soc/soc:firmware/get_throttled").exists()


def _mem_total() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1]) * 1024


def _write_synced(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
        fh.flush()
        os.fsync(fh.fileno())


async def test_this_machine(tmp_path: Path) -> None:
    drv = SystemDriver(SystemConfig(path=str(tmp_path)), DEVICE)
    names = set(drv.points.names)
    assert {"load1", "load5", "load15", "mem_available", "disk_free", "uptime"} <= names
    assert ("cpu_temp" in names) == _has_thermal_zone()
    assert ("throttled" in names) == _has_throttled_file()
    first = await read(drv)
    assert first["load1"] == pytest.approx(os.getloadavg()[0], abs=0.5)  # the kernel's, read again
    assert first["uptime"] == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME), abs=5)  # /proc/uptime's clock
    assert 0 < first["mem_available"] <= _mem_total()
    st = os.statvfs(tmp_path)
    assert first["disk_free"] == pytest.approx(st.f_bavail * st.f_frsize, rel=0.05)
    if "cpu_temp" in names:
        assert -40 < first["cpu_temp"] < 125
    if "bytes_written" in names:
        _write_synced(tmp_path / "blob", 1 << 20)

    async def later() -> dict[str, object] | None:
        second = await read(drv)
        return second if second["uptime"] > first["uptime"] else None

    second = await wait_until_async(later, 5, "the uptime to grow")
    assert second["uptime"] > first["uptime"]
    if "bytes_written" in names and second["bytes_written"] == first["bytes_written"]:
        pytest.skip(f"/proc/self/io write_bytes did not grow for 1 MiB fsynced to {tmp_path}: "
                    "its filesystem writes to no block device (tmpfs?)")
    if "bytes_written" in names:
        assert second["bytes_written"] - first["bytes_written"] >= 1 << 20
