"""The figures of `gateway bench`: what is counted at one moment, and rates over a window."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

from gateway.bench.run import ProcSample
from gateway.bench.subscriber import SubSnapshot


@dataclass(frozen=True, slots=True)
class Mark:
    """Everything counted at one moment of a run."""

    proc: ProcSample
    totals: dict[str, int]  # device_totals() of the status
    acked: int  # readings the gateway got a PUBACK for
    pending: int
    evicted: int
    sub: SubSnapshot
    broker_cpu_s: float | None
    bench_cpu_s: float


@dataclass
class Window:
    """The samples of one measuring window."""

    marks: list[Mark]
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (time, readings delivered)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (time, gateway CPU seconds)


def window_figures(window: Window, offered: float) -> dict[str, Any]:
    """Rates and costs over the steady window.

    Readings are committed, sent and delivered in bursts (one per commit), so a count taken at the
    two ends of a window is off by up to a burst; rates are least-squares slopes over the samples.
    """
    marks = window.marks
    first, last = marks[0], marks[-1]
    dt = max(last.sub.t - first.sub.t, 1e-9)
    delivered_rate = slope(window.arrivals)
    cpu_rate = max(0.0, slope(window.cpu))
    polls = last.totals["polls"] - first.totals["polls"]
    poll_rate = polls / dt
    overruns = last.totals["overruns"] - first.totals["overruns"]
    out: dict[str, Any] = {
        "window_s": dt,
        "offered_per_s": offered,
        # Polls are counted as they happen (seqs only at commit): no bursts, the two ends suffice.
        "read_per_s": (last.totals["readings_read"] - first.totals["readings_read"]) / dt,
        "acked_per_s": slope([(m.sub.t, m.acked) for m in marks]),
        "delivered_per_s": delivered_rate,
        "delivered_fraction": delivered_rate / offered if offered else None,
        "cpu_percent": cpu_rate * 100,
        "cpu_us_per_reading": cpu_rate / delivered_rate * 1e6 if delivered_rate > 0 else None,
        "polls_per_s": poll_rate,
        "cpu_us_per_poll": cpu_rate / poll_rate * 1e6 if poll_rate > 0 else None,
        "messages_per_s": slope([(m.sub.t, m.sub.messages) for m in marks]),
        "overruns": overruns,
        "overrun_fraction": overruns / (polls + overruns) if polls + overruns else 0.0,
        "overruns_total": last.totals["overruns"],
        "pending_at_end": last.pending,
        "peak_rss_window_bytes": last.proc.peak_rss,
        "bench_cpu_percent": (last.bench_cpu_s - first.bench_cpu_s) / dt * 100,
    }
    out["cpu_us_per_message"] = cpu_rate / out["messages_per_s"] * 1e6 if out["messages_per_s"] > 0 else None
    requests = last.totals.get("requests", 0) - first.totals.get("requests", 0)
    driver_polls = last.totals.get("driver_polls", 0) - first.totals.get("driver_polls", 0)
    if requests and driver_polls:  # drivers that count their requests (modbus): did the reads coalesce?
        out["requests_per_poll"] = requests / driver_polls
    if first.proc.write_bytes is not None and last.proc.write_bytes is not None:
        produced = last.totals["produced"] - first.totals["produced"]
        out["disk_bytes_per_reading_window"] = _per(last.proc.write_bytes - first.proc.write_bytes, produced)
    if first.broker_cpu_s is not None and last.broker_cpu_s is not None:
        out["broker_cpu_percent"] = (last.broker_cpu_s - first.broker_cpu_s) / dt * 100
    return out


def wire_figures(snap: SubSnapshot) -> dict[str, float | None]:
    """Bytes on the wire per reading over everything the subscriber received."""
    return {
        "wire_payload_bytes_per_reading": _per(snap.payload_bytes, snap.readings),
        "mqtt_overhead_bytes_per_reading": _per(snap.overhead_bytes, snap.readings),
        "readings_per_message": _per(snap.readings, snap.messages),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of y over x (0.0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0


def _per(amount: float, count: float) -> float | None:
    return amount / count if count else None


def self_cpu() -> float:
    """User + system CPU seconds of this process (the bench and its subscriber)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
