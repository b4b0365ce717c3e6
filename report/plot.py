"""The score-against-iteration plot of a neuron page, as inline SVG (no JavaScript library).

This module computes the plot's geometry; ``templates/score_plot.svg.jinja`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from report.data import EntryView
from report.render import render


@dataclass(frozen=True)
class Tick:
    """A tick of an axis: its position in pixels and its text."""

    position: float
    text: str


@dataclass(frozen=True)
class Dot:
    """One scored concept: where it is drawn, and what it was."""

    x: float
    y: float
    iteration: int
    concept: str
    score: float
    new_best: bool


@dataclass(frozen=True)
class FinalMark:
    """The ring around the final label's point, and the label written beside it."""

    x: float
    y: float
    text_x: float
    text_y: float
    anchor: str


@dataclass(frozen=True)
class PlotFrame:
    """The plot's size and inner area, in pixels."""

    width: int
    height: int
    left: int
    right: int
    top: int
    inner_width: int
    inner_height: int

    @property
    def bottom_y(self) -> int:
        """The y of the x axis."""
        return self.top + self.inner_height


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
    points = [(e.iteration, float(e.score), e) for e in entries if e.score is not None]
    if not points:
        return render("score_plot.svg.jinja", frame=None)
    left, right, top, bottom = 56, 16, 14, 40
    frame = PlotFrame(width, height, left, right, top, width - left - right, height - top - bottom)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
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
        return left + (x - x_min) / (x_max - x_min) * frame.inner_width

    def sy(y: float) -> float:
        return top + (1 - (y - y_min) / (y_max - y_min)) * frame.inner_height

    y_values = nice_ticks(y_min, y_max, 5)
    y_step = y_values[1] - y_values[0] if len(y_values) > 1 else 1.0
    y_ticks = [Tick(sy(value), _tick_label(value, y_step)) for value in y_values]
    x_step = max(1, math.ceil((x_max - x_min) / 10))
    first_x = math.ceil(x_min)
    x_ticks = [
        Tick(sx(tick), str(tick))
        for tick in range(first_x, math.floor(x_max) + 1)
        if not (tick - first_x) % x_step
    ]
    path: list[str] = []
    best = -math.inf
    for x, y, _ in sorted(points, key=lambda p: p[0]):
        best = max(best, y)
        path.append(f"M{sx(x):.1f},{sy(best):.1f}" if not path else f"H{sx(x):.1f}V{sy(best):.1f}")
    path.append(f"H{sx(max(xs)):.1f}")
    dots = [Dot(sx(x), sy(y), x, e.concept, y, e.new_best) for x, y, e in points]
    final = None
    if label:
        matching = [(x, y) for x, y, e in points if e.concept == label]
        top_score = max(ys)
        final = next(((x, y) for x, y in matching if y == top_score), None)
        if final is None and matching:
            final = max(matching, key=lambda p: p[1])
    mark = None
    if final is not None:
        fx, fy = sx(final[0]), sy(final[1])
        anchor = "end" if fx > left + frame.inner_width * 0.6 else "start"
        offset = -10 if anchor == "end" else 10
        mark = FinalMark(fx, fy, fx + offset, max(fy - 10, top + 10), anchor)
    return render(
        "score_plot.svg.jinja",
        frame=frame,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        best_path="".join(path),
        dots=dots,
        final=mark,
        label=label,
    )
