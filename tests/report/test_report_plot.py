"""The inline SVG plot and the small formatting helpers of the report."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from report.data import entry_views
from report.pages import units_text
from report.plot import nice_ticks, score_plot
from report.render import format_number
from tools.scoreboard import ConceptEntry


def entries(scores: list[float | None]) -> list[ConceptEntry]:
    """A record's entries with these scores (None: unscored, NaN), one per iteration."""
    return [entry(f"c{i}", math.nan if s is None else s, i + 1) for i, s in enumerate(scores)]


def entry(concept: str, score: float, iteration: int) -> ConceptEntry:
    return ConceptEntry(concept, score, [], [], [], [], iteration, "proposal")


def test_best_so_far_and_new_best_marks():
    views = entry_views(entries([0.2, 0.1, 0.5, None, 0.4, 0.9]))
    assert [v.best_so_far for v in views] == [0.2, 0.2, 0.5, 0.5, 0.5, 0.9]
    assert [v.new_best for v in views] == [True, False, True, False, False, True]


def test_score_plot_is_well_formed_svg():
    svg = score_plot(entry_views(entries([0.2, 0.1, 0.5, None, 0.4, 0.9])), label="c5")
    root = ET.fromstring(svg)
    circles = [c for c in root.iter("circle") if "dot" in c.get("class", "")]
    assert len(circles) == 5  # the unscored entry has no dot
    assert sum("new-best" in c.get("class") for c in circles) == 3
    assert any(c.get("class") == "final" for c in root.iter("circle"))
    best = next(p for p in root.iter("path") if p.get("class") == "best")
    ys = [float(y) for y in re.findall(r"V([\d.]+)", best.get("d"))]
    assert ys == sorted(ys, reverse=True)  # the best score never goes down (SVG y grows down)


def test_score_plot_edge_cases():
    assert "nothing to plot" in score_plot([])
    assert "nothing to plot" in score_plot(entry_views(entries([None])))
    for scores in ([0.5], [1.0, 1.0, 1.0], [-3.0, -2.0], [1e6, 2e6]):
        ET.fromstring(score_plot(entry_views(entries(scores)), label="c0"))


def test_escaping_in_the_plot():
    views = entry_views([entry("<b>&", 1.0, 1)])
    svg = score_plot(views, label="<b>&")
    assert "<b>&" not in svg and "&lt;b&gt;&amp;" in svg
    ET.fromstring(svg)


def test_helpers():
    assert nice_ticks(0, 1, 5) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.05, 0.98, 5)[0] >= 0.05
    assert format_number(None) == "–"
    assert format_number(0.24512) == "0.245"
    assert format_number(123456.0) == "1.23e+05"
    assert units_text([0, 1, 2, 3, 7, 9, 10]) == "0-3, 7, 9-10 (7 units)"
    assert units_text([5]) == "5 (1 unit)"
