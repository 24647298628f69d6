"""The daemon's side of the technician's page (gateway.web), made only when ``web.enabled``.

Importing this module imports aiohttp: the daemon does so only when the page is on, so a gateway
without it pays nothing for it. The page gets a view of the daemon: its status, the tool path
of ``gateway read``/``write`` (``run_tool_command``), the devices' points, and every batch the
scheduler makes (``observe``, beside the buffer) for the latest values and the charts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.daemon.statusdoc import device_entry
from gateway.daemon.tools import run_tool_command
from gateway.model import Batch
from gateway.web.feed import Feed
from gateway.web.logring import LogRing
from gateway.web.server import Backend, WebServer

if TYPE_CHECKING:
    from gateway.daemon.daemon import Daemon

log = logging.getLogger(__name__)


class Page:
    """The page of one daemon: ``start()`` after the control socket, ``close()`` first at the stop."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.feed = Feed()
        self.logring = LogRing()
        backend = Backend(status=daemon.status, run_tool=self._run_tool, points=self._points, bus=self._bus,
                          device=self._device)
        self.server = WebServer(daemon.config.web, daemon.config.gateway.id, backend, self.feed, self.logring)

    def observe(self, batch: Batch) -> None:
        self.feed.observe(batch)

    def forget_removed(self) -> None:
        """After a reload: drop what is kept of devices no longer polled."""
        self.feed.forget(set(self._daemon.scheduler.tasks))

    async def start(self) -> None:
        self.logring.install(logging.getLogger())
        await self.server.start()
        if self.server.section.open_addresses() and self.server.section.tls is None:
            log.warning("web: the page listens on %s without tls: its password crosses the network in clear",
                        ", ".join(self.server.section.open_addresses()))

    async def close(self) -> None:
        await self.server.close()
        self.logring.remove()

    async def _run_tool(self, request: dict[str, Any]) -> dict[str, Any]:
        return await run_tool_command(self._daemon.scheduler.tasks, request)

    def _points(self, name: str) -> tuple[str, ...] | None:
        task = self._daemon.scheduler.tasks.get(name)
        return None if task is None else tuple(task.driver.points.names)

    def _bus(self, name: str) -> str | None:
        task = self._daemon.scheduler.tasks.get(name)
        return None if task is None else task.bus

    def _device(self, name: str) -> dict[str, Any] | None:
        return device_entry(self._daemon, name)
