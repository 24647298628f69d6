"""A third-party driver and its harness, as a package outside this repository would ship them.

``AcmeDriver`` reads one value from a device speaking a line protocol over TCP (``READ\\n`` is
answered by ``<count>\\n``); ``harness`` is its simulated device on a loopback port. Registered
through the ``gateway.drivers`` and ``gateway.driver_harnesses`` entry points by
tests/integration/drivers/test_contract_plugin.py, exactly as drivers/README.md tells an author
to do. ``SloppyDriver`` breaks three rules of the contract on purpose: the suite must say so.

A real package keeps the harness in a module of its own (it is imported only by the suite);
here both use the stdlib alone, so the driver's import stays light either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.driver import DeviceInfo, DriverError
from gateway.model import PointSet, PollResult


class AcmeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(default=1.0, gt=0)


class AcmeDriver:
    """A level gauge on TCP. After close, poll raises DriverError."""

    Config: ClassVar[type[BaseModel]] = AcmeConfig
    bus: str | None = None

    def __init__(self, config: AcmeConfig, device: DeviceInfo) -> None:
        self._config = config
        self.points = PointSet(("level",), ("cm",))
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> None:
        await self.close()
        where = f"{self._config.host}:{self._config.port}"
        try:
            async with asyncio.timeout(self._config.timeout):
                self._io = await asyncio.open_connection(self._config.host, self._config.port)
        except (OSError, TimeoutError) as exc:
            raise DriverError(f"cannot connect to {where}: {exc or 'timeout'}") from None

    async def poll(self) -> PollResult:
        if self._io is None:
            raise DriverError("not connected")
        reader, writer = self._io
        writer.write(b"READ\n")
        try:
            async with asyncio.timeout(self._config.timeout):
                line = await reader.readline()
        except TimeoutError:
            raise DriverError(f"no answer within {self._config.timeout}s") from None
        if not line:
            raise DriverError("the device closed the connection")
        return PollResult([int(line)])

    async def close(self) -> None:
        io, self._io = self._io, None
        if io is not None:
            io[1].close()
            with contextlib.suppress(OSError):
                await io[1].wait_closed()


class SloppyConfig(AcmeConfig):
    model_config = ConfigDict(extra="ignore", frozen=True)  # breaks: a typo in a config goes unnoticed


class SloppyDriver(AcmeDriver):
    """Like AcmeDriver, but its config ignores unknown keys, it paces itself, and it does not say
    what a poll after close does."""

    Config: ClassVar[type[BaseModel]] = SloppyConfig

    async def poll(self) -> PollResult:
        await asyncio.sleep(0.05)  # breaks: the scheduler owns time
        return await super().poll()


@contextlib.asynccontextmanager
async def harness(workdir: Path) -> AsyncIterator[Any]:
    """The gauge on a free loopback port; ``silence`` makes it stop answering."""
    state = {"silent": False, "count": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.readline():
                if not state["silent"]:
                    state["count"] += 1
                    writer.write(b"%d\n" % state["count"])
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield types.SimpleNamespace(
            config={"host": "127.0.0.1", "port": port, "timeout": 0.3},
            silence=lambda: state.update(silent=True),
        )
    finally:
        server.close()
        await server.wait_closed()
