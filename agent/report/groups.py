"""Polysemanticity groups for the report, from :func:`analysis.polysemanticity.concept_groups`.

The grouping embeds concepts with a sentence model; when the model is missing (or fails to
load) the report still builds, shows no groups and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.report.data import EntryView, GroupView
from analysis.polysemanticity import concept_groups


def neuron_groups(entries: Sequence[EntryView]) -> tuple[list[GroupView] | None, str]:
    """The high-scoring concept groups of a history, or ``(None, why)`` when none could be made."""
    rows = [{"concept": e.concept, "score": e.score} for e in entries if e.score is not None]
    try:
        groups = concept_groups(rows)
    except Exception as error:  # the embedding model failed to load: say so on the page
        return None, f"concepts were not grouped: {type(error).__name__}: {error}"
    views = []
    for group in groups:
        ranked = sorted(zip(group.concepts, group.scores, strict=True), key=lambda p: -p[1])
        if ranked:
            views.append(GroupView([c for c, _ in ranked], [float(s) for _, s in ranked]))
    views.sort(key=lambda group: -group.best_score)
    return views, ""


def group_to_json(groups: list[GroupView] | None) -> list[dict[str, Any]] | None:
    """Cacheable form of groups."""
    if groups is None:
        return None
    return [{"concepts": g.concepts, "scores": g.scores} for g in groups]


def group_from_json(data: list[dict[str, Any]] | None) -> list[GroupView] | None:
    """Groups back from their cached form."""
    if data is None:
        return None
    return [GroupView(list(g["concepts"]), [float(s) for s in g["scores"]]) for g in data]
