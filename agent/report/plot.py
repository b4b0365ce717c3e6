"""The score-against-iteration plot of a neuron page, as inline SVG (no JavaScript library)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from agent.report.data import EntryView


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def format_number(value: float | None, digits: int = 3) -> str:
    """A score or activation for display: ``0.245``, ``1.2e+04``; an en dash for none."""
    if value is None or not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) >= 10_000 or abs(value) < 10**-(digits)):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    if abs(value) >= 10_000:
        return f"{value:.1e}"
    return f"{value:.{min(decimals + 1, 4)}f}".rstrip("0").rstrip(".") or "0"


def score_plot(
    entries: Sequence[EntryView],
    label: str = "",
    width: int = 560,
    height: int = 260,
) -> str:
    """SVG: each concept's score (dots) and the best score so far (a step line) by iteration.

    The final label's point is ringed. An empty history gives a short note instead of axes.
    """
    points = [(e.iteration, e.score, e) for e in entries if e.score is not None]
    if not points:
        return '<p class="muted">No concept was scored, so there is nothing to plot.</p>'
    left, right, top, bottom = 56, 16, 14, 40
    inner_w, inner_h = width - left - right, height - top - bottom
    xs = [p[0] for p in points]
    ys = [float(p[1]) for p in points]
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    y_min, y_max = min(ys), max(ys)
    if y_max == y_min:
        pad = abs(y_max) * 0.5 or 1.0
        y_min, y_max = y_min - pad, y_max + pad
    pad = (y_max - y_min) * 0.08
    y_min, y_max = y_min - pad, y_max + pad

    def sx(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * inner_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_min) / (y_max - y_min)) * inner_h

    parts = [
        f'<svg class="score-plot" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="score by iteration">'
    ]
    y_ticks = nice_ticks(y_min, y_max, 5)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for tick in y_ticks:
        y = sy(tick)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick_label(tick, y_step)}</text>"
        )
    x_span = x_max - x_min
    x_step = max(1, math.ceil(x_span / 10))
    for tick in range(math.ceil(x_min), math.floor(x_max) + 1):
        if (tick - math.ceil(x_min)) % x_step:
            continue
        x = sx(tick)
        parts.append(
            f'<line class="axis-tick" x1="{x:.1f}" x2="{x:.1f}" y1="{top + inner_h}" '
            f'y2="{top + inner_h + 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{top + inner_h + 17}" text-anchor="middle">'
            f"{tick}</text>"
        )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + inner_h}" '
        f'y2="{top + inner_h}"/>'
        f'<text class="axis-label" x="{left + inner_w / 2:.1f}" y="{height - 4}" '
        'text-anchor="middle">iteration</text>'
        f'<text class="axis-label" transform="rotate(-90)" x="{-(top + inner_h / 2):.1f}" '
        'y="14" text-anchor="middle">score</text>'
    )
    path: list[str] = []
    best = -math.inf
    for x, y, _ in sorted(points, key=lambda p: p[0]):
        best = max(best, float(y))
        if not path:
            path.append(f"M{sx(x):.1f},{sy(best):.1f}")
        else:
            path.append(f"H{sx(x):.1f}V{sy(best):.1f}")
    path.append(f"H{sx(max(xs)):.1f}")
    parts.append(f'<path class="best" d="{"".join(path)}"/>')
    final = None
    for x, y, entry in points:
        kind = "dot new-best" if entry.new_best else "dot"
        if label and entry.concept == label and final is None and y == max(ys):
            final = (x, y)
        parts.append(
            f'<circle class="{kind}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4">'
            f"<title>iteration {x}: {escape(entry.concept)} = {format_number(y)}</title></circle>"
        )
    if final is None and label:
        matching = [(x, y) for x, y, e in points if e.concept == label]
        final = max(matching, key=lambda p: p[1]) if matching else None
    if final is not None:
        fx, fy = sx(final[0]), sy(final[1])
        anchor = "end" if fx > left + inner_w * 0.6 else "start"
        offset = -10 if anchor == "end" else 10
        parts.append(
            f'<circle class="final" cx="{fx:.1f}" cy="{fy:.1f}" r="8"/>'
            f'<text class="final-label" x="{fx + offset:.1f}" y="{max(fy - 10, top + 10):.1f}" '
            f'text-anchor="{anchor}">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
