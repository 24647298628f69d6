"""The page's live updates: a bounded server-sent-event stream.

Once a second, while any browser listens, one ``{key: text}`` event per kind of page is made
(``make(device)``, a dict or its JSON text already; shared by every client of that kind) and
written to each client. Writing never waits on a browser: a client whose unsent data passes
``max_unsent`` bytes (it does not read), or whose write does not finish within ``write_timeout``,
is dropped, and at most ``max_clients`` listen at once. So a slow or stuck browser costs a few
kilobytes and never slows polling or publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.timers import sleep_until

log = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between events (the overview is promised live within 2 s)
MAX_CLIENTS = 16
MAX_UNSENT = 64 * 1024  # bytes a client may be behind before it is dropped
SEND_BUFFER = 16 * 1024  # the kernel's send buffer of a stream's socket: a stuck client holds little
WRITE_TIMEOUT = 5.0


class LiveStream:
    """``handle(request, device)`` serves one client's stream until it goes, is dropped, or ``close()``."""

    def __init__(self, make: Callable[[str], dict[str, str] | str], *, interval: float = INTERVAL,
                 max_clients: int = MAX_CLIENTS, max_unsent: int = MAX_UNSENT) -> None:
        self._make = make
        self.interval = interval
        self.max_clients = max_clients
        self.max_unsent = max_unsent
        self.clients = 0
        self.dropped = 0  # clients dropped for not reading
        self._events: dict[str, bytes] = {}  # this tick's event of each kind of page
        self._tick: asyncio.Future[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def handle(self, request: web.Request, device: str) -> web.StreamResponse:
        if self.clients >= self.max_clients or self._closed:
            raise web.HTTPServiceUnavailable(text=f"at most {self.max_clients} live pages at once")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.clients += 1
        self._start_ticker()
        try:
            await self._serve(request, response, device)
        finally:
            self.clients -= 1
        return response

    async def _serve(self, request: web.Request, response: web.StreamResponse, device: str) -> None:
        transport = request.transport
        sent = b""
        while not self._closed and transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() > self.max_unsent:
                self._drop(request, transport, "it does not read")
                return
            event = self._event(device)
            try:
                if event != sent:  # nothing changed on that page: nothing to send
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await response.write(event)
                    sent = event
            except TimeoutError:
                self._drop(request, transport, f"a write took over {WRITE_TIMEOUT:g} s")
                return
            except ConnectionError:
                return
            assert self._tick is not None
            await asyncio.shield(self._tick)

    def _drop(self, request: web.Request, transport: asyncio.BaseTransport, why: str) -> None:
        self.dropped += 1
        log.info("web: live updates to %s stopped: %s", request.remote, why)
        transport.abort()  # close() would wait for the unsent data

    def _event(self, device: str) -> bytes:
        event = self._events.get(device)
        if event is None:
            made = self._make(device)
            text = made if isinstance(made, str) else json.dumps(made)
            event = self._events[device] = f"data: {text}\n\n".encode()
        return event

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._tick = asyncio.get_running_loop().create_future()
            self._ticker = asyncio.create_task(self._run_ticker(), name="web-live")

    async def _run_ticker(self) -> None:
        """Wake the clients once per interval with fresh events; ends when the last one left.

        The ticks fall on whole multiples of the interval on the loop's clock, where the polls of
        devices with that interval fall too (gateway.poll.device): one wake-up serves both, and
        waking the process is what costs most on a small board.
        """
        loop = asyncio.get_running_loop()
        while self.clients and not self._closed:
            await sleep_until(math.floor(loop.time() / self.interval + 1) * self.interval)
            self._next_tick()
        self._next_tick()

    def _next_tick(self) -> None:
        self._events.clear()
        tick, self._tick = self._tick, asyncio.get_running_loop().create_future()
        if tick is not None and not tick.done():
            tick.set_result(None)

    async def close(self) -> None:
        """End every stream (at shutdown)."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._next_tick()

    def stats(self) -> dict[str, Any]:
        return {"clients": self.clients, "dropped": self.dropped}
