"""The technician's page in a real browser (headless Debian chromium), against `gateway run` with the page
on and a pymodbus server on loopback: the overview, live values, a chart, read now with its frames, writes.

Selenium's calls block, and the Modbus server runs in the test's event loop: each browser step runs
in a thread (``step``), so the device keeps answering while the browser waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.support.broker import Mosquitto
from tests.support.gateway_proc import GatewayProcess
from tests.support.modbus_server import ModbusTestServer, Request
from tests.support.wait import wait_until
from tests.support.webpage import PASSWORD, start_page_gateway, writes

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.integration

T = TypeVar("T")
POINTS = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
     "min": 5, "max": 35},
    {"name": "flow", "address": 20, "type": "uint16", "unit": "l/min"},
]




@pytest.fixture
async def page(tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess],
               server: ModbusTestServer) -> AsyncIterator[tuple[GatewayProcess, str]]:
    devices = [
        {"name": "meter-1", "driver": "modbus", "interval": "200ms",
         "connection": {"host": "127.0.0.1", "port": server.port, "timeout": "500ms"}, "points": POINTS},
        {"name": "sim-1", "driver": "simulated", "interval": "500ms", "points": [{"name": "ramp"}]},
    ]
    gw, url = await start_page_gateway(tmp_path, mosquitto.port, gateways, devices, writes=True)
    yield gw, url
    await asyncio.to_thread(gw.cleanup)


async def step(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def css(browser: WebDriver, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def text_now(browser: WebDriver, selector: str = "body") -> str:
    """The text of ``selector`` now, or "" while the page a form's POST loads has not replaced the
    old one yet (its document then has no such element, or the old element is gone)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(css(browser, selector).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def text_of(browser: WebDriver, key: str) -> str:
    return str(css(browser, f'[data-k="{key}"]').text)


def log_in(browser: WebDriver, url: str, then: str = "/") -> None:
    browser.get(url + then)
    assert browser.current_url.endswith("/login"), "a page without a login leads to the login form"
    css(browser, 'input[name="password"]').send_keys(PASSWORD)
    css(browser, "form.login button").click()
    wait_until(lambda: not browser.current_url.endswith("/login"), 10,
               lambda: f"the login to go through; the page says: {css(browser, 'body').text}")
    browser.get(url + then)


def submit_write(browser: WebDriver, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(css(browser, 'select[name="point"]')).select_by_visible_text("setpoint")
    field = css(browser, 'input[name="value"]')
    field.clear()
    field.send_keys(value)
    css(browser, "form.write button").click()


async def test_the_overview_shows_the_devices_and_updates_live(page: tuple[GatewayProcess, str],
                                                               browser: WebDriver) -> None:
    _, url = page
    await step(log_in, browser, url)
    await step(wait_until, lambda: text_of(browser, "dev.meter-1.state") == "ok", 10, "meter-1 to be ok on screen")
    items = await step(lambda: [li.text for li in browser.find_elements("css selector", "ul.devices li")])
    assert any(t.startswith("meter-1 ok") for t in items) and any(t.startswith("sim-1") for t in items), items
    assert "NOT connected" not in await step(lambda: text_of(browser, "ov.broker"))
    await step(browser.execute_script, "window.notReloaded = true")
    first = await step(text_of, browser, "ov.uptime")
    await step(wait_until, lambda: text_of(browser, "ov.uptime") != first, 3, "the uptime to move on screen")
    assert await step(browser.execute_script, "return window.notReloaded") is True


async def test_a_value_changes_on_screen_without_a_reload_and_a_chart_renders(
        page: tuple[GatewayProcess, str], browser: WebDriver, server: ModbusTestServer) -> None:
    gw, url = page
    await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["meter-1"]["polls"] > 3)
    await step(log_in, browser, url, "/devices/meter-1")
    assert await step(text_of, browser, "val.meter-1.setpoint") == "20"
    assert "l/min" in await step(lambda: css(browser, "table.points").text)
    chart = await step(css, browser, "svg.chart polyline")
    assert len((await step(chart.get_attribute, "points")).split()) >= 1
    assert (await step(lambda: css(browser, "svg.chart").size))["width"] > 100
    await step(browser.execute_script, "window.notReloaded = true")
    await server.set_registers("holding", 10, [215])
    await step(wait_until, lambda: text_of(browser, "val.meter-1.setpoint") == "21.5", 5,
               "the new value on screen")
    assert await step(browser.execute_script, "return window.notReloaded") is True


async def test_read_now_shows_the_frames(page: tuple[GatewayProcess, str], browser: WebDriver) -> None:
    gw, url = page
    await step(log_in, browser, url, "/devices/meter-1")
    await step(lambda: css(browser, 'form[action="/devices/meter-1/read"] button').click())
    await step(wait_until, lambda: "setpoint" in text_now(browser, "#read-now"), 10,
               lambda: f"the read's result; the page says: {text_now(browser)}")
    section = await step(text_now, browser, "#read-now")
    frames = await step(lambda: [r.text for r in browser.find_elements("css selector", "table.frames tr")[1:]])
    assert any(" tx " in f" {r} " for r in frames) and any(" rx " in f" {r} " for r in frames), frames
    assert "setpoint" in section and "00C8" in section.upper()  # the raw register of 20.0 (200)
    assert "web: read now of meter-1 from 127.0.0.1" in gw.log()


async def test_a_write_without_login_is_refused_and_with_login_works(
        page: tuple[GatewayProcess, str], browser: WebDriver, server: ModbusTestServer) -> None:
    gw, url = page
    await step(log_in, browser, url, "/devices/meter-1")
    await step(browser.delete_cookie, "gw_session")  # logged out behind the page's back (expired, restarted)
    await step(submit_write, browser, "22")
    # The form's POST loads a new page; on a loaded machine the click may return before it has.
    await step(wait_until, lambda: "log in first" in text_now(browser), 10,
               lambda: f"the refusal; the page says: {text_now(browser)}")
    assert writes(server) == []

    await step(log_in, browser, url, "/devices/meter-1")
    await step(submit_write, browser, "22")
    done = "Write setpoint = 22: ok, written holding 10 <- 00DC"
    await step(wait_until, lambda: done in text_now(browser, ".message"), 10,
               lambda: f"the write's result; the page says: {text_now(browser)}")
    assert writes(server) == [Request(6, 10, 0)]
    assert "web: write meter-1.setpoint = '22' from 127.0.0.1: ok" in gw.log()


async def test_every_page_fits_a_phone(page: tuple[GatewayProcess, str], browser: WebDriver) -> None:
    from tests.support.browser import PHONE, set_viewport

    gw, url = page
    await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["meter-1"]["polls"] > 3)  # (charts to show)
    await step(set_viewport, browser, *PHONE)
    await step(log_in, browser, url)
    for path in ("/", "/devices", "/devices/meter-1", "/log"):
        await step(browser.get, url + path)
        width = await step(browser.execute_script, "return document.documentElement.scrollWidth")
        assert width <= PHONE[0], f"{path} is {width} px wide on a {PHONE[0]} px phone"
    # The device page's charts are readable there: below their values, most of the screen wide.
    await step(browser.get, url + "/devices/meter-1")
    charts = await step(lambda: [c.size["width"] for c in browser.find_elements("css selector", "svg.chart")])
    assert charts and min(charts) >= 0.7 * PHONE[0], f"charts {charts} px wide on a {PHONE[0]} px phone"
