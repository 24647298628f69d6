"""The live stream over real sockets: a browser that stops reading is dropped, the others go on, the number
of listeners is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from gateway.web.live import LiveStream
from gateway.web.server import STATIC
from tests.support.browser import served
from tests.support.wait import wait_until, wait_until_async

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream() -> AsyncIterator[tuple[LiveStream, str]]:
    counter = itertools.count()
    # Big events at a fast pace, so a client that does not read falls behind in a fraction of a second.
    live = LiveStream(lambda device: {"n": str(next(counter)), "pad": "x" * 20_000}, interval=0.02, max_clients=3)
    app = web.Application()

    async def events(request: web.Request) -> web.StreamResponse:
        return await live.handle(request, "")

    app.router.add_get("/events", events)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield live, f"http://127.0.0.1:{runner.addresses[0][1]}/events"
    await live.close()
    await runner.cleanup()


async def stuck_client(url: str) -> socket.socket:
    """A client that asks for the stream and then never reads (a small receive window, as a stalled phone)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def read_events(url: str, seen: list[str]) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                seen.append(line[:40].decode())


async def test_a_client_that_does_not_read_is_dropped_and_the_others_go_on(stream: tuple[LiveStream, str]) -> None:
    live, url = stream
    seen: list[str] = []
    reader = asyncio.create_task(read_events(url, seen))
    stuck = await stuck_client(url)
    try:
        await wait_until_async(lambda: live.clients == 2, 5, "both clients to listen")
        await wait_until_async(lambda: live.dropped == 1, 10, "the stuck client to be dropped")
        await wait_until_async(lambda: live.clients == 1, 5, "one client left")
        before = len(seen)
        await wait_until_async(lambda: len(seen) > before + 10, 5, "the reading client to go on receiving")
        # The server closed the stuck one's connection: what is left in its window drains, then EOF or reset.
        loop = asyncio.get_running_loop()

        async def closed() -> bool:
            try:
                return await asyncio.wait_for(loop.sock_recv(stuck, 65536), 1) == b""
            except ConnectionError:
                return True
            except TimeoutError:
                return False

        await wait_until_async(closed, 10, "the stuck client's connection to be closed")
    finally:
        stuck.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def test_the_number_of_listeners_is_bounded(stream: tuple[LiveStream, str]) -> None:
    live, url = stream
    seen: list[str] = []
    readers = [asyncio.create_task(read_events(url, seen)) for _ in range(3)]
    try:
        await wait_until_async(lambda: live.clients == 3, 5, "three clients to listen")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 503
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


ERROR_PAGE = """<!doctype html><html><head><title>errors</title><script src="/static/app.js" defer></script></head>
<body data-live="dev"><p data-k="val.dev.p">1</p><p data-k="val.dev.p.error">timeout</p>
<p data-k="val.dev.q.error">stale</p></body></html>"""


def test_the_page_script_clears_an_error_that_the_stream_no_longer_sends(browser: WebDriver) -> None:
    """An event carries a point's error key only while it has one: the page's script (the real
    app.js) then shows the new value and no error, and leaves alone a point the event does not name."""
    live = LiveStream(lambda device: {"val.dev.p": "2"} if device == "dev" else {}, interval=0.1)

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=ERROR_PAGE, content_type="text/html")

    async def events(request: web.Request) -> web.StreamResponse:
        return await live.handle(request, request.query.get("device", ""))

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/events", events)
    app.router.add_static("/static", STATIC)

    async def end_streams(_: web.Application) -> None:
        await live.close()

    app.on_shutdown.append(end_streams)  # (else the server's stop waits for the stream)
    with served(app) as site:
        browser.get(site.url + "/")
        shown = lambda key: browser.find_element("css selector", f'[data-k="{key}"]').text  # noqa: E731
        wait_until(lambda: shown("val.dev.p") == "2", 10, lambda: f"the new value, shown: {shown('val.dev.p')!r}")
        assert (shown("val.dev.p.error"), shown("val.dev.q.error")) == ("", "stale")
