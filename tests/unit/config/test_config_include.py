"""`include:` of further device files: merged in order, errors name the right file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.load import ConfigFileError, load_config

MAIN = """\
gateway: {id: gw1, data_dir: /tmp/gw1}
mqtt: {host: 127.0.0.1}
include: [conf.d/*.yaml]
devices:
  - name: a
    driver: simulated
    points: [{name: x}]
"""


def _device(name: str, signal: str = "counter") -> str:
    return f"  - name: {name}\n    driver: simulated\n    points:\n      - {{name: x, signal: {signal}}}\n"


def _write(tmp_path: Path, main: str, **files: str) -> Path:
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "conf.d" / f"{name}.yaml").write_text(text)
    path = tmp_path / "gateway.yaml"
    path.write_text(main)
    return path


def test_included_devices_are_merged_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path, MAIN, bus2="devices:\n" + _device("c"), bus1="devices:\n" + _device("b"))
    config = load_config(path)
    assert [d.name for d in config.devices] == ["a", "b", "c"]


def test_an_error_in_an_included_file_names_that_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, MAIN, bus1="devices:\n" + _device("b") + _device("c", "sawtooth"))
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert problem.file.endswith("conf.d/bus1.yaml")
    assert problem.line == 9
    assert problem.path == "devices[1].points[0].signal"
    assert "'sawtooth' is not one of" in problem.message


def test_duplicate_across_files_points_at_the_first(tmp_path: Path) -> None:
    path = _write(tmp_path, MAIN, bus1="devices:\n" + _device("a"))
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert problem.file.endswith("bus1.yaml") and problem.line == 2
    assert "duplicate device name 'a' (first at " in problem.message and "gateway.yaml:5" in problem.message


def test_missing_literal_include_is_an_error_but_an_empty_glob_is_not(tmp_path: Path) -> None:
    assert [d.name for d in load_config(_write(tmp_path, MAIN)).devices] == ["a"]
    path = _write(tmp_path, MAIN.replace("conf.d/*.yaml", "conf.d/*.yaml, site.yaml"))
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert str(err.value).endswith("gateway.yaml:3: include[1]: 'site.yaml': no such file")


def test_an_included_file_may_hold_only_devices(tmp_path: Path) -> None:
    path = _write(tmp_path, MAIN, bus1="mqtt: {host: evil}\ndevices:\n" + _device("b"))
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert "bus1.yaml:1: mqtt: an included file may only hold devices:" in str(err.value)


def test_a_syntax_error_in_an_included_file_is_reported_with_its_name(tmp_path: Path) -> None:
    path = _write(tmp_path, MAIN, bus1="devices:\n  - {name: b, driver: simulated\n")
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert "bus1.yaml:" in str(err.value) and "YAML syntax error" in str(err.value)
