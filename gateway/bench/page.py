"""`gateway bench --scenario web`: what the technician's page costs the gateway.

The moderate load is run PAIRS times without the page and PAIRS times with it, interleaved (off,
on, off, on, ...: a machine that drifts hurts both alike), each a full steady run. With the page
on, one "browser" is connected for the whole run: it logs in as a browser does (the login form,
its CSRF token and cookies, Origin) and then reads the live stream of a device's page, every event
(``PageVisitor``; the browser's own rendering costs the browser, not the gateway). The result is
the median CPU per reading and the median peak RSS of each side, and their differences.

The password file is made by ``gateway web passwd`` (the bench imports nothing of gateway.web).
"""

from __future__ import annotations

import http.client
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.broker import free_port
from gateway.bench.metrics import window_figures
from gateway.bench.run import LOOPBACK, BenchError

if TYPE_CHECKING:
    from gateway.bench.main import Bench

PAIRS = 5
PASSWORD = "bench page password"
# Both runs warm up past the page's first 10-second bucket: there it makes the history of every point
# that fits (about 5 ms once, for the moderate load's 1,000 points), a start-up cost like the imports,
# which the steady window would otherwise catch in some runs and not others.
PAGE_WARMUP = 12.0
FIGURES = ("cpu_us_per_reading", "rss_bytes", "peak_rss_bytes")  # compared without and with the page


class PageVisitor:
    """One browser on the page: logs in, then reads ``/events?device=...`` in a thread until closed."""

    def __init__(self, port: int, device: str) -> None:
        self.port, self.device = port, device
        self.events = 0
        self.error: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._thread = threading.Thread(target=self._run, name="page-visitor", daemon=True)

    def start(self) -> PageVisitor:
        cookie = self._login()
        self._conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        self._conn.request("GET", f"/events?device={self.device}", headers={"Cookie": cookie})
        response = self._conn.getresponse()
        if response.status != 200:
            raise BenchError(f"the page's live stream answered {response.status}")
        self._response = response
        self._thread.start()
        return self

    def _login(self) -> str:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            conn.request("GET", "/login")
            form = conn.getresponse()
            html, login_cookie = form.read().decode(), _cookie(form, "gw_login")
            token = re.search(r'name="csrf" value="([^"]+)"', html)
            if token is None or login_cookie is None:
                raise BenchError("the page's login form has no token")
            body = f"csrf={token.group(1)}&password={PASSWORD.replace(' ', '+')}"
            conn.request("POST", "/login", body=body, headers={
                "Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie,
                "Origin": f"http://{LOOPBACK}:{self.port}"})
            done = conn.getresponse()
            done.read()
            session = _cookie(done, "gw_session")
            if done.status != 303 or session is None:
                raise BenchError(f"the bench could not log in to the page ({done.status})")
            return session
        finally:
            conn.close()

    def _run(self) -> None:
        assert self._response is not None
        try:
            while line := self._response.readline():
                if line.startswith(b"data: "):
                    self.events += 1
        except (OSError, http.client.HTTPException) as exc:
            self.error = str(exc)

    def close(self) -> None:
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.close()  # readline() in the thread ends at once
        self._thread.join(timeout=5)


def _cookie(response: http.client.HTTPResponse, name: str) -> str | None:
    for header in response.headers.get_all("Set-Cookie") or []:
        pair = header.split(";", 1)[0]
        if pair.startswith(f"{name}="):
            return pair
    return None


def password_file(directory: Path) -> Path:
    path = directory / "web.passwd"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "web", "passwd", "--file", str(path)],
                          input=PASSWORD + "\n", text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"gateway web passwd failed: {done.stderr.strip()}")
    return path


def page_run(bench: Bench, on: bool) -> dict[str, Any]:
    """One steady moderate run (as RunSteps.steady), with the page on and a browser connected from
    the first reading to the end, or without the page; adds the RSS at the window's end."""
    port = free_port()
    web = {"enabled": True, "listen": [f"{LOOPBACK}:{port}"], "password_file": str(password_file(bench.tmp))}
    group = bench.moderate_group()
    with bench.open_run(f"web-{'on' if on else 'off'}", [group], bench.opts.encoding,
                        web=web if on else None) as run:
        run.gw.start().wait_ready()
        bench.wait_first(run)
        visitor = PageVisitor(port, group.entries()[0]["name"]).start() if on else None
        try:
            bench.sleep(run, "warming up", max(bench.opts.warmup, PAGE_WARMUP))
            run.result.update(window_figures(bench.measure(run, bench.opts.duration), group.rate))
            run.result["rss_bytes"] = rss(run.gw.pid)
        finally:
            if visitor is not None:
                visitor.close()
                run.result.update(page_events=visitor.events, page_error=visitor.error)
        bench.finish(run)
    return run.result


def rss(pid: int) -> int:
    """The resident set size of ``pid`` now, in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scenario_web(bench: Bench) -> dict[str, Any]:
    """PAIRS interleaved moderate runs without and with the page; medians and differences."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(PAIRS):
        for side in ("off", "on"):
            runs[side].append(page_run(bench, side == "on"))
    out: dict[str, Any] = {"pairs": PAIRS, "ok": all(r.get("ok") for side in runs.values() for r in side)}
    for side, results in runs.items():
        out[side] = {key: [r.get(key) for r in results] for key in FIGURES}
        for key in FIGURES:
            out[f"{side}_{key}_median"] = _median(out[side][key])
    out["page_events"] = [r.get("page_events") for r in runs["on"]]
    off, on = out["off_cpu_us_per_reading_median"], out["on_cpu_us_per_reading_median"]
    out["cpu_increase_percent"] = (on / off - 1) * 100 if off and on else None
    for key in ("rss_bytes", "peak_rss_bytes"):
        off, on = out[f"off_{key}_median"], out[f"on_{key}_median"]
        out[f"{key}_increase"] = on - off if off and on else None
    return out


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None
