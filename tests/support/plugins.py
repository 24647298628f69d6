"""Test-only code loaded into a real `gateway` process: drivers registered through an entry point
(exactly as a third-party driver package plugs in) and faults installed at interpreter start.

``plugin_env(where, stall_flag=...)`` writes a ``*.dist-info`` folder (and, for faults, a
``sitecustomize.py``) into ``where`` and returns the environment that puts it on the child's
``sys.path``; pass it to ``GatewayProcess(..., env=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.driver import DeviceInfo, DriverError
from gateway.model import PointSet, PollResult
from tests.support import REPO

DIST = "city_gateway_test_drivers-0.dist-info"
ENTRY_POINTS = {"poison": "tests.support.plugins:PoisonDriver"}
STALL_ENV = "GATEWAY_TEST_STALL_FLAG"

# Installed as sitecustomize.py: while the flag file exists, every buffer commit (the fsynced
# transaction on the writer thread) hangs, as on an SD card that stopped answering.
_STALL = f"""\
import os
import threading

flag = os.environ.get({STALL_ENV!r})
if flag:
    from gateway.buffer import store

    commit = store.Store.commit
    never = threading.Event()

    def stalling_commit(self, *args, **kwargs):
        if os.path.exists(flag):
            never.wait()
        return commit(self, *args, **kwargs)

    store.Store.commit = stalling_commit
"""


def plugin_env(where: Path, *, stall_flag: Path | None = None) -> dict[str, str]:
    """Register the test drivers (and, with ``stall_flag``, the stalled-disk fault) in ``where``;
    return the environment variables that make a child Python process see them."""
    dist = where / DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: city-gateway-test-drivers\nVersion: 0\n")
    lines = [f"{name} = {target}" for name, target in ENTRY_POINTS.items()]
    (dist / "entry_points.txt").write_text("[gateway.drivers]\n" + "\n".join(lines) + "\n")
    env = {"PYTHONPATH": os.pathsep.join([str(where), str(REPO)])}
    if stall_flag is not None:
        (where / "sitecustomize.py").write_text(_STALL)
        env[STALL_ENV] = str(stall_flag)
    return env


class PoisonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(default=3, ge=1)  # points (not "points": the core reads that key as a list)
    poison_polls: list[int] = []  # polls (1, 2, ...) whose first value is bytes: JSON cannot carry it
    polls: int = Field(default=20, ge=1)  # the device stops answering after this many polls


class PoisonDriver:
    """Counts like the simulated driver (value = poll number + point index), but the polls listed in
    ``poison_polls`` carry a value the buffer stores and the JSON wire format cannot encode."""

    Config: ClassVar[type[BaseModel]] = PoisonConfig
    bus: str | None = None

    def __init__(self, config: PoisonConfig, device: DeviceInfo) -> None:
        self._config = config
        self.points = PointSet(tuple(f"p{i}" for i in range(config.size)), (None,) * config.size)
        self._count = 0

    async def open(self) -> None:
        return None

    async def poll(self) -> PollResult:
        if self._count >= self._config.polls:
            raise DriverError("done: no more polls")
        self._count += 1
        values: list[object] = [self._count + i for i in range(self._config.size)]
        if self._count in self._config.poison_polls:
            values[0] = b"\x00raw"
        return PollResult(values)

    async def close(self) -> None:
        return None
