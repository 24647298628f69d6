"""Remote commands (gateway/publish/commands.py): reading a request, the result messages, repeated ids, logging.

The write path itself is the daemon's (``run_tool_command``): here it is either a recording fake,
or the real one over the real Modbus driver for the refusals, which are decided before anything
is sent (so no device is needed). End to end, over a broker and a Modbus server:
tests/integration/test_commands_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.config.load import ConfigFileError, load_config
from gateway.daemon.tools import run_tool_command
from gateway.driver import DeviceInfo, SharedPool
from gateway.publish.commands import MAX_PAYLOAD, BadCommand, Command, Commands, parse

OK_ANSWER = {"ok": True, "written": "holding 10 <- 00D7 (FC6)",
             "readback": {"name": "setpoint", "raw": "00D7", "value": 21.5, "unit": "degC", "error": None}}


class FakeRun:
    """Stands in for the daemon's write path: records requests, answers ``answer`` (after ``gate``)."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.answer = answer or OK_ANSWER
        self.requests: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer


def cmd(id: Any = "c-1", point: str = "setpoint", value: Any = 21.5, **extra: Any) -> bytes:
    return json.dumps({"id": id, "point": point, "value": value, **extra}).encode()


# --- reading a request ---------------------------------------------------------------------------------

def test_parse_a_request() -> None:
    assert parse(b'{"id": "c-1", "point": "setpoint", "value": 21.5}') == Command("c-1", "setpoint", 21.5)
    assert parse(b'{"id": 7, "point": "relay", "value": true}') == Command(7, "relay", True)
    assert parse(b'{"id": "x", "point": "mode", "value": "manual"}') == Command("x", "mode", "manual")


@pytest.mark.parametrize(
    ("payload", "id", "reason"),
    [
        (b'{"id": "c-1", "point": ', None, "malformed JSON: Expecting value"),
        (b"\xff\xfe", None, "malformed JSON: 'utf-8' codec can't decode"),
        (b"", None, "malformed JSON"),
        (b'["c-1", "setpoint", 21.5]', None, 'a command is a JSON object {"id", "point", "value"}'),
        (b'{"point": "setpoint", "value": 1}', None, "the request needs an id"),
        (b'{"id": null, "point": "setpoint", "value": 1}', None, "the request needs an id"),
        (b'{"id": true, "point": "setpoint", "value": 1}', None, "the request needs an id"),
        (b'{"id": 1.5, "point": "setpoint", "value": 1}', None, "the request needs an id"),
        (b'{"id": "", "point": "setpoint", "value": 1}', None, "the request needs an id"),
        (b'{"id": "' + b"x" * 129 + b'", "point": "p", "value": 1}', None, "a string of 1 to 128 characters"),
        (b'{"id": "c-1", "value": 1}', "c-1", "the request needs a point"),
        (b'{"id": "c-1", "point": 5, "value": 1}', "c-1", "the request needs a point"),
        (b'{"id": "c-1", "point": "setpoint"}', "c-1", "the request needs a value"),
        (b'{"id": "c-1", "point": "setpoint", "value": null}', "c-1", "the request needs a value"),
        (b'{"id": "c-1", "point": "setpoint", "value": [1, 2]}', "c-1", "the request needs a value"),
        (b'{"id": "c-1", "point": "setpoint", "value": NaN}', None, "malformed JSON: NaN is not a number"),
        (b'{"id": "c-1", "point": "setpoint", "value": 1e999}', "c-1", "value inf is not a finite number"),
        (b'{"id": 3, "point": "setpoint", "value": 1, "unit": "K"}', 3, "unknown key 'unit'"),
    ],
)
def test_parse_refuses_what_is_not_a_command(payload: bytes, id: Any, reason: str) -> None:
    with pytest.raises(BadCommand) as caught:
        parse(payload)
    assert reason in str(caught.value)
    assert caught.value.id == id


def test_parse_refuses_a_large_payload() -> None:
    with pytest.raises(BadCommand, match=f"request too large \\({MAX_PAYLOAD + 1} bytes"):
        parse(b" " * (MAX_PAYLOAD + 1))


# --- results ---------------------------------------------------------------------------------------------

async def test_an_allowed_write_runs_the_daemon_write_and_answers_ok() -> None:
    run = FakeRun()
    result = await Commands(run).handle("meter-1", cmd("c-1", "setpoint", 21.5))
    assert run.requests == [{"cmd": "write", "device": "meter-1", "point": "setpoint", "value": 21.5,
                             "via": "remote command 'c-1'"}]
    assert result == {"id": "c-1", "ok": True, "point": "setpoint", "written": "holding 10 <- 00D7 (FC6)",
                      "readback": 21.5}


async def test_a_readback_that_failed_is_null() -> None:
    answer = {**OK_ANSWER, "readback": {**OK_ANSWER["readback"], "error": "no response"}}
    result = await Commands(FakeRun(answer)).handle("meter-1", cmd())
    assert result["ok"] is True and result["readback"] is None


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ({"ok": False, "refused": True, "error": "point 'reading' is not writable"}, True),
        ({"ok": False, "unknown_device": True, "error": "device 'nope' is not polled by the running gateway"}, True),
        ({"ok": False, "error": "no response from unit 1 at 127.0.0.1:502"}, False),
    ],
)
async def test_a_refused_or_failed_write_answers_the_reason(answer: dict[str, Any], refused: bool) -> None:
    result = await Commands(FakeRun(answer)).handle("meter-1", cmd("c-2"))
    assert result == {"id": "c-2", "ok": False, "refused": refused, "error": answer["error"]}


async def test_malformed_requests_are_answered_and_never_run() -> None:
    run = FakeRun()
    commands = Commands(run)
    bad_json = await commands.handle("meter-1", b"{not json")
    no_id = await commands.handle("meter-1", b'{"point": "setpoint", "value": 1}')
    no_value = await commands.handle("meter-1", b'{"id": "c-3", "point": "setpoint"}')
    assert run.requests == []
    assert bad_json["id"] is None and bad_json["ok"] is False and bad_json["refused"] is True
    assert bad_json["error"].startswith("malformed JSON: ")
    assert no_id == {"id": None, "ok": False, "refused": True,
                     "error": "the request needs an id: a string of 1 to 128 characters or an integer"}
    assert no_value == {"id": "c-3", "ok": False, "refused": True,
                        "error": "the request needs a value: a number, true/false or text"}
    # An unreadable request is not remembered: the same id, now well formed, is executed.
    fixed = await commands.handle("meter-1", cmd("c-3"))
    assert fixed["ok"] is True and "duplicate" not in fixed and len(run.requests) == 1
    assert commands.counters == {"received": 4, "ok": 1, "refused": 3, "failed": 0, "duplicate": 0}


async def test_a_handler_bug_is_a_failed_result() -> None:
    async def broken(request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    result = await Commands(broken).handle("meter-1", cmd("c-4"))
    assert result == {"id": "c-4", "ok": False, "refused": False, "error": "RuntimeError: boom"}


# --- repeated ids ----------------------------------------------------------------------------------------

async def test_a_repeated_id_is_not_executed_twice() -> None:
    run = FakeRun()
    commands = Commands(run)
    first = await commands.handle("meter-1", cmd("c-5", value=21.5))
    again = await commands.handle("meter-1", cmd("c-5", value=21.5))
    other_value = await commands.handle("meter-1", cmd("c-5", value=30))  # the id decides, not the content
    assert len(run.requests) == 1
    assert again == {**first, "duplicate": True} == other_value
    assert commands.counters["duplicate"] == 2 and commands.counters["ok"] == 1


async def test_a_repeated_refusal_is_answered_the_same() -> None:
    run = FakeRun({"ok": False, "refused": True, "error": "4 is below the minimum 5 of point 'setpoint'"})
    commands = Commands(run)
    first = await commands.handle("meter-1", cmd("c-6", value=4))
    again = await commands.handle("meter-1", cmd("c-6", value=4))
    assert len(run.requests) == 1
    assert again == {**first, "duplicate": True}
    assert again["error"] == "4 is below the minimum 5 of point 'setpoint'"


async def test_a_repeat_that_arrives_while_the_first_runs_waits_for_its_result() -> None:
    run = FakeRun()
    run.gate = asyncio.Event()
    commands = Commands(run)
    first = asyncio.create_task(commands.handle("meter-1", cmd("c-7")))
    second = asyncio.create_task(commands.handle("meter-1", cmd("c-7")))
    await asyncio.wait_for(run.started.wait(), 5)  # the write waits at the gate; the repeat waits for it
    assert len(run.requests) == 1 and not second.done()
    run.gate.set()
    results = await asyncio.gather(first, second)
    assert len(run.requests) == 1
    assert results[1] == {**results[0], "duplicate": True}


async def test_ids_are_per_device_and_typed() -> None:
    run = FakeRun()
    commands = Commands(run)
    await commands.handle("meter-1", cmd("1"))
    await commands.handle("meter-2", cmd("1"))  # another device: another command
    await commands.handle("meter-1", cmd(1))  # the number 1 is not the text "1"
    assert [r["device"] for r in run.requests] == ["meter-1", "meter-2", "meter-1"]


async def test_only_the_last_ids_are_remembered() -> None:
    run = FakeRun()
    commands = Commands(run, remember=2)
    for id in ("a", "b", "c"):
        await commands.handle("meter-1", cmd(id))
    assert "duplicate" in await commands.handle("meter-1", cmd("c"))
    assert "duplicate" in await commands.handle("meter-1", cmd("b"))
    assert "duplicate" not in await commands.handle("meter-1", cmd("a"))  # forgotten: executed again
    assert len(run.requests) == 4


async def test_the_same_id_on_two_devices_runs_on_both_and_each_is_remembered() -> None:
    run = FakeRun()
    commands = Commands(run)
    first = [await commands.handle(device, cmd("c-1")) for device in ("meter-1", "meter-2")]
    again = [await commands.handle(device, cmd("c-1")) for device in ("meter-1", "meter-2")]
    assert [r["device"] for r in run.requests] == ["meter-1", "meter-2"]
    assert all("duplicate" not in r for r in first) and all(r["duplicate"] for r in again)


async def test_each_device_remembers_its_own_last_ids() -> None:
    run = FakeRun()
    commands = Commands(run, remember=2)
    for id in ("a", "b"):
        await commands.handle("meter-1", cmd(id))
    for id in ("x", "y", "z"):  # a busier device does not push meter-1's ids out
        await commands.handle("meter-2", cmd(id))
    assert "duplicate" in await commands.handle("meter-1", cmd("a"))
    assert "duplicate" in await commands.handle("meter-1", cmd("b"))
    assert "duplicate" in await commands.handle("meter-2", cmd("z"))
    assert "duplicate" not in await commands.handle("meter-2", cmd("x"))  # its 3rd-last: forgotten
    assert [r["device"] for r in run.requests] == ["meter-1"] * 2 + ["meter-2"] * 4


async def test_a_command_for_a_device_not_polled_is_not_remembered() -> None:
    unknown = {"ok": False, "unknown_device": True, "error": "device 'nope' is not polled by the running gateway"}
    run = FakeRun(unknown)
    commands = Commands(run)
    for n in range(50):  # made-up device names cannot fill the memory
        await commands.handle(f"nope-{n}", cmd("c-1"))
    again = await commands.handle("nope-0", cmd("c-1"))
    assert again == {"id": "c-1", "ok": False, "refused": True, "error": unknown["error"]}  # asked again
    assert len(run.requests) == 51 and commands._seen == {}


async def test_a_retained_command_is_never_executed() -> None:
    run = FakeRun()
    commands = Commands(run)
    result = await commands.handle("meter-1", cmd("c-8"), True)
    assert run.requests == []
    assert result == {"id": "c-8", "ok": False, "refused": True,
                      "error": "a retained command is never executed (publish commands with retain false)"}
    assert (await commands.handle("meter-1", cmd("c-8")))["ok"] is True  # not remembered as done


async def test_too_many_at_once_is_busy_and_closing_refuses() -> None:
    run = FakeRun()
    run.gate = asyncio.Event()
    commands = Commands(run, max_running=1)
    first = asyncio.create_task(commands.handle("meter-1", cmd("c-9")))
    await asyncio.wait_for(run.started.wait(), 5)
    busy = await commands.handle("meter-1", cmd("c-10"))
    assert busy == {"id": "c-10", "ok": False, "refused": True, "error": "busy: 1 commands in progress, retry later"}
    run.gate.set()
    assert (await first)["ok"] is True
    assert (await commands.handle("meter-1", cmd("c-10")))["ok"] is True  # busy was not remembered
    await commands.close()
    stopping = await commands.handle("meter-1", cmd("c-11"))
    assert stopping == {"id": "c-11", "ok": False, "refused": True, "error": "the gateway is stopping"}
    assert len(run.requests) == 2


# --- logging ----------------------------------------------------------------------------------------------

async def test_every_command_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.commands")
    commands = Commands(FakeRun())
    await commands.handle("meter-1", cmd("c-12", "setpoint", 21.5))
    await commands.handle("meter-1", cmd("c-12", "setpoint", 21.5))
    await commands.handle("meter-1", b"{oops")
    await commands.handle("bad\nname", cmd("c-13", "x", "a\nb"), True)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.publish.commands"]
    assert lines == [
        "command c-12 to meter-1: setpoint = 21.5: ok, written holding 10 <- 00D7 (FC6), read back 21.5",
        "command c-12 to meter-1: setpoint = 21.5: duplicate, not executed again "
        "(first: ok, written holding 10 <- 00D7 (FC6), read back 21.5)",
        "command without id to meter-1: 5 bytes: refused: malformed JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        "command c-13 to 'bad\\nname': x = 'a\\nb': refused: a retained command is never executed "
        "(publish commands with retain false)",
    ]
    assert all("\n" not in line for line in lines)
    assert [r.levelname for r in caplog.records if r.name == "gateway.publish.commands"] == ["INFO", "INFO", "WARNING",
                                                                                     "WARNING"]


# --- through the daemon's real write path ------------------------------------------------------------------

POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "writable": True, "min": 5, "max": 35},
    {"name": "reading", "address": 20, "type": "uint16"},
]


@pytest.fixture
def real_path() -> Commands:
    """Commands over run_tool_command and a real Modbus driver (refusals never reach the network)."""
    config = ModbusConfig.model_validate({"connection": {"host": "127.0.0.1", "port": 1}, "points": POINTS})
    driver = ModbusDriver(config, DeviceInfo(name="meter-1", interval=1.0, shared=SharedPool()))
    task = SimpleNamespace(driver=driver, bus_lock=None, spec=SimpleNamespace(name="meter-1", driver="modbus"))
    return Commands(lambda request: run_tool_command({"meter-1": task}, request))


@pytest.mark.parametrize(
    ("device", "point", "value", "error"),
    [
        ("meter-1", "reading", 1, "point 'reading' is not writable (it needs writable: true in the config)"),
        ("meter-1", "setpoint", 35.5, "35.5 is above the maximum 35 of point 'setpoint'"),
        ("meter-1", "setpoint", 4, "4 is below the minimum 5 of point 'setpoint'"),
        ("meter-1", "nosuch", 1, "device 'meter-1' has no point 'nosuch' (writable points: setpoint)"),
        ("meter-9", "setpoint", 20, "device 'meter-9' is not polled by the running gateway"),
    ],
)
async def test_refusals_of_the_real_write_path(real_path: Commands, device: str, point: str, value: Any,
                                               error: str) -> None:
    result = await real_path.handle(device, cmd("r-1", point, value))
    assert result == {"id": "r-1", "ok": False, "refused": True, "error": error}


# --- config ----------------------------------------------------------------------------------------------

def config_file(tmp_path: Path, **extra: Any) -> Path:
    doc = {"gateway": {"id": "gw-1", "data_dir": str(tmp_path / "data")}, "mqtt": {"host": "localhost"}, **extra}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_commands_are_off_by_default_and_can_be_enabled(tmp_path: Path) -> None:
    off = load_config(config_file(tmp_path), environ={})
    assert off.commands.enabled is False and off.commands.remember_ids == 1000
    on = load_config(config_file(tmp_path, commands={"enabled": True, "remember_ids": 50}), environ={})
    assert on.commands.enabled is True and on.commands.remember_ids == 50
    assert on.hash != off.hash  # the status shows a config with commands on as a different one


def test_remember_ids_is_capped_at_10000(tmp_path: Path) -> None:
    assert load_config(config_file(tmp_path, commands={"remember_ids": 10_000}), environ={}).commands.remember_ids
    with pytest.raises(ConfigFileError, match=r"commands.remember_ids: 10001 is out of range \(1 to 10000\)"):
        load_config(config_file(tmp_path, commands={"remember_ids": 10_001}), environ={})


def test_commands_section_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_config(config_file(tmp_path, commands={"enabled": "maybe", "allow": ["x"]}), environ={})
    text = str(caught.value)
    assert "commands.enabled" in text and "unknown key 'allow'" in text
