"""Text output of the technician tools: aligned tables, point rows, frame traces."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.driver import Inspection, TraceEvent


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, as wide as their widest cell; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def show_value(value: Any) -> str:
    """A reading for a table: floats to 7 significant digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)


def render_inspection(title: str, report: Inspection) -> list[str]:
    """One device's read: a title, the trace (if any), a row per point, the device's error."""
    lines = [title]
    if report.get("trace"):
        lines += ["  " + line for line in format_trace(report["trace"])]
    rows = [
        [row["name"], row["raw"] or "-", show_value(row["value"]), row["unit"] or "", row["error"] or ""]
        for row in report["points"]
    ]
    lines += table(["point", "raw", "value", "unit", "error"], rows)
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    return lines


def failed(report: Inspection) -> bool:
    """True when the device or any point failed."""
    return bool(report.get("error")) or any(row["error"] for row in report["points"])


def format_trace(events: Sequence[TraceEvent]) -> list[str]:
    """A line per frame: ``12:00:01.234  TX  01 03 00 00 00 0a c5 cd``, answers with their delay."""
    lines = []
    for event in events:
        ts = event["ts"]
        clock = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
        extra = []
        if event.get("ms") is not None:
            extra.append(f"after {event['ms']:g} ms")
        if event["note"]:
            extra.append(event["note"])
        tail = f"  [{', '.join(extra)}]" if extra else ""
        lines.append(f"{clock}  {event['dir'].upper()}  {event['data'] or '(nothing)'}{tail}")
    return lines
