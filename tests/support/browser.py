"""A real browser for the technician page's tests: Debian's chromium, headless, driven by selenium
through Debian's chromedriver, and a way to serve an aiohttp app to it from a test.

The driver's path is always given, so selenium-manager never runs (it would download a driver and
a browser). The flags keep chromium from reaching anything but the pages a test opens: no sync, no
component updates, no background requests, no QUIC. ``--no-sandbox`` because the tests run as root
in containers (chromium refuses to start there otherwise); the pages are the tests' own.

``tests/integration/conftest.py`` makes the ``browser`` fixture from these: one chromium per test
worker, handed to each test with a fresh tab, no cookies and the default window size.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from aiohttp import web
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = ("chromium", "chromium")  # command, Debian package
CHROMEDRIVER = ("chromedriver", "chromium-driver")
LAPTOP = (1280, 800)  # the default window: a laptop's screen
PHONE = (390, 844)  # a phone held upright, in CSS pixels
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check", "--mute-audio",
)
T = TypeVar("T")
PAGE_TIMEOUT = 30.0  # s; a page that has not loaded by then fails the test instead of hanging it


def start_chromium(chromium: str, chromedriver: str, profile: Path,
                   size: tuple[int, int] = LAPTOP) -> WebDriver:
    """A headless chromium (binary ``chromium``, driven by ``chromedriver``) with a fresh profile in
    ``profile``. The browser's console is kept: ``driver.get_log("browser")`` lists its messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(profile.with_name(profile.name + ".driver.log")))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.set_script_timeout(PAGE_TIMEOUT)
    return driver


def fresh_tab(driver: WebDriver, size: tuple[int, int] = LAPTOP) -> None:
    """Make a used browser like a new one for the next test: one new blank tab (the old tabs, their
    page scripts, streams and session storage closed), no cookies, no cache, the window at ``size``."""
    old = driver.window_handles
    driver.switch_to.new_window("tab")
    fresh = driver.current_window_handle
    for handle in old:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(fresh)
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.set_window_size(*size)
    driver.get_log("browser")  # read and forgotten: the console of the previous test's pages


def set_viewport(driver: WebDriver, width: int, height: int) -> None:
    """Make the page's viewport ``width`` x ``height`` CSS pixels (a phone's, say), whatever the
    window's frame takes: what media queries and a screenshot see."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


class Chromium:
    """One chromium for many tests (starting one costs about a second): ``ready()`` hands it over
    as new (``fresh_tab``), and starts another if a test left it dead."""

    def __init__(self, chromium: str, chromedriver: str, directory: Path) -> None:
        self.chromium, self.chromedriver, self.directory = chromium, chromedriver, directory
        self.driver: WebDriver | None = None
        self.starts = 0

    def ready(self) -> WebDriver:
        from selenium.common.exceptions import WebDriverException

        if self.driver is not None:
            try:
                fresh_tab(self.driver)
                return self.driver
            except WebDriverException:  # crashed, or its window closed: start over
                self.quit()
        self.starts += 1  # a new profile each time: a dead chromium may leave its own locked
        self.driver = start_chromium(self.chromium, self.chromedriver, self.directory / f"profile-{self.starts}")
        return self.driver

    def leave(self) -> None:
        """After a test: leave its pages, so their streams close before its servers stop."""
        from selenium.common.exceptions import WebDriverException

        if self.driver is not None:
            with contextlib.suppress(WebDriverException):
                self.driver.get("about:blank")

    def quit(self) -> None:
        from selenium.common.exceptions import WebDriverException

        if self.driver is not None:
            with contextlib.suppress(WebDriverException):
                self.driver.quit()
            self.driver = None


class LoopThread:
    """An asyncio event loop on a thread of its own, for servers that a blocking caller (selenium's
    calls block) must not starve: ``run(coro)`` runs a coroutine there and returns its result."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class ServedApp:
    """An aiohttp app served on 127.0.0.1 (a port of its own) from a LoopThread.

    ``url`` is the base address, e.g. ``http://127.0.0.1:41234``.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> ServedApp:
        self._thread = LoopThread("served-app")
        self.url = f"http://127.0.0.1:{self._thread.run(self._start())}"
        return self

    async def _start(self) -> int:
        from aiohttp import web

        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # binds at once: the kernel's free port is safe
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            self._thread.run(self._runner.cleanup())
        self._thread.stop()


@contextlib.contextmanager
def served(app: web.Application) -> Iterator[ServedApp]:
    """``with served(app) as site:`` the app answers at ``site.url`` until the block ends."""
    site = ServedApp(app).start()
    try:
        yield site
    finally:
        site.stop()
