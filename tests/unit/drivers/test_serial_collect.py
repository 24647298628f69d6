"""What every serial driver shares: aggregation between polls, staleness, escapes, the port check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from drivers.serialio.collect import Collector
from drivers.serialio.settings import (
    SerialSettings,
    check_one_device_per_port,
    default_stale_after,
    unescape,
)
from tests.support import REPO


def fill(collector: Collector, rows: list[list[object]], at: float = 100.0) -> None:
    for k, row in enumerate(rows):
        collector.add(row, at + k * 0.1)


ROWS: list[list[object]] = [[10, 1.5, "a"], [30, None, "b"], [20, 0.5, "c"]]


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("last", [20, 0.5, "c"]), ("mean", [20.0, 1.0, "c"]), ("min", [10, 0.5, "c"]), ("max", [30, 1.5, "c"])],
)
def test_aggregates_over_the_window(aggregate: str, expected: list[object]) -> None:
    collector = Collector([True, True, False], aggregate)
    fill(collector, ROWS)
    values, errors = collector.take(now=101.0, stale_after=30)
    assert values == expected and errors == {}


def test_a_new_window_starts_at_each_take() -> None:
    collector = Collector([True], "max")
    fill(collector, [[5], [9]])
    assert collector.take(101.0, 30)[0] == [9]
    collector.add([3], 102.0)
    assert collector.take(103.0, 30)[0] == [3]  # the 9 of the previous window is forgotten


def test_an_empty_window_repeats_the_last_value_until_stale() -> None:
    collector = Collector([True, True], "mean")
    collector.add([7, None], 100.0)
    collector.add([None, 4], 110.0)
    collector.take(111.0, 30)
    assert collector.take(125.0, stale_after=30) == ([7, 4], {})
    values, errors = collector.take(135.0, stale_after=30)
    assert values == [None, 4]
    assert errors == {0: "no value for 35s"}


def test_a_point_never_seen_is_an_error() -> None:
    collector = Collector([True, True])
    collector.add([1, None], 100.0)
    assert collector.take(100.5, 30) == ([1, None], {1: "no value received"})


def test_newest_tracks_the_last_value_of_any_point() -> None:
    collector = Collector([True])
    assert collector.newest is None
    assert not collector.add([None], 5.0)
    assert collector.newest is None
    assert collector.add([1], 6.0)
    assert collector.newest == 6.0


def test_unescape() -> None:
    assert unescape("R\\r\\n") == "R\r\n"
    assert unescape("\\x02A\\x03") == "\x02A\x03"
    assert unescape("a\\\\n") == "a\\n"
    assert unescape("\r\n") == "\r\n"


def test_default_stale_after_is_three_intervals_at_least_thirty_seconds() -> None:
    assert default_stale_after(1.0) == 30.0
    assert default_stale_after(60.0) == 180.0


def test_port_settings_open_exclusively() -> None:
    kwargs = SerialSettings(serial_port="/dev/ttyS0", baudrate=2400, parity="E", stopbits=2, bytesize=7).serial_kwargs()
    assert kwargs == {"baudrate": 2400, "parity": "E", "stopbits": 2, "bytesize": 7, "exclusive": True}


def test_one_device_per_port() -> None:
    def dev(port: str) -> SimpleNamespace:
        return SimpleNamespace(connection=SimpleNamespace(serial_port=port))

    problems = check_one_device_per_port([("a", dev("/dev/ttyUSB0")), ("b", dev("/dev/ttyUSB1")),
                                          ("c", dev("/dev/ttyUSB0"))])
    assert problems == [("c", "devices 'c' and 'a' both use /dev/ttyUSB0; a serial sensor needs a port of its own")]


def test_serial_libraries_load_only_when_a_port_opens(tmp_path: Path) -> None:
    """Loading a config and building the serial drivers must not import pyserial (it loads in open())."""
    code = (
        "import sys\n"
        "from drivers.pms5003.driver import Pms5003Driver, Pms5003Config\n"
        "from drivers.sds011.driver import Sds011Driver, Sds011Config\n"
        "from drivers.serial_line.driver import SerialLineDriver\n"
        "from gateway.driver import DeviceInfo\n"
        "Pms5003Driver(Pms5003Config(connection={'serial_port': '/dev/x'}), DeviceInfo('a', 1.0))\n"
        "Sds011Driver(Sds011Config(connection={'serial_port': '/dev/y'}), DeviceInfo('b', 1.0))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('serial', 'serial_asyncio_fast')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"
