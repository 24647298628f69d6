"""The ``browser`` fixture is a real browser engine: it runs a page's JavaScript, fetches from the
page's server, sets cookies and honours the viewport, against an aiohttp app on loopback.

Without a JavaScript engine these pages would show their static placeholders, and the tests fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from tests.support.browser import PHONE, fresh_tab, served, set_viewport
from tests.support.wait import wait_until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

PAGE = """<!doctype html>
<html><head><meta name="viewport" content="width=device-width"><title>probe</title></head>
<body><p id="out">waiting</p><p id="width"></p>
<script>
document.getElementById("width").textContent = "width " + window.innerWidth;
fetch("/numbers").then(r => r.json()).then(d => {
  const sum = d.numbers.reduce((a, b) => a + b, 0);
  document.getElementById("out").textContent = "sum " + sum + ", cookie " + d.cookie;
  document.cookie = "seen=1; SameSite=Strict";
});
</script></body></html>"""


def probe_app() -> web.Application:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def numbers(request: web.Request) -> web.Response:
        return web.json_response({"numbers": [19, 23], "cookie": request.cookies.get("seen", "none")})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/numbers", numbers)
    return app


def text_of(browser: WebDriver, element_id: str) -> str:
    return str(browser.execute_script(f"return document.getElementById({element_id!r}).textContent"))


def test_the_browser_runs_the_page_script_and_fetches_from_its_server(browser: WebDriver) -> None:
    """The script's fetch is answered and its result drawn; the cookie it sets goes with the next request."""
    with served(probe_app()) as site:
        browser.get(site.url + "/")
        assert browser.title == "probe"
        wait_until(lambda: text_of(browser, "out") == "sum 42, cookie none", 10,
                   lambda: f"the sum, the page says {text_of(browser, 'out')!r}")
        assert text_of(browser, "width") == "width 1280"
        browser.refresh()
        wait_until(lambda: text_of(browser, "out") == "sum 42, cookie 1", 10,
                   lambda: f"the cookie sent back, the page says {text_of(browser, 'out')!r}")


def test_a_fresh_tab_forgets_cookies_and_a_phone_viewport_is_a_phone(browser: WebDriver) -> None:
    """What the fixture does between tests (``fresh_tab``) leaves no cookie; the page's script sees
    a phone's width once the viewport is set to it; a screenshot is a PNG."""
    with served(probe_app()) as site:
        browser.get(site.url + "/")
        wait_until(lambda: browser.get_cookie("seen"), 10, "the page's cookie")
        fresh_tab(browser)
        assert browser.get_cookie("seen") is None
        browser.get(site.url + "/")
        wait_until(lambda: text_of(browser, "out") == "sum 42, cookie none", 10,
                   lambda: f"a request without the cookie, the page says {text_of(browser, 'out')!r}")
        set_viewport(browser, *PHONE)
        browser.refresh()
        wait_until(lambda: text_of(browser, "width") == f"width {PHONE[0]}", 10,
                   lambda: f"the phone's width, the page says {text_of(browser, 'width')!r}")
        assert browser.get_screenshot_as_png()[:8] == b"\x89PNG\r\n\x1a\n"
