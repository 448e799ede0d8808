"""Inline SVG charts for the console's metering page, drawn on the server: no chart library,
no script, no asset from outside the package (holder networks may be air-gapped).

Each chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>`` (named by
``aria-labelledby``) and every mark carries its own ``<title>``, so a screen reader or a hover
gives the number; the pages also print the same numbers in a table. Labels are escaped here
(the charts are inserted into templates as markup).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["bar_chart", "step_line_chart"]

WIDTH, HEIGHT = 560, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 44
_ids = itertools.count(1)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _frame(kind: str, title: str, desc: str, body: list[str]) -> Markup:
    n = next(_ids)
    tid, did = f"chart-{n}-title", f"chart-{n}-desc"
    return Markup(
        f'<svg class="chart chart-{kind}" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" aria-labelledby="{tid} {did}" '
        'xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{tid}">{escape(title)}</title><desc id="{did}">{escape(desc)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _axes(y_max: float, y_label: str) -> list[str]:
    x0, y0, x1 = _LEFT, HEIGHT - _BOTTOM, WIDTH - _RIGHT
    return [
        f'<line class="axis" x1="{x0}" y1="{_TOP}" x2="{x0}" y2="{y0}" stroke="currentColor"/>',
        f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="currentColor"/>',
        f'<text x="{x0 - 6}" y="{_TOP + 10}" text-anchor="end" font-size="11">{escape(_fmt(y_max))}</text>',
        f'<text x="{x0 - 6}" y="{y0}" text-anchor="end" font-size="11">0</text>',
        (f'<text x="12" y="{(_TOP + y0) // 2}" font-size="11" transform="rotate(-90 12 {(_TOP + y0) // 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'),
    ]


def step_line_chart(points: Sequence[tuple[float, float]], *, title: str, desc: str,
                    y_label: str = "ε spent") -> Markup:
    """A cumulative step line through ``(unix time, value)`` points, one marked circle per point.

    Values are expected non-decreasing (cumulative ε); the y axis starts at 0.
    """
    if not points:
        return _frame("line", title, desc + " No data yet.", [
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" font-size="13">no data</text>'])
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    y_max = max(v for _, v in points) or 1.0
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def xy(t: float, v: float) -> tuple[float, float]:
        x = _LEFT + (plot_w * (t - t0) / span if len(points) > 1 else plot_w / 2)
        return round(x, 1), round(HEIGHT - _BOTTOM - plot_h * v / y_max, 1)

    path, previous = [], None
    for t, v in points:
        x, y = xy(t, v)
        if previous is None:
            path.append(f"M{x},{HEIGHT - _BOTTOM} L{x},{y}")
        else:
            path.append(f"L{x},{previous} L{x},{y}")  # a step: spending happens at release time
        previous = y
    body = _axes(y_max, y_label)
    body.append(f'<path class="series" d="{" ".join(path)}" fill="none" stroke="currentColor" stroke-width="2"/>')
    for t, v in points:
        x, y = xy(t, v)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
        body.append(f'<circle class="point" cx="{x}" cy="{y}" r="3.5"><title>{escape(when)}: '
                    f"{escape(_fmt(v))}</title></circle>")
    for t, anchor, x in ((t0, "start", _LEFT), (t1, "end", WIDTH - _RIGHT)):
        body.append(f'<text x="{x}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="{anchor}" font-size="11">'
                    f'{escape(time.strftime("%H:%M:%S", time.gmtime(t)))}</text>')
    return _frame("line", title, desc, body)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, desc: str, y_label: str = "jobs") -> Markup:
    """Vertical bars, one per ``(label, value)``, each labelled under its bar and titled with its value."""
    if not bars:
        return _frame("bars", title, desc + " No data yet.", [
            f'<text x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle" font-size="13">no data</text>'])
    y_max = max(v for _, v in bars) or 1.0
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(bars)
    width = max(4.0, min(64.0, slot * 0.6))
    body = _axes(y_max, y_label)
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / y_max
        x = _LEFT + slot * i + (slot - width) / 2
        y = HEIGHT - _BOTTOM - h
        body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
                    f'fill="currentColor" fill-opacity="0.55"><title>{escape(label)}: {escape(_fmt(value))}'
                    "</title></rect>")
        body.append(f'<text x="{x + width / 2:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" '
                    f'font-size="11">{escape(label)}</text>')
    return _frame("bars", title, desc, body)
