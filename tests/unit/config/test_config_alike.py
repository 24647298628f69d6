"""Devices written alike share one validated options object (a frozen model), and nothing else changes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from gateway.config import load as config_module
from gateway.config.load import ConfigFileError, load_config
from gateway.config.settings import Config

HEAD = "gateway: {id: g}\nmqtt: {host: h}\ndevices:\n"


def _load(tmp_path: Path, devices: str) -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(devices), "  "))
    return load_config(path, environ={})


def test_devices_alike_but_for_name_and_interval_share_their_options(tmp_path: Path) -> None:
    config = _load(tmp_path, """\
        - {name: a, driver: simulated, interval: 1s, points: &p [{name: level, signal: counter}]}
        - {name: b, driver: simulated, interval: 5s, points: *p}
        - {name: c, driver: simulated, points: [{name: level, signal: counter}]}
        - {name: d, driver: simulated, points: [{name: level, signal: sine}]}
        """)
    a, b, c, d = config.devices
    assert (a.name, a.interval, b.name, b.interval) == ("a", 1.0, "b", 5.0)
    assert a.options is b.options is c.options  # an anchor or the same text: one object
    assert d.options is not a.options
    assert d.options.points[0].signal == "sine" and a.options.points[0].signal == "counter"


def test_a_bad_entry_written_twice_is_reported_twice(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        _load(tmp_path, """\
            - {name: a, driver: simulated, points: [{name: level, signal: square}]}
            - {name: b, driver: simulated, points: [{name: level, signal: square}]}
            """)
    assert [p.path for p in caught.value.problems] == ["devices[0].points[0].signal", "devices[1].points[0].signal"]


class _Mutable(BaseModel):  # not frozen: a device's copy could be changed, so each device gets its own
    model_config = ConfigDict(extra="forbid")
    level: int = 0


class _MutableDriver:
    Config = _Mutable


def test_options_of_a_model_not_frozen_are_not_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _MutableDriver)
    config = _load(tmp_path, """\
        - {name: a, driver: mutable, level: 3}
        - {name: b, driver: mutable, level: 3}
        """)
    a, b = config.devices
    assert a.options == b.options
    assert a.options is not b.options
