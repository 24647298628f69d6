"""A point's last 15 minutes as a small inline SVG: the min-max band of each bucket and the line of its last value."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 300, 64, 4
SPAN_MS = 15 * 60 * 1000

Bucket = tuple[int, float, float, float]  # (ts_ms, min, max, last)


def svg_chart(series: Sequence[Bucket], now_ms: int, unit: str | None = None) -> str:
    """The chart of ``series`` over the 15 minutes up to ``now_ms`` (an empty series: a note instead)."""
    recent = [b for b in series if b[0] >= now_ms - SPAN_MS]
    if not recent:
        return '<span class="muted">no readings in the last 15 minutes</span>'
    low = min(b[1] for b in recent)
    high = max(b[2] for b in recent)
    spread = (high - low) or 1.0

    def x(ts: int) -> float:
        return round(PAD + (WIDTH - 2 * PAD) * (ts - (now_ms - SPAN_MS)) / SPAN_MS, 1)

    def y(value: float) -> float:
        return round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - low) / spread, 1)

    band = [f"{x(b[0])},{y(b[2])}" for b in recent] + [f"{x(b[0])},{y(b[1])}" for b in reversed(recent)]
    line = " ".join(f"{x(b[0])},{y(b[3])}" for b in recent)
    suffix = f" {escape(unit)}" if unit else ""
    label = f"last 15 min: {low:g} to {high:g}{suffix}"
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"'
        f' aria-label="{label}"><title>{label}</title>'
        f'<polygon class="band" points="{" ".join(band)}"/>'
        f'<polyline class="line" points="{line}"/>'
        f'<text x="{PAD}" y="12">{high:g}</text><text x="{PAD}" y="{HEIGHT - PAD}">{low:g}</text></svg>'
    )
