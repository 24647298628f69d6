"""Garbage on the wire: a Modbus TCP server that misbehaves in every way we know of.

The driver's poll either raises DriverError (the device goes to state error) or returns per-point
errors; it never takes longer than its timeout, never hands on garbage as a value, and the next
good answer is read again. In the daemon, a misbehaving device never stops the poll loop or the
other devices.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import DeviceInfo, DriverError
from gateway.model import PollResult
from tests.support.broker import Mosquitto, Subscriber, has_all, telemetry
from tests.support.faults import (
    BAD_MODES,
    MisbehavingModbusServer,
    assert_accounted,
    bit_value,
    register_value,
    sim_device,
)
from tests.support.gateway_proc import GatewayProcess, base_config, drain_devices, new_gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 0.3
SLACK = 0.5  # scheduling on a loaded 2-core machine
POINTS = [
    {"name": "a", "address": 10, "type": "uint16"},
    {"name": "b", "table": "input", "address": 4, "type": "uint32"},
    {"name": "c", "table": "coil", "address": 3, "type": "bool"},
]
EXPECTED = [register_value(10), (register_value(4) << 16) | register_value(5), bit_value(3)]
# Answers that carry no usable data but are an answer: the points fail, the poll does not.
POINT_ERROR_MODES = {"exception": "exception 4 (device failure)", "short_pdu": "bad response"}
ACCEPTED_AS_DATA = "wrong_function"  # see test_answer_of_another_function_is_not_data


@pytest.fixture
def server() -> Iterator[MisbehavingModbusServer]:
    with MisbehavingModbusServer(seed=6) as srv:
        yield srv


@pytest.fixture
async def driver(server: MisbehavingModbusServer) -> AsyncIterator[ModbusDriver]:
    config = ModbusConfig(connection={"host": "127.0.0.1", "port": server.port, "timeout": TIMEOUT}, points=POINTS)
    drv = ModbusDriver(config, DeviceInfo(name="meter", interval=1.0))
    yield drv
    await drv.close()


async def _poll(driver: ModbusDriver) -> tuple[PollResult | DriverError, float]:
    """One poll: its result or its DriverError, and how long it took. Any other exception fails."""
    started = time.monotonic()
    try:
        result: PollResult | DriverError = await asyncio.wait_for(driver.poll(), TIMEOUT * 4 + 2)
    except DriverError as exc:
        result = exc
    return result, time.monotonic() - started


def _check(result: PollResult | DriverError) -> None:
    """A poll result never carries garbage: each point has the right value or an error."""
    if isinstance(result, DriverError):
        assert str(result)
        return
    for i, value in enumerate(result.values):
        if result.errors and i in result.errors:
            assert value is None and result.errors[i]
        else:
            assert value == EXPECTED[i], f"point {POINTS[i]['name']}: {value!r} is not what the device holds"


@pytest.mark.parametrize("mode", [m for m in BAD_MODES if m != ACCEPTED_AS_DATA])
async def test_each_bad_answer_fails_the_poll_in_time_and_the_next_poll_reads_again(
    mode: str, server: MisbehavingModbusServer, driver: ModbusDriver
) -> None:
    assert (await _poll(driver))[0].values == EXPECTED  # type: ignore[union-attr]
    server.set_mode(mode)
    result, took = await _poll(driver)
    assert took < TIMEOUT + SLACK, f"{mode}: the poll took {took:.2f} s"
    _check(result)
    if mode in POINT_ERROR_MODES:
        assert isinstance(result, PollResult) and result.errors
        assert all(POINT_ERROR_MODES[mode] in text for text in result.errors.values()), result.errors
    else:
        assert isinstance(result, DriverError), f"{mode}: the poll returned {result}"
    server.set_mode("ok")
    result, _ = await _poll(driver)
    assert isinstance(result, PollResult) and result.values == EXPECTED and not result.errors


async def test_answer_of_another_function_is_not_data(server: MisbehavingModbusServer, driver: ModbusDriver) -> None:
    server.set_mode("wrong_function")
    result, _ = await _poll(driver)
    assert isinstance(result, DriverError) or (result.errors and len(result.errors) == len(POINTS))


async def test_random_garbage_for_many_polls_never_escapes_the_driver(
    server: MisbehavingModbusServer, driver: ModbusDriver
) -> None:
    """A seeded random mix of good and bad answers: every poll ends in time with good values,
    point errors or DriverError; the last poll, with the device behaving again, reads everything."""
    rng = random.Random(6)
    modes = [m for m in BAD_MODES if m != ACCEPTED_AS_DATA] + ["ok"] * 14
    server.play(rng.choice(modes) for _ in range(30))
    outcomes = {"values": 0, "errors": 0, "failed": 0}
    deadline = time.monotonic() + 40
    while server.script_left() and time.monotonic() < deadline:
        result, took = await _poll(driver)
        assert took < TIMEOUT + SLACK
        _check(result)
        key = "failed" if isinstance(result, DriverError) else "errors" if result.errors else "values"
        outcomes[key] += 1
    assert not server.script_left(), "the polls stopped reaching the server"
    assert all(outcomes.values()), outcomes
    result, _ = await _poll(driver)
    assert isinstance(result, PollResult) and result.values == EXPECTED


async def test_undecodable_frame_logs_no_traceback(
    server: MisbehavingModbusServer, driver: ModbusDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    server.set_mode("unknown_function")
    result, _ = await _poll(driver)
    assert isinstance(result, DriverError)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


# -- in the daemon ------------------------------------------------------------------------------------------


def test_daemon_survives_every_bad_answer_and_the_other_device_keeps_flowing(
    tmp_path: Path, mosquitto: Mosquitto, subscribe: Callable[..., Subscriber],
    gateways: list[GatewayProcess], server: MisbehavingModbusServer,
) -> None:
    flag = tmp_path / "sim.dead"
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [
        {"name": "meter", "driver": "modbus", "interval": "100ms",
         "connection": {"transport": "tcp", "host": "127.0.0.1", "port": server.port, "timeout": f"{TIMEOUT}s"},
         "points": POINTS},
        sim_device("sim", "20ms", flag),
    ]
    sub = subscribe("city/gw-test/+/telemetry")
    gw = new_gateway(tmp_path, config, gateways).start()
    gw.wait_status(lambda s: s["devices"]["meter"]["polls"] >= 2)
    # Every kind of bad answer, each followed by good ones so the device is polled again soon
    # (a failing device is backed off: interval, doubling).
    server.play(m for mode in BAD_MODES for m in (mode, "ok", "ok", "ok"))
    sim_states: set[str] = set()

    def scripted() -> bool:
        status = gw.status()
        sim_states.add(status["devices"]["sim"]["state"])
        return not server.script_left()

    wait_until(scripted, 60, "the meter to be polled through every bad answer", every=0.1)
    status = gw.wait_status(lambda s: s["devices"]["meter"]["state"] == "ok", timeout=10)
    assert gw.proc is not None and gw.proc.poll() is None, "the daemon died"
    assert sim_states == {"ok"}, f"the simulated device was disturbed: {sim_states}"
    assert status["devices"]["meter"]["errors"] >= len(BAD_MODES) - len(POINT_ERROR_MODES) - 1
    assert set(server.served) >= set(BAD_MODES)

    server.set_mode("silent")  # the meter goes quiet, the simulated device is stopped: drain
    status = drain_devices(gw, [flag])
    last = {name: dev["seq"] for name, dev in status["devices"].items()}
    msgs = sub.wait_for(has_all(last), timeout=30)
    assert_accounted(msgs, last)
    meter = [r for d in telemetry(msgs) if d["device"] == "meter" for r in d["readings"]]
    for reading in meter:  # what reached the platform is what the device holds, or an error
        index = [p["name"] for p in POINTS].index(reading["point"])
        assert reading.get("error") or reading["value"] == EXPECTED[index], reading
    log = gw.log()
    assert log.count("Traceback") == log.count("Fatal error: protocol.data_received() call failed"), log
    assert gw.terminate() == 0
