"""Device profiles: lookup, merging into a device entry, and errors that name the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus.config import ModbusConfig
from drivers.modbus.profiles import SHIPPED_DIR, SYSTEM_DIR, available_profiles, find_profile, load_profile
from tests.support import REPO

SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
RTU = {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "unit_id": 3}

VENDOR = """\
description: a test vendor's meter
byte_order: CDAB
max_gap: 4
points:
  - {name: power,  table: input, address: 0, type: float32, unit: W}
  - {name: energy, table: input, address: 10, type: uint32, unit: Wh}
  - {name: state,  table: holding, address: 5, type: uint16, value_map: {0: idle, 1: run}}
"""


def validate(entry: dict[str, Any], dirs: list[Path]) -> ModbusConfig:
    return ModbusConfig.model_validate(entry, context={"profile_dirs": dirs})


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    (tmp_path / "vendor-meter.yaml").write_text(VENDOR)
    return tmp_path


def test_shipped_profiles_exist_and_load() -> None:
    assert len(SHIPPED) >= 3
    assert {"eastron-sdm120", "xy-md02", "deltaohm-pmsense", "level-transmitter-rs485"} <= set(SHIPPED)
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile["description"]
        config = ModbusConfig.model_validate({"profile": name, "connection": RTU})
        assert config.profile == name and len(config.points) == len(profile["points"])


def test_shipped_directory_is_next_to_the_package() -> None:
    assert REPO / "config" / "profiles" == SHIPPED_DIR
    assert Path("/etc/gateway/profiles") == SYSTEM_DIR


def test_eastron_map_matches_the_protocol_document() -> None:
    points = {p.name: p for p in ModbusConfig.model_validate({"profile": "eastron-sdm120", "connection": RTU}).points}
    expected = {"voltage": 0x0000, "current": 0x0006, "active_power": 0x000C, "frequency": 0x0046,
                "import_active_energy": 0x0048, "export_active_energy": 0x004A, "total_active_energy": 0x0156}
    assert {n: points[n].address for n in expected} == expected
    assert all(p.table == "input" and p.type == "float32" and p.byte_order == "ABCD" for p in points.values())


def test_profile_supplies_points_and_device_defaults(profiles: Path) -> None:
    config = validate({"profile": "vendor-meter", "connection": RTU}, [profiles])
    assert [p.name for p in config.points] == ["power", "energy", "state"]
    assert [p.byte_order for p in config.points] == ["CDAB"] * 3
    assert (config.max_gap, config.byte_order, config.connection.unit_id) == (4, "CDAB", 3)
    assert config.points[2].value_map == {0: "idle", 1: "run"}


def test_device_overrides_keys_and_points_by_name(profiles: Path) -> None:
    entry = {
        "profile": "vendor-meter",
        "connection": RTU,
        "max_gap": 0,
        "byte_order": "ABCD",
        "points": [
            {"name": "energy", "scale": 0.001, "unit": "kWh"},  # override some keys of a profile point
            {"name": "extra", "address": 20, "type": "int16"},  # add one
        ],
    }
    config = validate(entry, [profiles])
    by_name = {p.name: p for p in config.points}
    assert list(by_name) == ["energy", "extra", "power", "state"]  # the entry's own first, at their positions
    assert (by_name["energy"].scale, by_name["energy"].unit, by_name["energy"].type) == (0.001, "kWh", "uint32")
    assert by_name["power"].byte_order == "ABCD"  # the device's default now
    assert config.max_gap == 0


def test_first_directory_wins(profiles: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vendor-meter.yaml").write_text("points: [{name: only, address: 1}]\n")
    assert [p.name for p in validate({"profile": "vendor-meter", "connection": RTU}, [site, profiles]).points] == [
        "only"]
    assert find_profile("vendor-meter", [profiles]) == profiles / "vendor-meter.yaml"
    assert "vendor-meter" in available_profiles([profiles])


def error_text(entry: dict[str, Any], dirs: list[Path]) -> str:
    with pytest.raises(ValidationError) as caught:
        validate(entry, dirs)
    return str(caught.value)


def test_unknown_profile_lists_the_known_ones(profiles: Path) -> None:
    text = error_text({"profile": "vendor-metre", "connection": RTU}, [profiles])
    assert "profile 'vendor-metre' not found (looked in " in text
    assert "vendor-meter" in text and "eastron-sdm120" in text


@pytest.mark.parametrize(("content", "message"), [
    ("points: [\n", "cannot be read"),
    ("- a list\n", "is not a mapping"),
    ("connection: {host: h}\npoints: [{name: a, address: 0}]\n", "unknown key 'connection'"),
    ("points: []\n", "points must be a non-empty list of mappings"),
    ("points: [{name: a, address: 0, type: floaty}]\n", "points[0].type: Input should be"),
    ("points: [{name: a, address: 0}, {name: b, address: 1, type: string}]\n",
     "points[1]: a string point needs count"),
])
def test_broken_profile_is_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "broken.yaml").write_text(content)
    text = error_text({"profile": "broken", "connection": RTU}, [tmp_path])
    assert f"profile 'broken' ({tmp_path / 'broken.yaml'})" in text
    assert message in text


def test_profile_name_cannot_leave_the_directory(profiles: Path) -> None:
    text = error_text({"profile": "../vendor-meter", "connection": RTU}, [profiles / "sub"])
    assert "'../vendor-meter' is not a profile name" in text


def test_a_profile_does_not_excuse_a_missing_connection(profiles: Path) -> None:
    assert "connection" in error_text({"profile": "vendor-meter"}, [profiles])
