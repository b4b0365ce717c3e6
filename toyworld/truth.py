"""Ground truth of the planted model: which concept each planted unit encodes.

Evaluation code scores a label for ``(layer, unit)`` against this registry; the inference server
never reveals it. ``attributes`` use the canonical strings of :mod:`toyworld.vocabulary`,
so ``parse_attributes(label)`` can be compared with them directly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

UnitKind = Literal["single", "and", "or", "count", "none"]
PLANTED_LAYER = "planted"
"""The layer of ``planted:shapes`` that holds the planted units."""


@dataclass(frozen=True)
class PlantedUnit:
    """One planted unit and its known concept.

    ``kind``: ``single`` (one attribute), ``and`` (all attributes on one object), ``or`` (any
    of the attributes), ``count`` (how many objects of a kind), ``none`` (no concept: noise or
    a constant). ``note`` says how the unit computes, for people reading the table.
    """

    layer: str
    unit: int
    concept: str
    kind: UnitKind
    attributes: list[str] = field(default_factory=list)
    note: str = ""
    inhibitor: str = ""
    """The concept that silences the unit (the :data:`INHIBITED_LAYER` units), else empty."""


# (concept, kind, attributes, note); the unit index is the position in this table.
_PLANTED: tuple[tuple[str, UnitKind, tuple[str, ...], str], ...] = (
    ("red", "single", ("red",), "most prominent red object"),
    ("blue triangle", "and", ("blue", "triangle"), "blue AND triangle on one object"),
    ("star or cross", "or", ("star", "cross"), "star OR cross, summed"),
    ("many small objects", "count", ("many", "small"), "soft count of small objects"),
    ("no concept", "none", (), "pixel-hash noise (salt 4)"),
    ("circle", "single", ("circle",), "most prominent circle"),
    ("striped square", "and", ("striped", "square"), "striped AND square on one object"),
    ("pink or orange", "or", ("pink", "orange"), "pink OR orange, summed"),
    ("striped", "single", ("striped",), "most prominent striped object"),
    ("blue", "single", ("blue",), "most prominent blue object"),
    ("red circle", "and", ("red", "circle"), "red AND circle on one object"),
    ("triangle", "single", ("triangle",), "most prominent triangle"),
    ("dotted", "single", ("dotted",), "most prominent dotted object"),
    ("green star", "and", ("green", "star"), "green AND star on one object"),
    ("striped or checkered", "or", ("striped", "checkered"), "striped OR checkered, summed"),
    ("yellow", "single", ("yellow",), "most prominent yellow object"),
    ("square", "single", ("square",), "most prominent square"),
    ("no concept", "none", (), "constant 1.0"),
    ("checkered", "single", ("checkered",), "most prominent checkered object"),
    ("dotted heart", "and", ("dotted", "heart"), "dotted AND heart on one object"),
    ("diamond or hexagon", "or", ("diamond", "hexagon"), "diamond OR hexagon, summed"),
    ("green", "single", ("green",), "most prominent green object"),
    ("star", "single", ("star",), "most prominent star"),
    ("large objects", "single", ("large",), "size of the largest large object"),
    ("purple", "single", ("purple",), "most prominent purple object"),
    ("hexagon", "single", ("hexagon",), "most prominent hexagon"),
    ("no concept", "none", (), "pixel-hash noise (salt 26)"),
    ("heart", "single", ("heart",), "most prominent heart"),
)


INHIBITED_LAYER = "inhibited"
"""The layer of ``planted:shapes`` whose units fire on anything except one concept."""
_INHIBITED: tuple[str, ...] = ("red", "blue")
"""Unit i of the inhibited layer is 1 on any scene and falls to 0 as its concept's most
prominent object grows: no concept excites it, this one silences it."""


def planted_ground_truth() -> list[PlantedUnit]:
    """Every planted unit of ``planted:shapes`` with its concept, kind and attributes."""
    return [
        PlantedUnit(PLANTED_LAYER, index, concept, kind, list(attributes), note)
        for index, (concept, kind, attributes, note) in enumerate(_PLANTED)
    ]


def inhibited_ground_truth() -> list[PlantedUnit]:
    """The units of ``planted:shapes``'s :data:`INHIBITED_LAYER`: no concept (kind ``none``)
    and a known ``inhibitor``."""
    return [
        PlantedUnit(
            INHIBITED_LAYER,
            index,
            "no concept",
            "none",
            [],
            f"1 - most prominent {concept} object",
            inhibitor=concept,
        )
        for index, concept in enumerate(_INHIBITED)
    ]


def as_json(units: list[PlantedUnit] | None = None, indent: int | None = 2) -> str:
    """The ground truth as a JSON list of objects (layer, unit, concept, kind, attributes, note)."""
    return json.dumps([asdict(u) for u in (units or planted_ground_truth())], indent=indent)
