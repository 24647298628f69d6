"""The serial_line parser and config: framing, regex and delimited fields, types, NMEA checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.driver import SerialLineDriver
from drivers.serial_line.parser import LineParser, nmea_body
from gateway.config.load import ConfigFileError, load_config
from gateway.driver import DeviceInfo

PORT = {"serial_port": "/dev/ttyUSB0"}
WEATHER = {
    "connection": PORT,
    "regex": r"T=(?P<temp>-?[0-9.]+) H=(?P<hum>[0-9.]+) W=(?P<wind>\S+)",
    "points": [
        {"name": "temp", "unit": "°C"},
        {"name": "humidity", "group": "hum", "unit": "%"},
        {"name": "wind", "type": "float", "scale": 0.5},
    ],
}


def parser(**options: Any) -> LineParser:
    return LineParser(SerialLineConfig(**{**WEATHER, **options}))


def xor(body: str) -> str:
    check = 0
    for char in body:
        check ^= ord(char)
    return f"{check:02X}"


def test_regex_lines_become_records() -> None:
    p = parser()
    assert p.feed(b"T=21.5 H=40 W=123\r\nT=-3 H=99.5 W=0\r\n") == [(21.5, 40.0, 61.5), (-3.0, 99.5, 0.0)]
    assert p.counters["lines"] == 2


def test_a_line_split_over_reads() -> None:
    p = parser()
    line = b"T=21.5 H=40 W=123\r\n"
    for i in range(1, len(line)):
        assert p.feed(line[:i]) == []
        assert p.feed(line[i:]) == [(21.5, 40.0, 61.5)]


def test_bad_lines_are_counted_and_dropped() -> None:
    p = parser()
    got = p.feed(b"hello\r\n\r\nT=1 H=2 W=3\r\n\xff\xfe\r\n")
    assert got == [(1.0, 2.0, 1.5)]
    assert p.counters["bad_lines"] == 2  # no match; not ascii. The empty line is no line at all.


def test_a_field_that_does_not_convert_is_none_and_counted() -> None:
    p = parser()
    assert p.feed(b"T=20 H=50 W=---\r\n") == [(20.0, 50.0, None)]
    assert p.counters["bad_values"] == 1 and p.counters["lines"] == 1


def test_terminator_lf_tolerates_crlf_and_escapes_written_literally() -> None:
    config = SerialLineConfig(**{**WEATHER, "terminator": "\\n"})  # as YAML gives a bare \n
    assert config.terminator == "\n"
    assert LineParser(config).feed(b"T=1 H=2 W=3\r\nT=4 H=5 W=6\n") == [(1.0, 2.0, 1.5), (4.0, 5.0, 3.0)]


def test_custom_terminator() -> None:
    p = parser(terminator=";")
    assert p.feed(b"T=1 H=2 W=3;T=4 H=5 W=6;") == [(1.0, 2.0, 1.5), (4.0, 5.0, 3.0)]


def test_overlong_lines_are_dropped_whole() -> None:
    p = parser(max_line=32)
    assert p.feed(b"x" * 40) == []
    assert p.feed(b"T=9 H=9 W=9\r\nT=1 H=2 W=3\r\n") == [(1.0, 2.0, 1.5)]  # the tail of the long line is dropped
    assert p.counters["garbage_bytes"] == 40 + len(b"T=9 H=9 W=9\r\n")


def test_delimited_fields_and_types() -> None:
    p = LineParser(SerialLineConfig(connection=PORT, delimiter=",", points=[
        {"name": "station", "field": 0, "type": "str"},
        {"name": "level", "field": 2, "type": "int", "unit": "mm"},
        {"name": "level_m", "field": 2, "type": "int", "scale": 0.001, "unit": "m"},
        {"name": "alarm", "field": 3, "type": "bool"},
    ]))
    assert p.feed(b"ST1, x , 1234 ,ON\r\nST2,x,7,false\r\nST3,x\r\n") == [
        ("ST1", 1234, 1.234, True), ("ST2", 7, 0.007, False)
    ]
    assert p.counters["bad_lines"] == 1  # too few fields


def test_whitespace_delimiter() -> None:
    p = LineParser(SerialLineConfig(connection=PORT, delimiter="whitespace", points=[
        {"name": "a", "field": 0}, {"name": "b", "field": 1, "offset": -10}]))
    assert p.feed(b"  1.5 \t  20  \r\n") == [(1.5, 10.0)]


def test_nan_and_inf_are_not_values() -> None:
    p = LineParser(SerialLineConfig(connection=PORT, delimiter=" ", points=[
        {"name": "a", "field": 0}, {"name": "b", "field": 1}, {"name": "c", "field": 2}]))
    assert p.feed(b"nan -inf 1\r\n") == [(None, None, 1.0)]
    assert p.counters["bad_values"] == 2


def test_nmea_checksum() -> None:
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert body == nmea_body(f"${body}*{xor(body)}")
    assert nmea_body(f"${body}*00") is None
    assert nmea_body(f"${body}") is None
    assert nmea_body(f"{body}*{xor(body)}") is None


def test_nmea_lines_with_accept_filter() -> None:
    config = SerialLineConfig(connection=PORT, checksum="nmea", accept=r"^\$GPGGA", delimiter=",", points=[
        {"name": "fix", "field": 6, "type": "int"}, {"name": "altitude", "field": 9, "unit": "m"}])
    gga = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    rmc = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"
    data = f"${gga}*{xor(gga)}\r\n${rmc}*{xor(rmc)}\r\n${gga}*00\r\n".encode()
    p = LineParser(config)
    assert p.feed(data) == [(1, 545.4)]
    assert p.counters == {"lines": 1, "bad_lines": 0, "bad_checksum": 1, "bad_values": 0, "ignored": 1,
                          "garbage_bytes": 0}


def test_latin1_encoding() -> None:
    config = SerialLineConfig(connection=PORT, encoding="latin-1", regex=r"(?P<t>[0-9.]+)°C", points=[
        {"name": "t", "unit": "°C"}])
    assert LineParser(config).feed("21.5°C\r\n".encode("latin-1")) == [(21.5,)]


def test_driver_points_and_query_command() -> None:
    config = SerialLineConfig(**{**WEATHER, "mode": "query", "command": "R\\r\\n"})
    driver = SerialLineDriver(config, DeviceInfo("wx", 10.0))
    assert driver.points.names == ("temp", "humidity", "wind")
    assert driver.points.units == ("°C", "%", None)
    assert driver._query == b"R\r\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delimiter": ","}, "give regex (with named groups) or delimiter"),
        ({"regex": None}, "give regex (with named groups) or delimiter"),
        ({"regex": "T=(?P<temp>[0-9.]+"}, "not a valid regular expression"),
        ({"regex": "T=([0-9.]+)"}, "no named groups"),
        ({"points": [{"name": "temp"}, {"name": "x"}]}, "regex has no group 'x'"),
        ({"points": [{"name": "temp", "field": 1}]}, "field is for delimiter"),
        ({"mode": "query"}, "mode query needs command"),
        ({"command": "R\r\n"}, "command is sent in mode query only"),
        ({"mode": "query", "command": "R", "stale_after": "1m"}, "stale_after is for streaming"),
        ({"timeout": "1s"}, "timeout is for mode query"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"terminator": ""}, "at least 1 character"),
        ({"points": [{"name": "temp", "type": "str", "scale": 2}]}, "scale and offset do not apply to str"),
        ({"points": [{"name": "temp"}, {"name": "temp"}]}, "duplicate point name 'temp'"),
        ({"checksum": "crc16"}, "nmea"),
    ],
)
def test_bad_config(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SerialLineConfig(**{**WEATHER, **options})
    assert message in str(caught.value)


def test_delimiter_points_need_fields() -> None:
    with pytest.raises(ValidationError, match="needs field"):
        SerialLineConfig(connection=PORT, delimiter=",", points=[{"name": "a"}])


def test_config_file_errors_name_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = {"name": "wx", "driver": "serial_line", "connection": PORT, "regex": "(?P<t>.*)",
              "points": [{"name": "t", "typ": "float"}]}
    config = {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "mqtt": {"host": "h"}, "devices": [device]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as caught:
        load_config("config.yaml")
    assert str(caught.value).startswith("config.yaml:")
    assert "devices[0].points[0]" in str(caught.value) and "typ" in str(caught.value)


def test_two_serial_devices_on_one_port_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [{"name": n, "driver": "pms5003", "connection": PORT} for n in ("air-1", "air-2")]
    config = {"gateway": {"id": "gw", "data_dir": str(tmp_path)}, "mqtt": {"host": "h"}, "devices": devices}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as caught:
        load_config("config.yaml")
    assert "devices 'air-2' and 'air-1' both use /dev/ttyUSB0" in str(caught.value)
