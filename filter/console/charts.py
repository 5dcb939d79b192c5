"""Small SVG charts drawn on the server: no script, no remote font, nothing to load."""

from __future__ import annotations

from datetime import date
from html import escape

WIDTH, HEIGHT, GAP = 140, 28, 2


def daily_bars(counts: list[int], days: list[date], label: str) -> str:
    """One bar per day, scaled to the busiest day; each bar's title says its day and count."""
    top = max(counts, default=0) or 1
    step = WIDTH / max(len(counts), 1)
    bars = []
    for n, (count, day) in enumerate(zip(counts, days, strict=True)):
        height = 0 if count == 0 else max(1.0, (HEIGHT - 2) * count / top)
        bars.append(
            f'<rect x="{n * step:.1f}" y="{HEIGHT - height:.1f}" width="{step - GAP:.1f}" '
            f'height="{height:.1f}"><title>{day.isoformat()}: {count}</title></rect>'
        )
    total = sum(counts)
    return (
        f'<svg class="chart" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}: {total} in {len(counts)} days">'
        f'<line x1="0" y1="{HEIGHT - 0.5}" x2="{WIDTH}" y2="{HEIGHT - 0.5}" class="axis"/>'
        + "".join(bars)
        + "</svg>"
    )
