"""The page's safety over plain HTTP, against `gateway run` with the page on: Host, Origin, login,
CSRF, the login throttle, writes; and that a gateway with the page off never imports aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.certs import make_pki
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway
from tests.support.modbus_server import ModbusTestServer, Request
from tests.support.wait import wait_until_async
from tests.support.webpage import PASSWORD, PageClient, csrf_of, start_page_gateway, writes

pytestmark = pytest.mark.integration

SETPOINT = {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "degC", "writable": True,
            "min": 5, "max": 35}




def meter(server: ModbusTestServer) -> dict[str, Any]:
    return {"name": "meter-1", "driver": "modbus", "interval": "200ms",
            "connection": {"host": "127.0.0.1", "port": server.port, "timeout": "500ms"}, "points": [SETPOINT]}


@pytest.fixture
async def page(tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess],
               server: ModbusTestServer) -> AsyncIterator[tuple[GatewayProcess, PageClient]]:
    gw, url = await start_page_gateway(tmp_path, mosquitto.port, gateways, [meter(server)], writes=True)
    client = PageClient(url)
    yield gw, client
    await client.close()
    await asyncio.to_thread(gw.cleanup)


async def test_a_wrong_host_is_refused(page: tuple[GatewayProcess, PageClient]) -> None:
    _, client = page
    port = client.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1:{int(port) + 1}"):
        reply = await client.get("/login", headers={"Host": host})
        assert reply.status == 421, host
        assert "csrf" not in reply.text
        reply = await client.get("/static/app.js", headers={"Host": host})
        assert reply.status == 421, host
    assert (await client.get("/login", headers={"Host": f"localhost:{port}"})).status == 200
    assert (await client.get("/login")).status == 200


async def test_pages_need_a_login_and_the_cookie_is_httponly_and_strict(
        page: tuple[GatewayProcess, PageClient]) -> None:
    gw, client = page
    for path in ("/", "/devices", "/devices/meter-1", "/log"):
        reply = await client.get(path)
        assert (reply.status, reply.headers["Location"]) == (303, "/login"), path
    assert (await client.get("/events")).status == 403
    reply = await client.login()
    assert reply.status == 303, reply.text
    [cookie] = [c for c in reply.headers.getall("Set-Cookie") if c.startswith("gw_session=")]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    overview = await client.get("/")
    assert overview.status == 200 and "meter-1" in overview.text
    assert overview.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in overview.headers[
        "Content-Security-Policy"]
    assert "login from 127.0.0.1" in gw.log()
    password_line = (Path(gw.config_path).parent / "web.passwd").read_text().strip()
    for path in ("/", "/devices", "/devices/meter-1", "/log"):
        text = (await client.get(path)).text
        assert password_line not in text and PASSWORD not in text


async def test_a_post_from_another_origin_or_without_its_token_is_refused(
        page: tuple[GatewayProcess, PageClient], server: ModbusTestServer) -> None:
    gw, client = page
    assert (await client.login()).status == 303
    device = await client.get("/devices/meter-1")
    token = csrf_of(device.text)
    form = {"csrf": token, "point": "setpoint", "value": "22"}
    assert (await client.post("/devices/meter-1/write", form, origin="http://attacker.example")).status == 403
    assert (await client.post("/devices/meter-1/write", form, origin="null")).status == 403
    assert (await client.post("/devices/meter-1/write", {**form, "csrf": "made-up"})).status == 403
    assert (await client.post("/devices/meter-1/read", {})).status == 403
    assert writes(server) == []  # nothing was written
    reply = await client.post("/devices/meter-1/write", form)
    assert reply.status == 200 and "Write setpoint = 22: ok, written holding 10 &lt;- 00DC (FC6)" in reply.text
    assert writes(server) == [Request(6, 10, 0)]
    assert "web: write meter-1.setpoint = '22' from 127.0.0.1: ok" in gw.log()
    reply = await client.post("/devices/meter-1/write", {**form, "value": "99"})
    assert reply.status == 403 and "refused" in reply.text and "maximum" in reply.text
    assert writes(server) == [Request(6, 10, 0)]


async def test_a_write_without_a_login_is_refused(page: tuple[GatewayProcess, PageClient],
                                                  server: ModbusTestServer) -> None:
    _, client = page
    assert (await client.login()).status == 303
    token = csrf_of((await client.get("/devices/meter-1")).text)
    client.cookies.pop("gw_session")
    reply = await client.post("/devices/meter-1/write", {"csrf": token, "point": "setpoint", "value": "22"})
    assert reply.status == 403 and "log in" in reply.text
    assert writes(server) == []


async def test_failed_logins_are_slowed_per_address_but_never_locked_out(
        page: tuple[GatewayProcess, PageClient]) -> None:
    gw, client = page
    assert (await client.login("wrong")).status == 403
    assert "failed login from 127.0.0.1 (the next attempt is checked after 1 s)" in gw.log()
    reply = await client.login()  # the right password, but within the wait: not even checked
    assert reply.status == 429 and "wait" in reply.text
    # After the wait the right password works (no lock-out).
    async def logged_in() -> bool:
        return (await client.login()).status == 303

    await wait_until_async(logged_in, 5, "a login after the 1 s wait", every=0.25)
    assert "gw_session" in client.cookies


async def test_a_gateway_with_the_page_off_does_not_load_aiohttp(tmp_path: Path, mosquitto: Mosquitto,
                                                                 gateways: list[GatewayProcess]) -> None:
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [{"name": "sim-1", "driver": "simulated", "interval": "1s", "points": [{"name": "ramp"}]}]
    gw = new_gateway(tmp_path, config, gateways)
    await asyncio.to_thread(gw.start)
    await asyncio.to_thread(gw.wait_status, lambda s: s["devices"]["sim-1"]["polls"] > 0)
    assert gw.proc is not None
    maps = await asyncio.to_thread(Path(f"/proc/{gw.proc.pid}/maps").read_text)
    assert "aiohttp" not in maps and "multidict" not in maps and "yarl" not in maps


async def test_a_gateway_with_the_page_on_loads_aiohttp(page: tuple[GatewayProcess, PageClient]) -> None:
    # The counterpart of the test above: the maps do show aiohttp's compiled parts when it is loaded.
    gw, _ = page
    assert gw.proc is not None
    assert "aiohttp" in await asyncio.to_thread(Path(f"/proc/{gw.proc.pid}/maps").read_text)


async def test_under_tls_the_cookie_is_secure(tmp_path: Path, mosquitto: Mosquitto, gateways: list[GatewayProcess],
                                              server: ModbusTestServer) -> None:
    pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    tls = (pki.ca.cert, pki.server.cert, pki.server.key)
    _, url = await start_page_gateway(tmp_path, mosquitto.port, gateways, [meter(server)], tls=tls)
    assert url.startswith("https://")
    client = PageClient(url, pki.ca.cert)
    try:
        reply = await client.login()
        assert reply.status == 303
        [cookie] = [c for c in reply.headers.getall("Set-Cookie") if c.startswith("gw_session=")]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert (await client.get("/")).status == 200
    finally:
        await client.close()
