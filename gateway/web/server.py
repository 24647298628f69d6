"""The technician's page: an aiohttp application in the daemon's own event loop.

A view over the daemon, never a second path to the devices: it shows ``backend.status()`` and the
feed, and "read now" and writes go through ``backend.run_tool`` (the daemon's
``run_tool_command``: the gateway's own driver and connection, in the bus's turn; writes through
the allow-list and min/max checks of remote commands). The safety rules are in ``guard``.

Paths: GET / (overview), /devices, /devices/{name}, /log, GET+POST /login, POST /logout,
POST /devices/{name}/read, POST /devices/{name}/write, GET /events (live), GET /static/{file}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config.settings import WebSection, listen_address
from gateway.fields import NAME_PATTERN
from gateway.web import pages
from gateway.web.feed import Feed
from gateway.web.guard import HostCheck, Session, Sessions, Throttle, same_origin
from gateway.web.live import LiveStream
from gateway.web.logring import LogRing
from gateway.web.passwd import PasswordFileError, read_hash, verify

log = logging.getLogger(__name__)

SESSION_COOKIE = "gw_session"
LOGIN_COOKIE = "gw_login"  # the login form's CSRF token (double submit: cookie and field)
ACTION_TIMEOUT = 60.0  # seconds a read now or a write may take
STATIC = Path(__file__).with_name("static")
NAME = re.compile(NAME_PATTERN)
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer would make browsers send "Origin: null" with forms)
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Backend:
    """What the page sees of the daemon."""

    status: Callable[[], dict[str, Any]]
    run_tool: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    points: Callable[[str], tuple[str, ...] | None]  # a polled device's point names; None: no such device
    bus: Callable[[str], str | None]  # the line a device shares with others (its turn), if any
    device: Callable[[str], dict[str, Any] | None]  # a polled device's entry of status()["devices"]


class WebServer:
    """Serves the page on ``section.listen`` until ``close()``."""

    def __init__(self, section: WebSection, gateway_id: str, backend: Backend, feed: Feed,
                 logring: LogRing | None = None) -> None:
        self.section, self.gateway_id, self.backend, self.feed, self.logring = (
            section, gateway_id, backend, feed, logring)
        self.tls = section.tls is not None
        self.hosts = HostCheck(section.listen, section.host_names)
        self.sessions = Sessions()
        self.throttle = Throttle()
        self.live = LiveStream(self._live_fields)
        self._busy: set[str] = set()  # the lines with a read now or a write under way
        self._checking: set[str] = set()  # source addresses whose login is being checked
        self._scrypt = asyncio.Semaphore(1)  # one password check at a time: bounded CPU under a login flood
        self.app = web.Application(middlewares=[self._guard], client_max_size=16 * 1024)
        self.app.router.add_get("/", self._overview)
        self.app.router.add_get("/devices", self._devices)
        self.app.router.add_get("/devices/{name}", self._device)
        self.app.router.add_get("/log", self._log)
        self.app.router.add_get("/login", self._login_form)
        self.app.router.add_post("/login", self._login)
        self.app.router.add_post("/logout", self._logout)
        self.app.router.add_post("/devices/{name}/read", self._read_now)
        self.app.router.add_post("/devices/{name}/write", self._write)
        self.app.router.add_get("/events", self._events)
        self.app.router.add_static("/static", STATIC)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on every address; one that cannot be bound is logged, the gateway runs on."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        context = self._ssl_context() if self.section.tls is not None else None
        for text in self.section.listen:
            host, port = listen_address(text)
            site = web.TCPSite(self._runner, host, port, ssl_context=context)
            try:
                await site.start()
            except OSError as exc:
                log.error("web: cannot listen on %s: %s", text, exc.strerror or exc)
                continue
            log.info("web: the technician's page is on %s://%s/", "https" if context else "http", text)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.section.tls is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.section.tls.cert_file, self.section.tls.key_file)
        return context

    async def close(self) -> None:
        await self.live.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- safety ------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        local = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if not self.hosts.allowed(request.headers.get("Host"), local[:2] if local else None):
            return web.Response(status=421, text="this page does not answer to that Host name\n")
        origin = request.headers.get("Origin")
        if (request.method == "POST" or origin is not None) and not same_origin(
                origin, request.headers.get("Host"), self.tls):
            return web.Response(status=403, text="refused: the request did not come from this page (Origin)\n")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and refusals carry the headers too
            exc.headers.update(HEADERS)
            raise
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def _need_session(self, request: web.Request) -> Session:
        session = self._session(request)
        if session is None:
            if request.method == "GET" and request.path != "/events":
                raise web.HTTPSeeOther("/login")
            raise web.HTTPForbidden(text="refused: log in first\n")
        return session

    async def _form(self, request: web.Request, session: Session) -> Any:
        form = await request.post()
        if not session.csrf_ok(_text(form.get("csrf"))):
            raise web.HTTPForbidden(text="refused: the form's token is missing or stale; reload the page\n")
        return form

    def _cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="Strict", secure=self.tls, path="/")

    # -- login -------------------------------------------------------------------------------

    async def _login_form(self, request: web.Request, message: str = "", status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(24)
        response = web.Response(text=pages.login_page(token, message), content_type="text/html", status=status)
        self._cookie(response, LOGIN_COOKIE, token)
        return response

    async def _login(self, request: web.Request) -> web.Response:
        source = str(request.remote)
        form = await request.post()
        cookie, field = request.cookies.get(LOGIN_COOKIE), _text(form.get("csrf"))
        if not cookie or not field or not secrets.compare_digest(cookie, field):
            return await self._login_form(request, "The form was stale: try again.", 403)
        wait = self.throttle.wait_left(source)
        if wait > 0 or source in self._checking:  # (parallel guesses would each skip the wait)
            wait = max(wait, 1.0)
            return await self._login_form(request, f"Too many failed logins: wait {wait:.0f} s, then try again.", 429)
        password = _text(form.get("password")) or ""
        self._checking.add(source)
        try:  # scrypt takes tens of ms: in a thread, not in the event loop (which polls), one at a time
            async with self._scrypt:
                ok = await asyncio.to_thread(_check_password, self.section.password_file, password)
        except (OSError, ValueError, PasswordFileError) as exc:
            log.error("web: login from %s impossible: %s", source, exc)
            return await self._login_form(request, "The gateway's password file cannot be read.", 500)
        finally:
            self._checking.discard(source)
        if not ok:
            delay = self.throttle.failed(source)
            log.warning("web: failed login from %s (the next attempt is checked after %.0f s)", source, delay)
            return await self._login_form(request, f"Wrong password. Try again in {delay:.0f} s.", 403)
        self.throttle.succeeded(source)
        session = self.sessions.new(source)
        log.info("web: login from %s", source)
        response = web.HTTPSeeOther("/")
        self._cookie(response, SESSION_COOKIE, session.token)
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        await self._form(request, session)
        self.sessions.drop(session.token)
        log.info("web: logout from %s", request.remote)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # -- pages -------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        return {**self.backend.status(), "gateway_id": self.gateway_id}

    async def _overview(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        return _html(pages.overview_page(self._status(), session.csrf, _now_ms()))

    async def _devices(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        return _html(pages.devices_page(self._status(), session.csrf, _now_ms()))

    async def _device(self, request: web.Request, result: str = "", message: str = "",
                      status: int = 200) -> web.Response:
        session = self._need_session(request)
        name = request.match_info["name"]
        points = self.backend.points(name)
        if points is None:
            raise web.HTTPNotFound(text=f"no device {name!r} is polled\n")
        page = pages.device_page(name, self._status(), self.feed, points, session.csrf, _now_ms(),
                                 writes=self.section.writes, result=result, message=message)
        return _html(page, status)

    async def _log(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        return _html(pages.log_page(self.logring.lines() if self.logring else [], session.csrf))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._need_session(request)
        return await self.live.handle(request, request.query.get("device", ""))

    def _live_fields(self, page: str) -> dict[str, str] | str:
        """What one kind of page shows live: the overview (""), the devices page, or one device's page
        (that one as JSON text already)."""
        now = _now_ms()
        if page == "":
            status = self.backend.status()
            return pages.overview_fields(status, now) | pages.state_fields(status)
        if page == pages.DEVICES_PAGE:
            return pages.device_fields(self.backend.status(), now)
        entry = self.backend.device(page)  # (not the whole status document, once a second)
        fields = json.dumps(pages.device_fields({"devices": {page: entry} if entry is not None else {}}, now))
        values = self.feed.live_json(page)  # (its JSON made by the feed: most of the event)
        return fields if not values else ("{" if fields == "{}" else fields[:-1] + ", ") + values + "}"

    # -- actions -----------------------------------------------------------------------------

    async def _read_now(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        await self._form(request, session)
        name = request.match_info["name"]
        if self.backend.points(name) is None:
            raise web.HTTPNotFound(text=f"no device {name!r} is polled\n")
        log.info("web: read now of %s from %s", name, request.remote)
        answer = await self._on_line(name, {"cmd": "read", "device": name, "trace": True})
        if not answer.get("ok"):
            return await self._device(request, message=f"Read now failed: {answer.get('error')}", status=502)
        return await self._device(request, result=pages.inspection(answer["report"]))

    async def _write(self, request: web.Request) -> web.Response:
        session = self._need_session(request)
        form = await self._form(request, session)
        name, source = request.match_info["name"], request.remote
        if not self.section.writes:
            raise web.HTTPForbidden(text="refused: writes are off (web.writes: false)\n")
        point, value = _text(form.get("point")), _text(form.get("value"))
        request_ = {"cmd": "write", "device": name, "point": point, "value": value,
                    "via": f"the web page (from {source})"}
        answer = await self._on_line(name, request_)
        outcome = ("ok, written " + str(answer.get("written") or value) if answer.get("ok") else
                   ("refused: " if answer.get("refused") else "failed: ") + str(answer.get("error")))
        log.log(logging.INFO if answer.get("ok") else logging.WARNING, "web: write %s.%s = %s from %s: %s",
                name, _shown(point), _shown(value, quote=True), source, outcome)
        status = 200 if answer.get("ok") else 403 if answer.get("refused") else 502
        return await self._device(request, message=f"Write {point} = {value}: {outcome}", status=status)

    async def _on_line(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run a tool request, one at a time per line (another one waiting is refused, not queued)."""
        if self.backend.points(name) is None:
            raise web.HTTPNotFound(text=f"no device {name!r} is polled\n")
        line = self.backend.bus(name) or f"device:{name}"
        if line in self._busy:
            return {"ok": False, "refused": True, "error": "another read or write on this line is under way"}
        self._busy.add(line)
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                return await self.backend.run_tool(request)
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {ACTION_TIMEOUT:g} s"}
        finally:
            self._busy.discard(line)


def _check_password(path: Path | None, password: str) -> bool:
    if path is None:
        raise ValueError("no password_file")
    return bool(password) and verify(read_hash(str(path)), password)


def _shown(text: str | None, *, quote: bool = False, limit: int = 64) -> str:
    """User input for a log line: a safe name as it is (quoted if ``quote``), else a short repr (no line breaks)."""
    if text is not None and NAME.fullmatch(text):
        return repr(text) if quote else text
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status)


def _now_ms() -> int:
    return int(time.time() * 1000)
