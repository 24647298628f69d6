"""The page's HTML, rendered on the server from the status document, the feed and the driver's reports.

Every value that changes live sits in an element with ``data-k="<key>"``; the live stream sends
``{key: text}`` for the same keys (``fields``; a point's error key only while it has one), so the
first render and the updates agree. All text is escaped; nothing here knows a protocol: a
read-now report is shown as the driver gave it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any
from urllib.parse import quote

from gateway.web.chart import svg_chart
from gateway.web.feed import Feed, Latest, show

DEVICES_PAGE = "*devices"  # the live stream's name of the devices page (never a device name)


def ago(ts_ms: int | None, now_ms: int) -> str:
    if not ts_ms:
        return "never"
    seconds = max(0, (now_ms - ts_ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago" if seconds < 7200 else f"{seconds // 3600} h ago"


def reason(dev: Mapping[str, Any]) -> str:
    """A device's trouble in words ("" when it is fine)."""
    state = dev.get("state")
    if state == "ok":
        return ""
    if state == "starting":
        return "not read yet: connecting"
    return str(dev.get("last_error") or "not answering")


def overview_fields(status: Mapping[str, Any], now_ms: int) -> dict[str, str]:
    """The overview's live values, by key."""
    config, clock = status.get("config") or {}, status.get("clock") or {}
    broker, buf = status.get("broker") or {}, status.get("buffer") or {}
    uptime = ago(status.get("started_ts"), now_ms).removesuffix(" ago")
    return {
        "ov.uptime": uptime,
        "ov.hash": str(status.get("config_hash")),
        "ov.source": str(config.get("path")) + (f" (FALLBACK: {config['fallback']})" if config.get("fallback") else ""),
        "ov.reload_error": str(config.get("reload_error") or "none"),
        "ov.restart_pending": ", ".join(config.get("restart_pending") or []) or "none",
        "ov.clock": ("synced" if clock.get("synced") else "NOT synced") + f" (check: {clock.get('check')})",
        "ov.broker_node": str(broker.get("node") or "-"),
        "ov.broker": "connected" if broker.get("connected") else "NOT connected",
        "ov.broker_error": str(broker.get("last_error") or "none"),
        "ov.pending": show(buf.get("pending")),
        "ov.bytes": show(buf.get("bytes")),
        "ov.evicted": show(buf.get("evicted")),
        "ov.quarantined": show(buf.get("quarantined")),
        "ov.buffer_state": str(buf.get("state")) + (f" ({buf['reason']})" if buf.get("reason") else ""),
    }


def device_fields(status: Mapping[str, Any], now_ms: int, only: str | None = None) -> dict[str, str]:
    """Each device's live row (or only that of device ``only``), by key ``dev.<name>.<field>``."""
    out: dict[str, str] = {}
    devices = status.get("devices") or {}
    if only is not None:
        devices = {only: devices[only]} if only in devices else {}
    for name, dev in devices.items():
        counters = dev.get("counters") or {}
        out |= {
            f"dev.{name}.state": str(dev.get("state")),
            f"dev.{name}.reason": reason(dev),
            f"dev.{name}.last_read": ago(dev.get("last_read_ts"), now_ms),
            f"dev.{name}.polls": show(dev.get("polls")),
            f"dev.{name}.errors": show(dev.get("errors")),
            f"dev.{name}.counters": ", ".join(f"{k} {show(v)}" for k, v in counters.items()) or "-",
        }
    return out


def state_fields(status: Mapping[str, Any]) -> dict[str, str]:
    """Each device's state and reason (the overview's list), by key."""
    out: dict[str, str] = {}
    for name, dev in (status.get("devices") or {}).items():
        out[f"dev.{name}.state"] = str(dev.get("state"))
        out[f"dev.{name}.reason"] = reason(dev)
    return out


def value_fields(device: str, values: Mapping[str, Latest]) -> dict[str, str]:
    """A device's latest point values, by key ``val.<device>.<point>`` (and ``.error``)."""
    out: dict[str, str] = {}
    for point, latest in values.items():
        out[f"val.{device}.{point}"] = show(latest.value)
        out[f"val.{device}.{point}.error"] = latest.error or ""
    return out


def cell(key: str, fields: Mapping[str, str], tag: str = "td") -> str:
    return f'<{tag} data-k="{escape(key)}">{escape(fields.get(key, ""))}</{tag}>'


def layout(title: str, body: str, *, csrf: str | None, live: str | None = None, message: str = "") -> str:
    """A whole page: the header with the navigation (and the logout form when logged in), then ``body``."""
    nav = ('<a href="/">Overview</a> <a href="/devices">Devices</a> <a href="/log">Log</a>'
           if csrf else "")
    logout = (f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf"'
              f' value="{escape(csrf)}"><button>Log out</button></form>' if csrf else "")
    note = f'<p class="message">{escape(message)}</p>' if message else ""
    live_attr = f' data-live="{escape(live)}"' if live is not None else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)} - city-gateway</title><link rel="stylesheet" href="/static/style.css">'
        f'<script src="/static/app.js" defer></script></head><body{live_attr}>'
        f'<header><strong>city-gateway</strong> <nav>{nav}</nav>{logout}</header>'
        f'<main><h1>{escape(title)}</h1>{note}{body}</main></body></html>'
    )


def login_page(token: str, message: str = "") -> str:
    body = ('<form method="post" action="/login" class="login">'
            f'<input type="hidden" name="csrf" value="{escape(token)}">'
            '<label>Password <input type="password" name="password" autocomplete="current-password" autofocus>'
            '</label> <button>Log in</button></form>')
    return layout("Log in", body, csrf=None, message=message)


def overview_page(status: Mapping[str, Any], csrf: str, now_ms: int) -> str:
    f = overview_fields(status, now_ms) | device_fields(status, now_ms)
    rows = [("Gateway", f'{escape(str(status.get("gateway_id", "")))} version {escape(str(status.get("version")))}'
                        f', up {cell("ov.uptime", f, "span")}'),
            ("Config", f'{cell("ov.source", f, "span")}, hash {cell("ov.hash", f, "span")}'),
            ("Last reload error", cell("ov.reload_error", f, "span")),
            ("Waiting for a restart", cell("ov.restart_pending", f, "span")),
            ("Clock", cell("ov.clock", f, "span")),
            ("Broker", f'{cell("ov.broker_node", f, "span")}: {cell("ov.broker", f, "span")},'
                       f' last error {cell("ov.broker_error", f, "span")}'),
            ("Buffer", f'{cell("ov.buffer_state", f, "span")}: pending {cell("ov.pending", f, "span")} readings,'
                       f' {cell("ov.bytes", f, "span")} bytes, evicted {cell("ov.evicted", f, "span")},'
                       f' quarantined {cell("ov.quarantined", f, "span")}')]
    table = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    devices = "".join(
        f'<li><a href="/devices/{quote(name)}">{escape(name)}</a> {cell(f"dev.{name}.state", f, "span")}'
        f' <span class="muted">{cell(f"dev.{name}.reason", f, "span")}</span></li>'
        for name in failing_first(status))
    body = f'<table class="kv">{table}</table><h2>Devices</h2><ul class="devices">{devices}</ul>'
    return layout("Overview", body, csrf=csrf, live="")


def failing_first(status: Mapping[str, Any]) -> list[str]:
    devices = status.get("devices") or {}
    return sorted(devices, key=lambda n: (devices[n].get("state") == "ok", n))


def devices_page(status: Mapping[str, Any], csrf: str, now_ms: int) -> str:
    f = device_fields(status, now_ms)
    head = "".join(f"<th>{h}</th>" for h in ("Device", "State", "Why", "Last read", "Polls", "Errors", "Driver"))
    rows = "".join(
        f'<tr><td><a href="/devices/{quote(n)}">{escape(n)}</a></td>'
        + "".join(cell(f"dev.{n}.{k}", f) for k in ("state", "reason", "last_read", "polls", "errors", "counters"))
        + "</tr>"
        for n in failing_first(status))
    return layout("Devices", f'<table class="grid"><tr>{head}</tr>{rows}</table>', csrf=csrf, live=DEVICES_PAGE)


def device_page(name: str, status: Mapping[str, Any], feed: Feed, points: Iterable[str],
                csrf: str, now_ms: int, *, writes: bool, result: str = "",
                message: str = "") -> str:
    values = feed.values(name)
    f = device_fields(status, now_ms) | value_fields(name, values)
    rows = []
    for point in points:
        latest = values.get(point)
        series = feed.series(name, point, now_ms)
        chart = (svg_chart(series, now_ms, latest.unit if latest else None) if series is not None
                 else f'<span class="muted">{no_chart(latest, feed.history.full)}</span>')
        unit = escape(latest.unit or "") if latest else ""
        rows.append(f"<tr><th>{escape(point)}</th>{cell(f'val.{name}.{point}', f)}<td>{unit}</td>"
                    f"{cell(f'val.{name}.{point}.error', f)}<td>{chart}</td></tr>")
    state = (f'<p>State {cell(f"dev.{name}.state", f, "span")} <span class="muted">'
             f'{cell(f"dev.{name}.reason", f, "span")}</span>, last read {cell(f"dev.{name}.last_read", f, "span")}'
             "</p>")
    table = ('<table class="grid points"><tr><th>Point</th><th>Value</th><th>Unit</th><th>Error</th>'
             f'<th>Last 15 min</th></tr>{"".join(rows)}</table>')
    action = f"/devices/{quote(name)}"
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    forms = f'<form method="post" action="{action}/read" class="inline">{hidden}<button>Read now</button></form>'
    if writes:
        options = "".join(f"<option>{escape(p)}</option>" for p in points)
        forms += (f'<form method="post" action="{action}/write" class="write">{hidden}'
                  f'<label>Point <select name="point">{options}</select></label> '
                  '<label>Value <input name="value" required size="8"></label> <button>Write</button></form>')
    return layout(name, state + table + forms + result, csrf=csrf, live=name, message=message)


def no_chart(latest: Latest | None, full: bool) -> str:
    """Why a point has no chart (it has no history), given its latest reading."""
    if latest is None:
        return "no readings yet"
    value = latest.value
    if value is not None and not isinstance(value, int | float):
        return "no chart: not a number"
    if value is None or value != value:  # failed reads, NaN: no number to chart (so far, or lately)
        return ("no chart: no number read lately, and the history is full (it keeps 2 MB at most)" if full
                else "no chart yet: no number read so far")
    return "no chart: the history is full (it keeps 2 MB at most)"  # (a number is folded in when a page asks)


def inspection(report: Mapping[str, Any]) -> str:
    """A driver's ``inspect`` report, as it gave it: the points with raw data, the error, the frames."""
    points = "".join(
        f"<tr><td>{escape(str(p.get('name')))}</td><td><code>{escape(str(p.get('raw') or ''))}</code></td>"
        f"<td>{escape(show(p.get('value')))}</td><td>{escape(str(p.get('unit') or ''))}</td>"
        f"<td>{escape(str(p.get('error') or ''))}</td></tr>" for p in report.get("points") or [])
    frames = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.gmtime(float(t.get('ts') or 0)))}</td>"
        f"<td>{escape(str(t.get('dir')))}</td><td><code>{escape(str(t.get('data')))}</code></td>"
        f"<td>{_ms(t.get('ms'))}</td><td>{escape(str(t.get('note') or ''))}</td></tr>"
        for t in report.get("trace") or [])
    error = f'<p class="error">{escape(str(report["error"]))}</p>' if report.get("error") else ""
    return (f'<section id="read-now"><h2>Read now</h2>{error}<table class="grid"><tr><th>Point</th><th>Raw</th>'
            f'<th>Value</th><th>Unit</th><th>Error</th></tr>{points}</table>'
            f'<h3>Frames</h3><table class="grid frames"><tr><th>UTC</th><th>Dir</th><th>Data</th><th>After</th>'
            f'<th>Note</th></tr>{frames or "<tr><td colspan=5>none</td></tr>"}</table></section>')


def _ms(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f} ms"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if isinstance(ts, int | float) else ""


def log_page(lines: Iterable[Mapping[str, Any]], csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{_when(line.get('ts'))}</td><td>{escape(str(line.get('level')))}</td>"
        f"<td>{escape(str(line.get('message')))}</td></tr>" for line in reversed(list(lines)))
    return layout("Log", f'<table class="grid log"><tr><th>UTC</th><th>Level</th><th>Message</th></tr>{rows}'
                         "</table>", csrf=csrf)
