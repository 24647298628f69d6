"""The `gateway` command finds the technician tools drivers offer through their ``tools`` hook."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import driver as driver_module
from gateway.cli import main as cli_main
from gateway.cli.tools import add_tool_commands, cmd_read
from gateway.driver import DriverTools, ToolCommand, driver_tools

SCAN_OPTIONS = ("--port", "--host", "--tcp-port", "--transport", "--stopbits", "--bytesize", "--baudrate", "--parity",
                "--units", "--first", "--timeout")
DIRECT_READ_OPTIONS = ("--port", "--host", "--tcp-port", "--transport", "--baudrate", "--parity", "--unit",
                       "--timeout", "--table", "--address", "--count", "--type", "--byte-order")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli_main.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_the_modbus_driver_offers_scan_and_a_direct_read() -> None:
    tools = driver_tools()
    assert [command.name for command in tools["modbus"].commands] == ["scan"]
    assert tools["modbus"].direct_read is not None
    assert "simulated" not in tools  # a driver without the hook offers nothing, and works as before


def test_scan_help_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "scan")
    assert text.startswith("usage: gateway scan ")
    assert all(option in text for option in SCAN_OPTIONS)
    assert "9600,19200,38400,57600,115200,4800,2400" in text  # the default baud rates


def test_read_help_has_the_drivers_direct_connection_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "read")
    assert "direct connection (no config needed)" in text
    assert all(option in text for option in ("--config", "--device", "--trace", "--json", *DIRECT_READ_OPTIONS))
    assert "{int8,uint8,int16,uint16,float16,int32,uint32,float32,int64,uint64,float64,bool,string}" in text


def test_gateway_help_lists_the_tools_in_their_place(capsys: pytest.CaptureFixture[str]) -> None:
    listed = [line.split()[0] for line in _help(capsys).splitlines() if line[:4] == "    " and line[4:5] != " "]
    assert listed == ["run", "check", "status", "demo", "bench", "read", "scan", "write", "fleet", "web", "version"]


@pytest.mark.parametrize("argv", [["run"], ["--log-level", "DEBUG", "check", "-c", "x.yaml"], ["version"]])
def test_plain_commands_import_no_driver(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    def refuse() -> dict[str, DriverTools]:
        raise AssertionError("every installed driver imported for a command that uses none of their tools")

    monkeypatch.setattr(driver_module, "driver_tools", refuse)
    assert cli_main.build_parser(argv).parse_args(argv).command == argv[-1 if len(argv) == 1 else 2]
    with pytest.raises(AssertionError, match="every installed driver"):
        cli_main.build_parser(["scan", "--port", "/dev/x"])


def _entry(load: Any) -> Any:
    return SimpleNamespace(load=load)


def test_a_broken_driver_offers_no_tools_and_spoils_no_others(monkeypatch: pytest.MonkeyPatch) -> None:
    good = DriverTools(commands=(ToolCommand("probe", "probe a line", lambda parser: None, lambda args: 0),))

    def missing_library() -> Any:
        raise ImportError("No module named 'vendorlib'")

    def failing_hook() -> DriverTools:
        raise RuntimeError("driver bug")

    monkeypatch.setattr(driver_module, "available_drivers", lambda: {
        "broken": _entry(missing_library),
        "buggy": _entry(lambda: SimpleNamespace(tools=failing_hook)),
        "good": _entry(lambda: SimpleNamespace(tools=lambda: good)),
        "plain": _entry(lambda: SimpleNamespace()),
    })
    assert driver_tools() == {"good": good}


def test_a_command_name_already_taken_is_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    def command(name: str, status: int) -> ToolCommand:
        return ToolCommand(name, f"the {name} of driver {status}", lambda parser: None, lambda args: status)

    parser = argparse.ArgumentParser(prog="gateway")
    sub = parser.add_subparsers(dest="command")
    tools = {"alpha": DriverTools(commands=(command("scan", 1), command("write", 1), command("run", 1))),
             "beta": DriverTools(commands=(command("scan", 2), command("sweep", 2)))}
    add_tool_commands(sub, lambda parser: None, tools, taken=("run",))
    assert capsys.readouterr().err.splitlines() == [
        "gateway: command 'write' of driver 'alpha' is left out: the name is taken",
        "gateway: command 'run' of driver 'alpha' is left out: the name is taken",
        "gateway: command 'scan' of driver 'beta' is left out: the name is taken",
    ]
    assert [parser.parse_args([name]).tool(None) for name in ("scan", "sweep")] == [1, 2]


def test_read_without_a_drivers_direct_read_uses_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(direct_reads=[], config="/nonexistent/gateway.yaml", device=None, trace=False,
                              json=False)
    assert cmd_read(args) == 2
    assert "/nonexistent/gateway.yaml" in capsys.readouterr().err
