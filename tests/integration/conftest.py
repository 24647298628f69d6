"""The integration tests' shared fixtures: subscribers to the test broker (``mosquitto``, from
tests/conftest.py, is shared with the unit tests), a serial line, Modbus test servers, gateway
processes, publishers and a browser.

A fixture used by one test file alone stays in that file.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config.settings import MqttSection
from gateway.publish.publisher import Publisher
from tests.support.broker import TEST_GATEWAY_ID, Mosquitto, StartPublisher, Subscriber
from tests.support.browser import CHROMEDRIVER, CHROMIUM, Chromium
from tests.support.gateway_proc import GatewayProcess
from tests.support.modbus_server import ModbusTestServer, StartModbus
from tests.support.needs import require_tool
from tests.support.serial_pty import SerialPty

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def subscribe(mosquitto: Mosquitto) -> Iterator[Callable[..., Subscriber]]:
    """``subscribe(topics="#")`` -> a started Subscriber on the test broker, closed at the end."""
    subscribers: list[Subscriber] = []

    def make(topics: str | Sequence[str] = "#") -> Subscriber:
        sub = Subscriber(mosquitto.host, mosquitto.port, topics).start()
        subscribers.append(sub)
        return sub

    try:
        yield make
    finally:
        for sub in subscribers:
            sub.close()


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[SerialPty]:
    """A socat pty pair (``.a``, ``.b``): a serial line of this test alone, always stopped at the end."""
    line = SerialPty(tmp_path / "line").start()
    try:
        yield line
    finally:
        line.stop()


@pytest.fixture
async def start_modbus() -> AsyncIterator[StartModbus]:
    """``await start_modbus(**kw)`` -> a started ModbusTestServer, stopped at the end.

    ``kw`` as ModbusTestServer takes them: the register ranges served, ``units``, ``transport``
    (TCP on a port of its own choosing by default; ``transport="rtu", serial_port=str(pty.a)``
    for a serial line). A test file names its server in a fixture of its own that calls this.
    """
    started: list[ModbusTestServer] = []

    async def start(**kw: Any) -> ModbusTestServer:
        server = ModbusTestServer(**kw)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """Append each GatewayProcess a test starts; any still running at the end is killed."""
    made: list[GatewayProcess] = []
    yield made
    for gw in made:
        gw.cleanup()


@pytest.fixture
async def start_publisher() -> AsyncIterator[StartPublisher]:
    """``await start_publisher(mqtt, buffer, **kw)`` -> a running Publisher, stopped at the end (``kw``
    may replace its ``status``)."""
    running: list[tuple[Publisher, asyncio.Task[None]]] = []
    calls = itertools.count(1)

    def status() -> dict[str, Any]:
        return {"schema": 1, "state": "online", "version": "test", "n": next(calls)}

    async def start(mqtt: MqttSection, buffer: Any, **kw: Any) -> Publisher:
        kw = {"backoff_initial": 0.05, "backoff_max": 0.5, **kw}
        pub = Publisher(mqtt, gateway_id=TEST_GATEWAY_ID, buffer=buffer, **{"status": status, **kw})
        running.append((pub, asyncio.create_task(pub.run(), name="publisher")))
        return pub

    yield start
    for pub, task in running:
        await pub.stop(timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="session")
def _chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """The one chromium of this test worker (started by the first test that asks for ``browser``)."""
    chromium = require_tool(*CHROMIUM)
    chromedriver = require_tool(*CHROMEDRIVER)
    held = Chromium(chromium, chromedriver, tmp_path_factory.mktemp("chromium"))
    yield held
    held.quit()


@pytest.fixture
def browser(_chromium: Chromium) -> Iterator[WebDriver]:
    """A headless Debian chromium driven by selenium (tests/support/browser.py), as new: one blank
    tab, no cookies, a laptop-sized window; fails under CI when chromium or chromedriver is missing.
    At the end its page is left (``about:blank``), so the page's streams close before its server stops."""
    try:
        yield _chromium.ready()
    finally:
        _chromium.leave()
