"""Config loading: durations, ${ENV}, the issue's example, error reporting, hash, immutability."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drivers.modbus.config import ModbusConfig
from drivers.simulated.driver import SimulatedConfig
from gateway.config import load as config_module
from gateway.config.load import ConfigFileError, Problem, load_config
from gateway.config.settings import Config, DeviceSpec
from gateway.driver import ConfigError
from gateway.fields import parse_duration
from tests.support import REPO

# The config of issue 2, exactly as written there.
ISSUE_EXAMPLE = """\
gateway:
  id: pkt-rd-0001            # names (gateway, devices, points): letters, digits, '-', '_', '.' — safe in MQTT topics
  data_dir: /var/lib/gateway # the buffer lives here
mqtt:
  host: broker.example.org
  port: 1883
  topic_prefix: city         # default "city"
  encoding: cbor             # cbor (default) | json
  # username, password (or ${ENV_VAR}), client_id, keepalive
  # tls: {ca_file, cert_file, key_file}: when given, the server certificate and host name are verified; never a plaintext fallback
buffer:
  max_mb: 256                # cap; when full the oldest readings are evicted and counted
  commit_interval: 1s        # readings are committed (fsynced) at least this often; the most a power cut may lose
devices:
  - name: meter-1
    driver: modbus
    interval: 1s             # "500ms", "10s", "5m" or a number of seconds
    connection: {transport: tcp, host: 10.0.0.5, port: 502, unit_id: 1, timeout: 1s}
    points:
      - {name: temp,   table: holding, address: 10, type: float32}
      - {name: level,  table: holding, address: 20, type: int16, scale: 0.1, unit: m}
      - {name: energy, table: holding, address: 40, type: uint32, byte_order: CDAB}
      - {name: flow,   table: input,   address: 5,  type: uint16}
      - {name: door,   table: coil,    address: 3,  type: bool}
  - name: sim-1
    driver: simulated
    interval: 100ms
    points:
      - {name: ramp, signal: counter}
      - {name: wave, signal: sine, period: 60s, amplitude: 10}
"""  # noqa: E501 (the issue's long comment line, kept verbatim)

MINIMAL = """\
gateway:
  id: gw-1
mqtt:
  host: {host}
  password: {password}
devices:
  - name: sim-1
    driver: simulated
    points:
      - {{name: ramp}}
"""


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(path: Path | str, environ: dict[str, str] | None = None) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        load_config(path, environ=environ or {})
    return caught.value


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 2 s ", 2.0),
        ("3", 3.0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10 sec", "5min", "-1s", "s", "", "1d", True, None, [1], "1e3"])
def test_parse_duration_rejects_with_the_value_quoted(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("zero", [0, 0.0, "0s", "0ms", -2])
def test_parse_duration_rejects_zero_and_negative(zero: object) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(zero)


# --- the issue's example ----------------------------------------------------------------------


def test_issue_example_loads_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ISSUE_EXAMPLE), environ={})
    assert isinstance(cfg, Config)
    assert cfg.gateway.id == "pkt-rd-0001" and cfg.gateway.data_dir == Path("/var/lib/gateway")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.mqtt.encoding) == (
        "broker.example.org",
        1883,
        "city",
        "cbor",
    )
    assert cfg.mqtt.password is None and cfg.mqtt.tls is None
    assert (cfg.buffer.max_mb, cfg.buffer.commit_interval) == (256, 1.0)
    meter, sim = cfg.devices
    assert isinstance(meter, DeviceSpec) and isinstance(meter.options, ModbusConfig)
    assert (meter.name, meter.driver, meter.interval, meter.enabled) == ("meter-1", "modbus", 1.0, True)
    conn = meter.options.connection
    assert (conn.transport, conn.host, conn.port, conn.unit_id, conn.timeout) == ("tcp", "10.0.0.5", 502, 1, 1.0)
    temp, level, energy, flow, door = meter.options.points
    assert (temp.type, temp.table, temp.address, temp.byte_order) == ("float32", "holding", 10, "ABCD")
    assert (level.type, level.scale, level.unit) == ("int16", 0.1, "m")
    assert (energy.type, energy.byte_order) == ("uint32", "CDAB")
    assert (flow.table, flow.address, door.table, door.type) == ("input", 5, "coil", "bool")
    assert isinstance(sim.options, SimulatedConfig) and sim.interval == pytest.approx(0.1)
    assert [(p.name, p.signal, p.period, p.amplitude) for p in sim.options.points] == [
        ("ramp", "counter", 60.0, 1.0),
        ("wave", "sine", 60.0, 10.0),
    ]
    assert meter.options.connection.host == "10.0.0.5"


def test_reference_example_file_matches_the_issue(tmp_path: Path) -> None:
    reference = load_config(REPO / "config" / "example.yaml", environ={})
    issue = load_config(write(tmp_path, ISSUE_EXAMPLE), environ={})
    assert reference.hash == issue.hash  # comments and layout differ, content does not
    assert reference.path == REPO / "config" / "example.yaml"


def test_loading_does_not_import_pymodbus() -> None:
    code = (
        "import sys; from gateway.config.load import load_config; "
        "load_config(sys.argv[1], environ={}); print('pymodbus' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "config" / "example.yaml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False"


def test_result_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ISSUE_EXAMPLE), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hash = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.mqtt.port = 1  # type: ignore[misc]
    assert isinstance(cfg.devices, tuple)


# --- ${ENV} -----------------------------------------------------------------------------------


def test_env_whole_and_partial_substitution(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(host="${HOST}", password="pw-${PW}-end"))
    cfg = load_config(path, environ={"HOST": "broker.local", "PW": "s3cret"})
    assert cfg.mqtt.host == "broker.local"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "pw-s3cret-end"


def test_env_defaults_and_literal_dollar(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(host="${HOST:-fallback.local}", password="'$${NOT_A_VAR}'"))
    cfg = load_config(path, environ={})
    assert cfg.mqtt.host == "fallback.local"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "${NOT_A_VAR}"
    cfg = load_config(path, environ={"HOST": ""})  # ":-" also covers an empty variable
    assert cfg.mqtt.host == "fallback.local"


def test_env_non_string_fields_take_text(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(host="h", password="p") + "buffer:\n  max_mb: ${MB}\n")
    assert load_config(path, environ={"MB": "12.5"}).buffer.max_mb == 12.5


def test_env_default_is_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_HOST", "from-os.local")
    cfg = load_config(write(tmp_path, MINIMAL.format(host="${GW_TEST_HOST}", password="p")))
    assert cfg.mqtt.host == "from-os.local"


def test_env_unset_names_variable_and_field(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, MINIMAL.format(host="h", password="${MQTT_PASSWORD}")))
    assert str(err) == "gateway.yaml:5: mqtt.password: environment variable 'MQTT_PASSWORD' is not set".replace(
        "gateway.yaml", str(tmp_path / "gateway.yaml")
    )


def test_env_unset_is_reported_once(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, MINIMAL.format(host="${MQTT_HOST}", password="p")))
    assert [(p.line, p.path, p.message) for p in err.problems] == [
        (4, "mqtt.host", "environment variable 'MQTT_HOST' is not set")
    ]  # and not also "mqtt.host: must not be empty" for the empty result


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    text = MINIMAL.format(host="h", password="${PW}") + "  - name: sim-1\n    driver: simulated\n"
    err = load_error(write(tmp_path, text), environ={"PW": "hunter2-very-secret"})
    assert "hunter2" not in str(err) and "duplicate device name" in str(err)
    err = load_error(write(tmp_path, "gateway: {id: g}\nmqtt:\n  host: h\n  password: 424242\n  colour: red\n"))
    assert "424242" not in str(err)
    assert "mqtt.password: '***' is not text" in str(err)


def test_bad_reference_syntax(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, MINIMAL.format(host="${HOST", password="${1X}")))
    messages = [p.message for p in err.problems]
    assert any("without a closing '}'" in m for m in messages)
    assert any("not a valid ${...} reference" in m for m in messages)


# --- error reporting --------------------------------------------------------------------------


def test_problems_carry_file_line_path_message_and_are_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ISSUE_EXAMPLE.replace("type: float32", "type: floaty").replace("port: 1883", "port: 0"))
    err = load_error("gateway.yaml")
    assert err.problems == [
        Problem("gateway.yaml", 6, "mqtt.port", "0 is out of range (1 to 65535)"),
        Problem(
            "gateway.yaml",
            20,
            "devices[0].points[0].type",
            "'floaty' is not one of int16, uint16, int32, uint32, int64, uint64, float32, float64, bool,"
            " int8, uint8, float16, string (did you mean 'float16' or 'float32' or 'float64'?)",
        ),
    ]
    assert str(err).splitlines()[1].startswith("gateway.yaml:20: devices[0].points[0].type: 'floaty' is not one of")


def test_file_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    assert str(load_error(Path("etc/missing.yaml"))) == "etc/missing.yaml: file not found"
    assert str(load_error(tmp_path / "etc")) == f"{tmp_path / 'etc'}: is a directory, not a config file"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert str(load_error(path)) == f"{path}: cannot read the file: Permission denied"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\n---\nb: 2\n", ":2: YAML syntax error: only one document is allowed"),
        ("a: *nowhere\n", ":1: YAML syntax error: found undefined alias 'nowhere'"),
        ("a: &x [*x]\n", ":1: YAML syntax error: an alias refers to itself"),
        ("a: !!python/object:os.system x\n", ":1: YAML syntax error: could not determine a constructor"),
        ("a: \x00\n", ":1: YAML syntax error: control character '\\x00' is not allowed"),
        ("just text\n", ":1: the top level must be a mapping (gateway:, mqtt:, ...), not 'just text'"),
        ("~\n", ": the file is empty"),
        ("yes: 1\n", ":1: key 'yes' is read as true, not as text; put it in quotes"),
    ],
)
def test_yaml_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    assert f"{path}{expected}" in str(load_error(path))


def test_every_problem_is_collected(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace("address: 10,", "address: 70000,").replace("signal: sine", "signal: square")
    text = text.replace("encoding: cbor", "encoding: xml").replace("name: sim-1", "name: meter-1")
    lines = str(load_error(write(tmp_path, text))).splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "mqtt.encoding",
        "devices[0].points[0].address",
        "devices[1].name",
        "devices[1].points[1].signal",
    ]


def test_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    text = """\
    gateway: {id: gw-1}
    mqtt: {host: h}
    devices:
      - &meter
        name: meter-1
        driver: modbus
        connection: {host: 10.0.0.5}
        points:
          - {name: temp, address: 10, type: float32}
      - <<: *meter
        name: meter-2
        connection: {host: 10.0.0.6}
    """
    cfg = load_config(write(tmp_path, text), environ={})
    assert [d.name for d in cfg.devices] == ["meter-1", "meter-2"]
    assert cfg.devices[1].options.connection.host == "10.0.0.6"
    assert cfg.devices[1].options.points[0].name == "temp"


def test_duplicate_point_is_reported_once_at_the_point(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace("{name: flow,", "{name: temp,")
    assert [str(p).split(":", 2)[1:] for p in load_error(write(tmp_path, text)).problems] == [
        ["23", " devices[0].points[3].name: duplicate point name 'temp' (first at line 20)"]
    ]


def test_identical_bit_addresses_in_different_tables_do_not_overlap(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace(
        "{name: flow,   table: input,   address: 5,  type: uint16}",
        "{name: flow,   table: discrete, address: 3,  type: bool}",
    )
    assert len(load_config(write(tmp_path, text), environ={}).devices) == 2


# --- drivers the loader cannot trust ----------------------------------------------------------


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: int = 0

    @field_validator("level")
    @classmethod
    def _check(cls, value: int) -> int:
        if value == 1:
            raise ConfigError("level 1 is reserved")
        if value == 2:
            raise RuntimeError("driver bug")
        return value


class _FakeDriver:
    Config = _Opts


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (1, "devices[0]: level 1 is reserved"),
        (2, "devices[0]: driver 'fake' failed checking this entry: RuntimeError: driver bug"),
    ],
)
def test_driver_exceptions_become_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: int, expected: str
) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _FakeDriver)
    text = f"gateway: {{id: g}}\nmqtt: {{host: h}}\ndevices:\n  - {{name: d, driver: fake, level: {level}}}\n"
    assert str(load_error(write(tmp_path, text))).endswith(f":4: {expected}")


def test_broken_driver_package_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> type:
        raise ImportError("No module named 'vendorlib'")

    monkeypatch.setattr(config_module, "load_driver", broken)
    text = "gateway: {id: g}\nmqtt: {host: h}\ndevices:\n  - name: d\n    driver: fake\n"
    assert str(load_error(write(tmp_path, text))).endswith(
        ":5: devices[0].driver: driver 'fake' could not be loaded: ImportError: No module named 'vendorlib'"
    )


# --- hash -------------------------------------------------------------------------------------


def test_hash_is_stable_and_tracks_content(tmp_path: Path) -> None:
    first = load_config(write(tmp_path, ISSUE_EXAMPLE, "a.yaml"), environ={}).hash
    assert re.fullmatch(r"[0-9a-f]{12}", first), first
    assert load_config(write(tmp_path, ISSUE_EXAMPLE, "b.yaml"), environ={}).hash == first
    same = ISSUE_EXAMPLE.replace("interval: 1s ", "interval: 1  ").replace("port: 1883", "port: '1883'")
    assert load_config(write(tmp_path, same, "c.yaml"), environ={}).hash == first
    changed = ISSUE_EXAMPLE.replace("scale: 0.1", "scale: 0.2")
    assert load_config(write(tmp_path, changed, "d.yaml"), environ={}).hash != first


def test_hash_follows_env_but_not_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(host="${HOST}", password="${PW}"))
    base = load_config(path, environ={"HOST": "a", "PW": "x"}).hash
    assert load_config(path, environ={"HOST": "b", "PW": "x"}).hash != base
    # The hash is published in the status: it must not let anyone test password guesses.
    assert load_config(path, environ={"HOST": "a", "PW": "y"}).hash == base


def test_os_environ_is_untouched(tmp_path: Path) -> None:
    before = dict(os.environ)
    load_config(write(tmp_path, MINIMAL.format(host="${H:-x}", password="p")))
    assert dict(os.environ) == before


# --- shapes the built-in models do not use yet (serial connections come next) ------------------


class _Tcp(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    transport: Literal["tcp"]
    host: str


class _Rtu(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    transport: Literal["rtu"]
    serial_port: str
    baudrate: int = Field(default=9600, gt=0)


class _UnionOpts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    connection: Annotated[_Tcp | _Rtu, Field(discriminator="transport")]
    fallback: _Tcp | _Rtu | None = None


class _UnionDriver:
    Config = _UnionOpts


@pytest.mark.parametrize(
    ("connection", "expected"),
    [
        ("{transport: udp}", ":4: devices[0].connection.transport: 'udp' is not one of tcp, rtu"),
        ("{host: h}", ":4: devices[0].connection: required key 'transport' is missing"),
        ("{transport: rtu}", ":4: devices[0].connection: required key 'serial_port' is missing"),
        ("{transport: rtu, serial_port: /dev/x, baudrate: -1}", ":4: devices[0].connection.baudrate: -1 must be"),
        (
            "{transport: rtu, serial_port: /dev/x, bauds: 1}",
            "connection: unknown key 'bauds' (did you mean 'baudrate'?)",
        ),
    ],
)
def test_discriminated_union_errors_name_real_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: str, expected: str
) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _UnionDriver)
    text = f"gateway: {{id: g}}\nmqtt: {{host: h}}\ndevices:\n  - {{name: d, driver: x, connection: {connection}}}\n"
    assert expected in str(load_error(write(tmp_path, text)))


def test_plain_union_errors_drop_member_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "load_driver", lambda name: _UnionDriver)
    text = "gateway: {id: g}\nmqtt: {host: h}\ndevices:\n  - name: d\n    driver: x\n"
    text += "    connection: {transport: tcp, host: h}\n    fallback: {transport: rtu}\n"
    for problem in load_error(write(tmp_path, text)).problems:
        assert problem.path.startswith("devices[0].fallback") and "_Tcp" not in problem.path, problem
