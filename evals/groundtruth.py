"""Scoring labels against known concepts (the toy world's planted units)."""

from __future__ import annotations

from tools.toyworld.truth import PlantedUnit
from tools.toyworld.vocabulary import parse_attributes


def attribute_match(label: str, truth: PlantedUnit) -> bool | None:
    """Whether a label names exactly the truth's attributes; ``None`` for no-concept units."""
    if truth.kind == "none":
        return None
    return parse_attributes(label) == set(truth.attributes)
