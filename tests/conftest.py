"""Fixtures shared by every test: a real Mosquitto and subscribers to it."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

# Tests import helpers as ``tests.support...``: the repository root must be importable also when
# pytest runs as the ``pytest`` script (which, unlike ``python -m pytest``, does not add the cwd).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from gateway.config.settings import MqttSection  # noqa: E402
from gateway.publish.publisher import Publisher  # noqa: E402
from tests.support.broker import TEST_GATEWAY_ID, Mosquitto, StartPublisher, Subscriber  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402
from tests.support.serial_pty import SerialPty  # noqa: E402


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test alone on a free 127.0.0.1 port (``.host``, ``.port``).

    ``.stop()`` / ``.start()`` restart it on the same port, ``.pause()`` / ``.resume()`` freeze it;
    it is always stopped at the end. Fails with the apt-get hint when mosquitto is missing.
    """
    try:
        broker = Mosquitto(tmp_path / "mosquitto")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
def gateways() -> Iterator[list[GatewayProcess]]:
    """Append each GatewayProcess a test starts; any still running at the end is killed."""
    made: list[GatewayProcess] = []
    yield made
    for gw in made:
        gw.cleanup()


@pytest.fixture
async def start_publisher() -> AsyncIterator[StartPublisher]:
    """``await start_publisher(mqtt, buffer, **kw)`` -> a running Publisher, stopped at the end."""
    running: list[tuple[Publisher, asyncio.Task[None]]] = []
    calls = itertools.count(1)

    def status() -> dict[str, Any]:
        return {"schema": 1, "state": "online", "version": "test", "n": next(calls)}

    async def start(mqtt: MqttSection, buffer: Any, **kw: Any) -> Publisher:
        kw = {"backoff_initial": 0.05, "backoff_max": 0.5, **kw}
        pub = Publisher(mqtt, gateway_id=TEST_GATEWAY_ID, buffer=buffer, status=status, **kw)
        running.append((pub, asyncio.create_task(pub.run(), name="publisher")))
        return pub

    yield start
    for pub, task in running:
        await pub.stop(timeout=2.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
