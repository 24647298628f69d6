"""`make screenshots`: the technician's page of `gateway demo`, photographed in headless chromium.

Runs the demo (config/demo.yaml, with the page on 127.0.0.1 and a password made here, plus a
Modbus TCP energy meter served by the Modbus test server, for "read now" to show its frames, and one
device that stops answering), lets it collect some history for the charts, then opens each page at
a laptop's and a phone's width and writes ``<page>-<laptop|phone>.png`` into the output folder
(and ``read-now-laptop.png``: the meter's page after "Read now"):

    python -m tests.support.screenshots docs/screenshots [--warm SECONDS]

The README shows them, so a technician recognises the page before seeing it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gateway.web.passwd import hash_password
from tests.support import REPO
from tests.support.browser import CHROMEDRIVER, CHROMIUM, LAPTOP, PHONE, LoopThread, set_viewport, start_chromium
from tests.support.modbus_server import ModbusTestServer, encode_registers
from tests.support.ports import free_port
from tests.support.wait import wait_until

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

SIZES = {"laptop": LAPTOP, "phone": PHONE}
CHARTED = "level-1"  # the demo device whose page is photographed (a sine: a chart worth seeing)
FAILING = "pump-1"  # a device added for the photographs, failing with the reason below
FAILURE = "no answer from unit 3 (timeout after 1 s, 2 retries)"
METER = "meter-1"  # a Modbus TCP energy meter (the test server): its "read now" shows the frames
METER_POINTS: list[dict[str, Any]] = [
    {"name": "voltage", "address": 0, "type": "float32", "unit": "V"},
    {"name": "current", "address": 2, "type": "float32", "unit": "A"},
    {"name": "energy", "address": 10, "type": "uint32", "byte_order": "CDAB", "unit": "kWh"},
    {"name": "frequency", "address": 20, "type": "uint16", "scale": 0.01, "unit": "Hz"},
]
PAGES = {"overview": "/", "devices": "/devices", "device": f"/devices/{CHARTED}", "log": "/log"}
MAX_HEIGHT = 2400  # CSS px; a page taller than this is cut there


def demo_config(work: Path, port: int, password_file: Path, meter_port: int) -> Path:
    """config/demo.yaml with the page on ``port``, the meter on ``meter_port`` and the failing device."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["web"] = {"enabled": True, "listen": [f"127.0.0.1:{port}"], "password_file": str(password_file)}
    config["devices"].append({
        "name": METER, "driver": "modbus", "interval": "2s",
        "connection": {"transport": "tcp", "host": "127.0.0.1", "port": meter_port, "unit_id": 1, "timeout": "1s"},
        "points": METER_POINTS,
    })
    config["devices"].append({
        "name": FAILING, "driver": "simulated", "interval": "2s", "fail_flag": str(work / "pump-1.fail"),
        "points": [{"name": "flow", "signal": "sine", "period": "90s", "amplitude": 4, "offset": 12, "unit": "m3/h"},
                   {"name": "pressure", "signal": "random", "offset": 2.1, "amplitude": 0.2, "unit": "bar"}],
    })
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def start_meter() -> tuple[ModbusTestServer, asyncio.Task[None]]:
    """The meter, and the task that moves its values (a load that varies, energy that adds up)."""
    server = ModbusTestServer(holding=[(0, 100)])
    await server.start()

    async def move() -> None:
        for second in itertools.count():
            load = 1 + 0.3 * math.sin(second / 20) + random.uniform(-0.05, 0.05)
            values = {"voltage": 231.4 - 2 * (load - 1), "current": 12.75 * load,
                      "energy": 48213 + second // 10, "frequency": 5000 + random.randint(-3, 3)}
            for point in METER_POINTS:
                registers = encode_registers(values[point["name"]], point["type"], point.get("byte_order", "ABCD"))
                await server.set_registers("holding", point["address"], registers)
            await asyncio.sleep(1)

    return server, asyncio.get_running_loop().create_task(move())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/login", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def shoot(driver: WebDriver, url: str, out: Path, name: str) -> None:
    """``url`` at each of SIZES into ``out/<name>-<size>.png``."""
    for size, (width, height) in SIZES.items():
        set_viewport(driver, width, height)
        driver.get(url)
        save(driver, out / f"{name}-{size}.png", width)


def save(driver: WebDriver, target: Path, width: int) -> None:
    """The loaded page, whole (up to MAX_HEIGHT px), ``width`` wide, into ``target``."""
    wait_until(lambda: driver.execute_script("return document.readyState") == "complete", 20,
               f"{driver.current_url} to load")
    # The page's own height (its body's bottom, and the margin): a short page is not padded out.
    full = int(driver.execute_script("return Math.ceil(document.body.getBoundingClientRect().bottom) + 16"))
    set_viewport(driver, width, min(full, MAX_HEIGHT))
    target.write_bytes(driver.get_screenshot_as_png())
    print(f"screenshots: {target}", flush=True)


def read_now(driver: WebDriver, url: str, out: Path) -> None:
    """The device page after its "Read now" button, at a laptop's width, into ``out/read-now-laptop.png``."""
    from selenium.webdriver.common.by import By

    set_viewport(driver, *LAPTOP)
    driver.get(url)
    driver.find_element(By.XPATH, "//button[normalize-space()='Read now']").click()
    wait_until(lambda: driver.current_url.endswith("/read"), 20, "the read-now answer")
    save(driver, out / "read-now-laptop.png", LAPTOP[0])


def log_in(driver: WebDriver, url: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    set_viewport(driver, *LAPTOP)
    driver.get(url + "/login")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_until(lambda: not driver.current_url.endswith("/login"), 20, "the login to be accepted")


def photograph(url: str, out: Path, password: str, work: Path) -> None:
    chromium, chromedriver = (shutil.which(c) for c, _ in (CHROMIUM, CHROMEDRIVER))
    if chromium is None or chromedriver is None:
        raise SystemExit("screenshots: needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    driver = start_chromium(chromium, chromedriver, work / "chromium")
    try:
        shoot(driver, url + "/login", out, "login")
        log_in(driver, url, password)
        for name, path in PAGES.items():
            shoot(driver, url + path, out, name)
        read_now(driver, f"{url}/devices/{METER}", out)
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the folder for the PNG files (e.g. docs/screenshots)")
    parser.add_argument("--warm", type=float, default=120.0,
                        help="seconds the demo runs before the photographs, for the charts (default 120)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    loop = LoopThread("modbus-meter")
    meter, moving = loop.run(start_meter())
    try:
        return run_demo(args.out, args.warm, meter.port)
    finally:
        loop.loop.call_soon_threadsafe(moving.cancel)
        loop.run(meter.stop())
        loop.stop()


def run_demo(out: Path, warm: float, meter_port: int) -> int:
    """The demo with its page on, photographed after ``warm`` s into ``out``."""
    with tempfile.TemporaryDirectory(prefix="gateway-screenshots-") as tmp:
        work = Path(tmp)
        password = secrets.token_urlsafe(16)
        (work / "web.passwd").write_text(hash_password(password) + "\n")
        port = free_port()
        config = demo_config(work, port, work / "web.passwd", meter_port)
        url = f"http://127.0.0.1:{port}"
        with (work / "demo.log").open("wb") as log:
            demo = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "demo", "--config", str(config),
                 "--duration", str(warm + 300)],  # ends by itself should this script die
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_until(lambda: answers(url) or demo.poll() is not None, 60, "the demo's page to answer")
            if demo.poll() is not None:
                raise SystemExit(f"screenshots: the demo ended:\n{(work / 'demo.log').read_text()[-3000:]}")
            print(f"screenshots: the demo's page is up at {url}; collecting {warm:g} s of history", flush=True)
            time.sleep(max(0.0, warm - 15))  # not a test: this is the history the charts will show
            (work / "pump-1.fail").write_text(FAILURE)  # the failing device: read for a while, then lost
            time.sleep(min(15.0, warm))
            photograph(url, out, password, work)
        finally:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
