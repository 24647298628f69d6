"""The technician's page in tests: a `gateway run` with the page on, and a plain HTTP client for it.

``PageClient`` sends exactly the headers a test asks for (its own cookies, Host, Origin), so the
tests can play a browser, a rebinding page on another origin, or a script without a session.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.web.passwd import hash_password
from tests.support.gateway_proc import GatewayProcess, base_config, new_gateway
from tests.support.modbus_server import ModbusTestServer, Request
from tests.support.ports import free_port
from tests.support.wait import wait_until_async

PASSWORD = "cabinet 7 / tuesday"  # the test page's password


@dataclass(slots=True)
class Reply:
    status: int
    text: str
    headers: Any  # the response's headers (a multidict: getall("Set-Cookie"))


class PageClient:
    """HTTP to the page at ``url`` with a cookie store of its own (it takes cookies from IP hosts)."""

    def __init__(self, url: str, ca_file: Path | None = None) -> None:
        self.url = url
        self.cookies: dict[str, str] = {}
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                           connector=aiohttp.TCPConnector(ssl=context) if context else None)

    async def close(self) -> None:
        await self._http.close()

    async def request(self, method: str, path: str, *, data: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, origin: str | None = "own") -> Reply:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if origin is not None:
            sent.setdefault("Origin", self.url if origin == "own" else origin)
        async with self._http.request(method, self.url + path, data=data, headers=sent,
                                      allow_redirects=False) as response:
            text = await response.text()
            for morsel in response.cookies.values():
                if morsel.value:
                    self.cookies[morsel.key] = morsel.value
                else:
                    self.cookies.pop(morsel.key, None)
            return Reply(response.status, text, response.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, origin=None, **kw)

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> Reply:
        return await self.request("POST", path, data=data, **kw)

    async def login(self, password: str = PASSWORD) -> Reply:
        form = await self.get("/login")
        return await self.post("/login", {"csrf": csrf_of(form.text), "password": password})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, f"no CSRF token in the page:\n{html[:2000]}"
    return found.group(1)


def write_password(path: Path, password: str = PASSWORD) -> Path:
    path.write_text(hash_password(password) + "\n")
    path.chmod(0o600)
    return path


async def start_page_gateway(tmp_path: Path, broker_port: int, gateways: list[GatewayProcess],
                             devices: list[dict[str, Any]], *, writes: bool = False,
                             tls: tuple[Path, Path, Path] | None = None) -> tuple[GatewayProcess, str]:
    """A started gateway polling ``devices`` with its page on 127.0.0.1 (a port of its own); returns it
    and the page's base URL once the page answers. ``tls``: (CA, certificate, key) files: HTTPS."""
    port = free_port()
    config = base_config(tmp_path / "data", broker_port)
    config["devices"] = devices
    config["web"] = {"enabled": True, "listen": [f"127.0.0.1:{port}"], "writes": writes,
                     "password_file": str(write_password(tmp_path / "web.passwd"))}
    if tls is not None:
        config["web"]["tls"] = {"cert_file": str(tls[1]), "key_file": str(tls[2])}
    gw = new_gateway(tmp_path, config, gateways)
    await asyncio.to_thread(gw.start)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    async def answers() -> bool:
        client = PageClient(url, tls[0] if tls else None)
        try:
            return (await client.get("/login")).status == 200
        except aiohttp.ClientError:
            return False
        finally:
            await client.close()

    await wait_until_async(answers, 20, lambda: f"the page to answer:\n{gw.log()}", every=0.1)
    return gw, url


def writes(server: ModbusTestServer) -> list[Request]:
    """The write requests (function codes 5, 6, 15, 16) the Modbus test server received."""
    return [r for r in server.requests if r.function_code in (5, 6, 15, 16)]
