"""Fixtures the unit tests need too: a real Mosquitto (the MQTT client pins are checked against one).

The integration tests' own fixtures (subscribers, serial lines, Modbus servers, gateway processes,
publishers) are in tests/integration/conftest.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import helpers as ``tests.support...``: the repository root must be importable also when
# pytest runs as the ``pytest`` script (which, unlike ``python -m pytest``, does not add the cwd).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.broker import Mosquitto  # noqa: E402


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
