"""Polysemanticity groups for the report, from :mod:`analysis.polysemanticity` when it is there.

The grouping embeds concepts with a sentence model; when the module or its model is missing
the report still builds, shows no groups and says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.report.data import EntryView, GroupView
from analysis.polysemanticity import concept_groups

GroupFunction = Callable[[list[dict[str, Any]]], Sequence[Any]]


def load_grouper() -> tuple[GroupFunction | None, str]:
    """``(concept_groups, "")``, or ``(None, why)`` when polysemanticity analysis is missing."""
    return concept_groups, ""


def neuron_groups(
    grouper: GroupFunction | None, entries: Sequence[EntryView]
) -> tuple[list[GroupView] | None, str]:
    """The high-scoring concept groups of a history, or ``(None, why)`` when none could be made."""
    if grouper is None:
        return None, "polysemanticity analysis is not available; no concepts were grouped"
    rows = [{"concept": e.concept, "score": e.score} for e in entries if e.score is not None]
    try:
        groups = grouper(rows)
    except Exception as error:  # the embedding model failed to load: say so on the page
        return None, f"concepts were not grouped: {type(error).__name__}: {error}"
    views = []
    for group in groups:
        concepts = [str(c) for c in getattr(group, "concepts", [])]
        scores = [float(s) for s in getattr(group, "scores", [])]
        if concepts and len(scores) == len(concepts):
            order = sorted(range(len(concepts)), key=lambda i: -scores[i])
            views.append(GroupView([concepts[i] for i in order], [scores[i] for i in order]))
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
