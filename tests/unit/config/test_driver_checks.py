"""The config's second pass asks each driver to check its devices (``check_devices``); it has no
checks of its own for a protocol (the overlapping registers are the modbus driver's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from drivers.modbus.driver import ModbusDriver
from gateway.config import load as config_module
from gateway.config.load import ConfigFileError, load_config
from gateway.driver import DeviceProblem
from tests.support import REPO

OVERLAPS = REPO / "tests" / "cases" / "overlapping_registers"
HEAD = "gateway: {id: g}\nmqtt: {host: h}\ndevices:\n"


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: int = 0


class _PlainDriver:
    """A driver with no hooks at all: a Config model is all the loader needs."""

    Config = _Opts


class _CheckingDriver(_PlainDriver):
    found: Sequence[Any] = ()
    asked: list[list[tuple[str, Any]]] = []

    @classmethod
    def check_devices(cls, devices: Sequence[tuple[str, Any]]) -> Sequence[Any]:
        cls.asked.append(list(devices))
        return cls.found


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, environ={})


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigFileError) as caught:
        _load(tmp_path, text)
    return str(caught.value).replace(f"{tmp_path}/", "").splitlines()


def test_a_driver_without_hooks_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _PlainDriver)
    config = _load(tmp_path, HEAD + "  - {name: a, driver: plain, level: 3}\n  - {name: b, driver: plain}\n")
    assert [(d.name, d.options.level) for d in config.devices] == [("a", 3), ("b", 0)]


def test_the_overlap_check_is_the_modbus_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = (OVERLAPS / "error.txt").read_text().strip().replace("config.yaml", str(OVERLAPS / "config.yaml"))
    with pytest.raises(ConfigFileError) as caught:
        load_config(OVERLAPS / "config.yaml", environ={})
    assert str(caught.value) == expected
    monkeypatch.delattr(ModbusDriver, "check_devices")
    assert load_config(OVERLAPS / "config.yaml", environ={}).devices  # the core checks no registers itself


def test_check_devices_gets_every_device_of_its_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _CheckingDriver)
    monkeypatch.setattr(_CheckingDriver, "asked", [])
    _load(tmp_path, HEAD + "  - {name: a, driver: check, level: 1}\n  - {name: b, driver: check, enabled: false}\n")
    asked = [[(name, opts.level) for name, opts in devices] for devices in _CheckingDriver.asked]
    assert asked == [[("a", 1), ("b", 0)]]


def test_a_problem_is_reported_at_its_place_naming_the_line_it_refers_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _CheckingDriver)
    monkeypatch.setattr(_CheckingDriver, "found", [
        DeviceProblem("b", "level 2 clashes with device a's", at=("level",), see=("name",)),
        DeviceProblem("a", "the first device is wrong too"),
        DeviceProblem("nobody", "a device the config does not have"),
    ])
    text = HEAD + "  - name: a\n    driver: check\n  - name: b\n    driver: check\n    level: 2\n"
    assert _problems(tmp_path, text) == [
        "config.yaml:3: devices: a device the config does not have",
        "config.yaml:4: devices[0].name: the first device is wrong too",
        "config.yaml:8: devices[1].level: level 2 clashes with device a's at line 6",
    ]


@pytest.mark.parametrize(("found", "reason"), [
    ([("a", "a tuple, as the hook returned before DeviceProblem")], "check_devices must return DeviceProblem records"),
    (None, "'NoneType' object is not iterable"),
])
def test_a_malformed_answer_is_the_drivers_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: Any, reason: str
) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _CheckingDriver)
    monkeypatch.setattr(_CheckingDriver, "found", found)
    assert _problems(tmp_path, HEAD + "  - {name: a, driver: check}\n") == [
        f"config.yaml:3: devices: driver 'check' failed checking its devices: {reason}"]
