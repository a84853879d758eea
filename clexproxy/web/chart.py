"""`usage_chart`: the usage page's bar chart, an inline SVG rendered on the server from the days' figures.

A pure function of its data, so a test reads the bars back without a browser, and the page needs
no script: the chart is there without JS, and a screen reader gets its `<title>`, an `aria-label`
that sums the period up, and a `<title>` per bar (the page's table repeats the figures too).

The page's Content-Security-Policy forbids inline styles, so the SVG has no `style` attribute:
geometry is presentation attributes, colours are classes that console.css themes (light and dark).
Every text is escaped here (the SVG is inserted as markup); the numbers are ours, but a caller's
title is not.

The scale: bars share one maximum (the largest day, at least 1, so an empty period draws an empty
axis rather than dividing by zero), rounded up to a "nice" step so the axis labels read 0 / 50 / 100
rather than 0 / 47 / 94. A day with usage always gets a visible bar (at least `MIN_BAR` high) even
beside one huge day, so "some" never looks like "none".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH = 720
HEIGHT = 240
LEFT = 48  # room for the axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the day labels
MIN_BAR = 2.0
GRID_LINES = 4


@dataclass(frozen=True, slots=True)
class DayBar:
    """One day of the chart: its date (`YYYY-MM-DD`) and what the account spent."""

    day: str
    credits: int
    calls: int = 0


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is >= `value` (at least 1): the axis' top."""
    if value <= 1:
        return 1
    magnitude = 1
    while magnitude * 10 < value:
        magnitude *= 10
    for step in (1, 2, 2.5, 5, 10):
        top = int(step * magnitude)
        if top >= value and top == step * magnitude:
            return top
    return magnitude * 10


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def summary(days: Sequence[DayBar]) -> str:
    """The chart in one sentence, its `aria-label`: the period, the total and the busiest day."""
    if not days:
        return "No usage to chart."
    total = sum(d.credits for d in days)
    period = f"{days[0].day} to {days[-1].day}" if len(days) > 1 else days[0].day
    if total == 0:
        return f"Credits used per day, {period}: none."
    busiest = max(days, key=lambda d: d.credits)
    return (f"Credits used per day, {period}: {_plural(total, 'credit')} in all; "
            f"the most on {busiest.day} ({_plural(busiest.credits, 'credit')}).")


def usage_chart(days: Sequence[DayBar], title: str = "Credits used per day", element_id: str = "usage-chart") -> Markup:
    """An `<svg>` bar chart of `days` (oldest first): one bar per day, an axis, and its text alternatives."""
    top = nice_ceiling(max((d.credits for d in days), default=0))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.7)
    parts = [
        f'<svg id="{escape(element_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" preserveAspectRatio="xMidYMid meet" aria-label="{escape(summary(days))}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(GRID_LINES + 1):
        value = top * i / GRID_LINES
        y = base - plot_h * i / GRID_LINES
        label = f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
        parts.append(f'<line class="chart-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="chart-axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    label_every = max(1, (len(days) + 5) // 6)  # about six day labels, whatever the period
    for i, d in enumerate(days):
        x = LEFT + slot * i + (slot - bar_w) / 2
        height = plot_h * d.credits / top
        if d.credits > 0:
            height = max(height, MIN_BAR)
        tip = f"{d.day}: {_plural(d.credits, 'credit')}, {_plural(d.calls, 'call')}"
        parts.append(
            f'<rect class="chart-bar" data-day="{escape(d.day)}" data-credits="{d.credits}" '
            f'x="{x:.1f}" y="{base - height:.1f}" width="{bar_w:.1f}" height="{height:.1f}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if i % label_every == 0:
            cx = LEFT + slot * i + slot / 2
            parts.append(f'<text class="chart-axis" x="{cx:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                         f"{escape(d.day[5:])}</text>")
    if not days:
        parts.append(f'<text class="chart-axis" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                     f'text-anchor="middle">No usage yet</text>')
    parts.append(f'<line class="chart-base" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
