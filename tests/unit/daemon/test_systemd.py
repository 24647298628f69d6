"""sd_notify and the watchdog heartbeat, against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.simulated.driver import SimulatedConfig, SimulatedDriver
from gateway.config.settings import DeviceSpec
from gateway.daemon.systemd import notify, watchdog_period
from gateway.daemon.watchdog import Watchdog, gateway_problem
from gateway.poll.scheduler import Scheduler
from tests.support.wait import wait_until_async


class Receiver:
    """A bound AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.0)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        """Everything received so far (non-blocking)."""
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}

    async def wait_for(self, predicate, timeout: float = 5.0) -> list[str]:
        await wait_until_async(lambda: predicate(self.drain()), timeout, lambda: f"a datagram; got {self.received}",
                               every=0.005)
        return self.received


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = str(tmp_path / "notify.sock")
    r = Receiver(path, path)
    yield r
    r.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"city-gateway-test-{uuid.uuid4().hex}"
    r = Receiver("@" + name, "\0" + name)
    yield r
    r.sock.close()


# -- notify ------------------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path_socket(receiver: Receiver) -> None:
    assert notify("READY=1", environ=receiver.env())
    assert notify("STATUS=polling 3 devices\nWATCHDOG=1", environ=receiver.env())
    assert receiver.drain() == ["READY=1", "STATUS=polling 3 devices\nWATCHDOG=1"]


def test_notify_reaches_an_abstract_socket(abstract_receiver: Receiver) -> None:
    assert notify("READY=1", environ=abstract_receiver.env())
    assert abstract_receiver.drain() == ["READY=1"]


def test_notify_reads_notify_socket_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    assert notify("STOPPING=1")
    assert receiver.drain() == ["STOPPING=1"]


@pytest.mark.parametrize("address", ["", "relative/path.sock", "/nonexistent/dir/notify.sock", "@no-such-listener-x"])
def test_notify_without_a_listener_is_a_quiet_no_op(address: str) -> None:
    env = {"NOTIFY_SOCKET": address} if address else {}
    assert notify("READY=1", environ=env) is False


# -- watchdog_period ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_period_follows_sd_watchdog_enabled(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_period(env) == expected


# -- the heartbeat -----------------------------------------------------------------------------------


async def test_heartbeat_every_half_period_while_healthy(receiver: Receiver) -> None:
    """A beat at once, then one per half period: as many as a task sleeping half a period on the
    same loop wakes up. A loaded machine delays both alike; a beat per whole period would be half
    as many, one per re-check far more."""
    dog = Watchdog(lambda: None, environ=receiver.env(WATCHDOG_USEC="200000"))  # 0.2 s: a beat per 0.1 s
    assert dog.enabled and dog.period == pytest.approx(0.2)
    half_periods = 0

    async def pace() -> None:
        nonlocal half_periods
        while True:
            await asyncio.sleep(0.1)
            half_periods += 1

    dog.start()
    pacer = asyncio.create_task(pace())
    try:
        await receiver.wait_for(lambda got: half_periods >= 8)
    finally:
        pacer.cancel()
        await dog.stop()
    beats = len(receiver.drain())
    assert half_periods <= beats <= half_periods + 2, f"{beats} beats in {half_periods} half periods"
    assert set(receiver.received) == {"WATCHDOG=1"}


async def test_no_heartbeat_while_unhealthy_and_one_error_line(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.daemon.watchdog")
    problem: list[str | None] = [None]
    dog = Watchdog(lambda: problem[0], environ=receiver.env(WATCHDOG_USEC="200000"))
    dog.start()
    try:
        await receiver.wait_for(lambda got: "WATCHDOG=1" in got)
        problem[0] = "the poll task of device meter-1 has died"
        await receiver.wait_for(lambda got: any(m.startswith("STATUS=unhealthy") for m in got))
        received = len(receiver.drain())
        await asyncio.sleep(0.5)  # five periods' worth of beats would have come by now
        assert len(receiver.drain()) == received, "heartbeat went on"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "meter-1 has died" in errors[0].getMessage() and "restart" in errors[0].getMessage()
        problem[0] = None  # it passed (say, a reload swapped a task): beats resume at once
        await receiver.wait_for(lambda got: got[-1] == "WATCHDOG=1", timeout=1.0)
    finally:
        await dog.stop()
    assert any("healthy again" in r.getMessage() for r in caplog.records)


async def test_a_brief_problem_is_rechecked_soon_and_not_reported(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.daemon.watchdog")
    answers = iter([None, "the publisher task has ended"])  # then healthy again
    checked: list[float] = []  # when the health check ran

    def check() -> str | None:
        checked.append(time.monotonic())
        return next(answers, None)

    dog = Watchdog(check, environ=receiver.env(WATCHDOG_USEC="2000000"))  # beat per 1 s
    dog.start()
    try:
        await receiver.wait_for(lambda got: got.count("WATCHDOG=1") >= 2, timeout=5.0)
    finally:
        await dog.stop()
    # Beats at 0 s and, after the re-check 0.25 s later, at 1.25 s; not at 2 s (a half period after
    # the problem was seen), which would leave systemd's deadline (2 s after the first beat) to chance.
    recheck_after = checked[2] - checked[1]
    assert 0.2 <= recheck_after < 0.75, f"re-checked {recheck_after:.2f} s after the problem"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_hung_loop_sends_nothing(receiver: Receiver) -> None:
    dog = Watchdog(lambda: None, environ=receiver.env(WATCHDOG_USEC="100000"))
    dog.start()
    try:
        await receiver.wait_for(lambda got: "WATCHDOG=1" in got)
        count = len(receiver.drain())
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is blocked on purpose: the heartbeat cannot run
        assert len(receiver.drain()) == count
        await receiver.wait_for(lambda got: len(got) > count)
    finally:
        await dog.stop()


async def test_a_failing_health_check_stops_the_heartbeat(receiver: Receiver) -> None:
    def broken() -> str | None:
        raise KeyError("devices")

    dog = Watchdog(broken, period=0.2, environ=receiver.env())
    assert dog.beat() is False
    assert dog.problem is not None and "health check failed" in dog.problem
    assert receiver.drain() == []


async def test_without_watchdog_usec_nothing_runs(receiver: Receiver) -> None:
    dog = Watchdog(lambda: None, environ=receiver.env())
    assert not dog.enabled
    dog.start()
    await asyncio.sleep(0.05)
    await dog.stop()
    assert receiver.drain() == []


# -- the daemon's health check -----------------------------------------------------------------------


def _spec(name: str) -> DeviceSpec:
    options = SimulatedConfig.model_validate({"points": [{"name": "p"}]})
    return DeviceSpec(name=name, driver="simulated", interval=0.01, enabled=True, options=options)


async def test_gateway_problem_names_a_dead_device_task() -> None:
    def congested() -> bool:
        raise RuntimeError("a bug in the congestion check")  # escapes the poll loop: the task dies

    scheduler = Scheduler(sink=lambda batch: None, on_change=lambda: None, congested=congested)
    publisher = asyncio.create_task(asyncio.Event().wait(), name="publisher")
    try:
        scheduler.add(_spec("meter-1"), SimulatedDriver)
        assert gateway_problem(scheduler, publisher) is None
        task = scheduler.tasks["meter-1"]._task
        assert task is not None
        await asyncio.wait({task}, timeout=5)  # (restarted after a backoff: this runs before)
        assert gateway_problem(scheduler, publisher) == \
            "the poll task of device meter-1 has died: RuntimeError: a bug in the congestion check"
        assert isinstance(task.exception(), RuntimeError)
    finally:
        with contextlib.suppress(RuntimeError):  # stopping re-raises what killed the task
            await scheduler.stop_all()
        scheduler.tasks.clear()
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
    assert gateway_problem(scheduler, publisher) == "the publisher task has ended (cancelled)"
    assert gateway_problem(scheduler, None) is None  # between two publishers (reload)
