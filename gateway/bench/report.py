"""The readable table of `gateway bench` (``--json`` prints the report document itself)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Row = tuple[str, str, str]  # label, value, note

NOTES = (
    "Delivered = distinct readings that reached the bench's subscriber (checked by seq), not just produced.",
    "CPU = the gateway process's CPU time, all threads (in a window: /proc/<pid>/task/*/schedstat; whole"
    " run: wait4); it includes the simulated devices' own work and the bench's status requests (one per 5 s);"
    " the modbus scenario's Modbus server runs in the bench process (others' CPU)."
    " RSS = its peak resident set (ru_maxrss).",
    "Latency = arrival at the subscriber - reading timestamp; the broker forwards and PUBACKs at the same"
    " moment, so this is read-to-PUBACK give or take ~1 ms on loopback.",
    "Disk = write_bytes of the gateway's own I/O accounting over the whole run (WAL, checkpoints and the"
    " final checkpoint at shutdown included), per reading produced.",
    "Wire = MQTT payload bytes per reading over the whole run; framing = PUBLISH header + topic + packet id"
    " + PUBACK (no TCP/IP).",
)


def render(report: dict[str, Any]) -> str:
    """The report as a few aligned tables, one per scenario, with a verdict at the end."""
    m, o = report["machine"], report["options"]
    lines = [
        f"gateway bench: city-gateway {report['version']}, Python {m['python']}, {m['cpus']} CPUs {m['arch']},"
        f" {m['system']}",
        f"broker: {report['broker']}; window {o['duration']:g} s after a {o['warmup']:g} s warm-up;"
        f" signals {','.join(o['signals'])}",
    ]
    for name, result in report["scenarios"].items():
        lines.append("")
        lines.extend(_scenario(name, result))
    lines.append("")
    lines.extend(f"  * {note}" for note in NOTES)
    lines.append("")
    verdict = "OK: every reading produced was delivered" if report["ok"] else "FAILED: see the scenarios above"
    lines.append(f"result: {verdict} ({report['elapsed_s']:g} s)")
    return "\n".join(lines)


def _scenario(name: str, r: dict[str, Any]) -> list[str]:
    header = f"{name}"
    if "groups" in r:
        groups = " + ".join(f"{_devices(g)} x {g['points']} points every {_dur(g['interval_s'])}"
                            for g in r["groups"])
        header += (f"  (offered {_num(r['offered_per_s'])} readings/s: {groups}, {r['encoding']},"
                   f" commit every {_dur(r['commit_interval_s'])})")
    if "skipped" in r:
        return [header, f"  skipped: {r['skipped']}"]
    rows = _ROWS.get(name, _steady_rows)(r)
    if r.get("error"):
        rows.append(("FAILED", r["error"].splitlines()[0], ""))
        rows.extend(("", line, "") for line in r["error"].splitlines()[1:])
    elif "produced" in r or name == "wire":
        rows.append(_check(r) if name != "wire" else ("check", *_wire_check(r)))
        if not r.get("ok"):
            rows.extend(("gateway log", "", line) for line in r.get("gateway_warnings", ()))
    width = max((len(label) for label, _, _ in rows), default=0)
    vwidth = max((len(value) for _, value, _ in rows), default=0)
    return [header] + [f"  {label:<{width}}  {value:>{vwidth}}  {note}".rstrip() for label, value, note in rows]


def _steady_rows(r: dict[str, Any]) -> list[Row]:
    if "delivered_per_s" not in r:
        return []
    fraction = r.get("delivered_fraction")
    rows: list[Row] = [
        ("delivered", f"{_num(r['delivered_per_s'])} readings/s",
         f"{_pct(fraction)} of offered; read {_num(r['read_per_s'])}/s, acked {_num(r['acked_per_s'])}/s"),
        ("gateway CPU", f"{_f(r.get('cpu_us_per_reading'))} µs/reading",
         f"{r['cpu_percent']:.0f}% of a core in the window; {_f(r.get('cpu_us_per_reading_run'))} µs/reading"
         " over the whole run"),
        ("peak RSS", f"{_mb(r.get('peak_rss_bytes'))} MiB", "whole run"),
        ("overruns", f"{_num(r['overruns'])} polls", f"{_pct(r['overrun_fraction'])} of polls skipped in the window"),
        ("backlog at window end", f"{_num(r['pending_at_end'])} readings", "buffer pending"),
        ("startup", f"{_f(r.get('first_reading_s'), 2)} s", "spawn to first reading delivered"),
        ("others' CPU", f"{_f(r.get('broker_cpu_percent'), 0)}% broker",
         f"{_f(r.get('bench_cpu_percent'), 0)}% subscriber (this process), of one core"),
    ]
    return rows


def _moderate_rows(r: dict[str, Any]) -> list[Row]:
    rows = _steady_rows(r)
    if "latency_ms" not in r:
        return rows
    lat = r["latency_ms"]
    rows[1:1] = [
        ("latency p50 / p99", f"{_f(lat.get('p50'), 0)} / {_f(lat.get('p99'), 0)} ms",
         f"read to arrival (= PUBACK ± ms), max {_f(lat.get('max'), 0)} ms"),
        ("disk written", f"{_f(r.get('disk_bytes_per_reading'), 1)} B/reading",
         f"{_num(r.get('disk_bytes_total'))} bytes over the whole run"),
        ("on the wire", f"{_f(r.get('wire_payload_bytes_per_reading'), 1)} B/reading",
         f"payload; + {_f(r.get('mqtt_overhead_bytes_per_reading'), 2)} B MQTT framing,"
         f" {_f(r.get('readings_per_message'), 0)} readings/message"),
    ]
    return rows


def _modbus_rows(r: dict[str, Any]) -> list[Row]:
    rows = _moderate_rows(r)
    if "requests_per_poll" in r:
        rows.insert(2, ("Modbus requests", f"{_f(r['requests_per_poll'], 2)} per poll",
                        f"{r['points_per_device']} holding registers per poll (coalesced block reads);"
                        f" {_num(r.get('server_reads'))} reads served"))
    if floor := r.get("floor"):
        at = next((i + 1 for i, row in enumerate(rows) if row[0] == "gateway CPU"), len(rows))
        lib, bare = floor.get("pymodbus", {}), floor.get("socket", {})
        rows.insert(at, ("  floor: no gateway", f"{_f(lib.get('cpu_us_per_reading'))} µs/reading",
                         "the same polls in a bare asyncio loop, pymodbus client; with a bare socket"
                         f" instead: {_f(bare.get('cpu_us_per_reading'))} µs"))
        rows[at + 1:at + 1] = [("  floor not measured", client, run["error"])
                               for client, run in floor.items() if "error" in run]
    return rows


def _drain_rows(r: dict[str, Any]) -> list[Row]:
    if "drain_per_s" not in r:
        return []
    return [
        ("backlog", f"{_num(r['backlog_readings'])} readings",
         f"built in {_f(r['fill_s'], 1)} s with the broker away by the first group, which then stops"),
        ("reconnect", f"{_f(r['reconnect_s'], 2)} s", "broker up to first reading delivered (publisher backoff)"),
        ("drain", f"{_num(r['drain_per_s'])} readings/s",
         f"backlog / {_f(r['drain_s'], 2)} s from first reading to the last of the backlog"),
        ("delivered while draining", f"{_num(r['delivered_per_s'])} readings/s",
         f"while {_num(r['ongoing_per_s'])} readings/s keep being polled"),
        ("gateway CPU", f"{_f(r.get('cpu_us_per_reading'))} µs/reading",
         "per reading delivered, from the broker coming up to the end of the drain"),
        ("peak RSS", f"{_mb(r.get('peak_rss_bytes'))} MiB", "whole run"),
    ]


def _many_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for shape, e in r.items():
        if not isinstance(e, dict) or "delivered_per_s" not in e:
            continue
        rows += [
            (f"{shape}: CPU", f"{_f(e.get('cpu_us_per_reading'))} µs/reading",
             f"{_f(e.get('cpu_us_per_poll'))} µs per device poll; {e['cpu_percent']:.0f}% of a core"),
            (f"{shape}: delivered", f"{_num(e['delivered_per_s'])} readings/s",
             f"{_pct(e.get('delivered_fraction'))} of offered; {_num(e.get('messages_per_s'))} messages/s,"
             f" {_num(e.get('polls_per_s'))} polls/s{_grouped(e)}"),
            (f"{shape}: peak RSS", f"{_mb(e.get('peak_rss_bytes'))} MiB", "whole run"),
        ]
        if "produced" in e:
            rows.append((f"{shape}: check", *_check(e)[1:]))
        rows += _mqtt_floor_rows(shape, e)
    return rows


def _mqtt_floor_rows(shape: str, e: dict[str, Any]) -> list[Row]:
    """The MQTT client alone at the run's messages/s (gateway.bench.mqttfloor), and the gateway beside it."""
    floor = e.get("floor")
    if not floor:
        return []
    if "error" in floor:
        return [(f"{shape}: floor", "-", floor["error"])]
    gateway = e.get("cpu_us_per_message")
    beside = f"; the gateway: {_f(gateway)} µs per message" if gateway is not None else ""
    return [(f"{shape}: floor", f"{_f(floor['cpu_us_per_message'])} µs/message",
             f"the MQTT client alone (QoS 1, {floor['inflight']} in flight), {_num(floor['rate'])} messages/s"
             f" of {floor['payload_bytes']} B{beside}")]


def _grouped(run: dict[str, Any]) -> str:
    """How the many scenario's messages were made, when not one device per message (--group-devices)."""
    n = run.get("group_devices", 1)
    return f"; up to {n:,} devices per message (mqtt.batch.devices)" if n > 1 else ""


# The wire scenario's runs; the metered ones: packed (and deflated) with linger, on sensor-like data.
WIRE_RUNS = ("cbor", "json", "packed", "packed-metered", "packed-metered-deflate")


def _wire_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for encoding in WIRE_RUNS:
        e = r.get(encoding)
        if not e or "wire_payload_bytes_per_reading" not in e:
            continue
        rows.append((encoding, f"{_f(e['wire_payload_bytes_per_reading'], 1)} B/reading",
                     f"payload; + {_f(e.get('mqtt_overhead_bytes_per_reading'), 2)} B MQTT framing;"
                     f" {_f(e.get('readings_per_message'), 0)} readings/message"))
    return rows


def _startup_rows(r: dict[str, Any]) -> list[Row]:
    if "first_reading_s" not in r:
        return []
    return [
        ("control socket up", f"{_f(r['ready_s'], 2)} s", "after spawn"),
        ("first reading delivered", f"{_f(r['first_reading_s'], 2)} s",
         f"after spawn (includes the first commit, every {_dur(r['commit_interval_s'])})"),
        ("peak RSS", f"{_mb(r.get('peak_rss_bytes'))} MiB", "whole run"),
    ]


def _failover_rows(r: dict[str, Any]) -> list[Row]:
    if "death_to_first_puback_s" not in r:
        return []
    return [
        ("brokers", r["brokers"], f"the gateway's node {r['killed']} {r['how']} after the warm-up"),
        ("node death to PUBACK", f"{_f(r['death_to_first_puback_s'], 2)} s",
         f"to the first PUBACK on {r['moved_to']} (keepalive {r['keepalive_s']:g} s,"
         f" publish timeout {r['publish_timeout_s']:g} s)"),
        ("  reading / status acked", f"{_f(r['death_to_first_reading_acked_s'], 2)} / "
         f"{_f(r['death_to_status_acked_s'], 2)} s",
         f"after the death: the first reading's PUBACK, the retained status's (commit every"
         f" {_dur(r['commit_interval_s'])})"),
        ("readings resent", f"{_num(r['readings_resent'])}",
         "arrived twice: sent to the dead node, no PUBACK, sent again on the new one"),
        ("peak RSS", f"{_mb(r.get('peak_rss_bytes'))} MiB", "whole run"),
    ]


def _web_rows(r: dict[str, Any]) -> list[Row]:
    if "on" not in r:
        return []
    off, on = r["off"], r["on"]
    return [
        ("CPU without page", f"{_f(r.get('off_cpu_us_per_reading_median'))} µs/reading",
         f"median of {r['pairs']} interleaved moderate runs: {', '.join(map(_f, off['cpu_us_per_reading']))}"),
        ("CPU with page", f"{_f(r.get('on_cpu_us_per_reading_median'))} µs/reading",
         f"one browser on a device's live page: {', '.join(map(_f, on['cpu_us_per_reading']))}"),
        ("CPU increase", f"{_f(r.get('cpu_increase_percent'))} %", "target ≤ 10%"),
        ("RSS without / with", f"{_mb(r.get('off_rss_bytes_median'))} / {_mb(r.get('on_rss_bytes_median'))} MiB",
         f"+{_mb(r.get('rss_bytes_increase'))} MiB at the window's end (target ≤ 10 MiB)"),
        ("peak RSS without / with",
         f"{_mb(r.get('off_peak_rss_bytes_median'))} / {_mb(r.get('on_peak_rss_bytes_median'))} MiB",
         f"+{_mb(r.get('peak_rss_bytes_increase'))} MiB (the login's scrypt holds 16 MiB for a moment)"),
        ("check", "OK" if r.get("ok") else "LOST", f"live events received: {r.get('page_events')}"),
    ]


_ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "moderate": _moderate_rows, "modbus": _modbus_rows, "drain": _drain_rows, "wire": _wire_rows,
    "startup": _startup_rows, "failover": _failover_rows, "many": _many_rows, "web": _web_rows,
}


def _check(r: dict[str, Any]) -> Row:
    status = "OK" if r.get("ok") else "LOST"
    return ("check", status, f"{_num(r['produced'])} produced, {_num(r['delivered'])} delivered,"
            f" {_num(r['missing'])} missing, {_num(r['duplicates'])} duplicates, {_num(r['evicted'])} evicted")


def _wire_check(r: dict[str, Any]) -> tuple[str, str]:
    parts = [f"{enc}: {_num(r[enc]['produced'])} produced, {_num(r[enc]['missing'])} missing"
             for enc in WIRE_RUNS if isinstance(r.get(enc), dict) and "produced" in r[enc]]
    return ("OK" if r.get("ok") else "LOST"), "; ".join(parts)


def _devices(group: dict[str, Any]) -> str:
    """``10 devices``; a group of another driver than the simulated one names it: ``1 modbus device``."""
    n, driver = group["devices"], group.get("driver", "simulated")
    kind = "" if driver == "simulated" else f"{driver} "
    return f"{n} {kind}device{'' if n == 1 and kind else 's'}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{round(x):,}"


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else one line per step."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_step = ""

    def step(self, text: str, detail: str = "") -> None:
        """Show ``text`` (plus ``detail`` on a terminal); off a terminal, print each new ``text`` once."""
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}{'  ' + detail if detail else ''}")
            self.stream.flush()
        elif text != self._last_step:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last_step = text

    def done(self) -> None:
        """Clear the line (terminal only)."""
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
