"""Dissection: every unit's reference concept, from data, the way network dissection does it.

Render a probe set of scenes whose attributes are known (:mod:`inference.toyworld.probes`), read
every unit of every layer on them, and score each candidate concept by how well the unit's
activation separates the scenes that have it from those that do not: the ROC AUC (the chance that
a scene with the concept outranks one without; ties count one half). Candidates:

- every attribute (``red``, ``triangle``, ``striped``, ``small``, ``many``, ``blue background``);
- every pair as AND (``blue triangle``: on one object when both are object attributes;
  ``many small objects``: many objects carry the attribute; else both in the scene:
  ``red on a blue background``) and as OR
  (``star or cross``: either in the scene).

A candidate needs at least :data:`MIN_SUPPORT` scenes with it and as many without it, and a
text that the toy world's parser reads back to exactly its attributes, so that a label can be
matched against it. A pair wins over its better half only when its AUC is higher by at least
:data:`PAIR_MARGIN` (the simpler concept is preferred). The unit's reference concept is the best
candidate when its AUC is at least :data:`SELECTIVE_AUC`; otherwise the unit is ``none``: not
selective for any concept of the toy world.

Dissection needs scenes with known attributes, so it works for the toy world's targets only
(``planted:shapes``, where it cross-checks the planted truth, and ``learned:shapes``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from inference.protocols import BackendSpecError, TargetModel
from inference.registry import load_target
from inference.store import default_cache_dir
from inference.toyworld.probes import ATTRIBUTES, OBJECT_ATTRIBUTES, Probe, probe_set
from inference.toyworld.vocabulary import (
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    TEXTURES,
    parse_attributes,
)

SELECTIVE_AUC = 0.85
"""A unit has a reference concept when its best candidate's AUC reaches this."""
PAIR_MARGIN = 0.02
"""A pair (AND/OR) must beat its better single attribute's AUC by this much to be chosen."""
MIN_SUPPORT = 40
"""Least number of probe scenes with (and without) a candidate concept."""
PROBE_SCENES = 3000
PROBE_SEED = 3000
"""The probe set's scenes are disjoint from the learned target's training and held-out scenes."""
DISSECTION_VERSION = "v1"
TOY_WORLD_FAMILIES = ("planted", "learned")


class DissectionError(ValueError):
    """A dissection that cannot run; the message says what would work."""


@dataclass(frozen=True)
class Candidate:
    """A concept dissection can assign: its kind, canonical attributes and readable text."""

    kind: str  # single, and, or
    attributes: tuple[str, ...]
    concept: str


@dataclass(frozen=True)
class DissectedUnit:
    """A unit's reference concept, in the shape of the planted truth plus its AUC.

    ``kind`` is ``single``, ``and``, ``or`` or ``none`` (not selective); ``auc`` is the best
    candidate's AUC even for ``none`` units, and ``best`` that candidate's text.
    """

    layer: str
    unit: int
    concept: str
    kind: str
    attributes: list[str]
    auc: float
    best: str
    note: str = ""

    @property
    def selective(self) -> bool:
        """True when the unit has a reference concept."""
        return self.kind != "none"


_ORDER = {
    **{name: (0, i) for i, name in enumerate(COUNTS)},
    **{name: (1, i) for i, name in enumerate(SIZES)},
    **{name: (2, i) for i, name in enumerate(COLOURS)},
    **{name: (3, i) for i, name in enumerate(TEXTURES)},
    **{name: (4, i) for i, name in enumerate(SHAPES)},
}


def _category(attribute: str) -> str:
    if attribute.endswith(" background"):
        return "background"
    for name, values in (
        ("count", COUNTS),
        ("size", SIZES),
        ("colour", COLOURS),
        ("texture", TEXTURES),
        ("shape", SHAPES),
    ):
        if attribute in values:
            return name
    raise ValueError(f"unknown toy-world attribute {attribute!r}")


def _words(attributes: Sequence[str]) -> str:
    """Readable text of attributes that hold together ("many small objects", "blue triangle")."""
    background = [a for a in attributes if a.endswith(" background")]
    parts = sorted((a for a in attributes if a not in background), key=_ORDER.__getitem__)
    text = " ".join(parts)
    if parts and not any(a in SHAPES for a in parts) and any(a in (*COUNTS, *SIZES) for a in parts):
        text += " objects"
    if background:
        text = f"{text} on a {background[0]}" if text else background[0]
    return text


def candidate_text(kind: str, attributes: Sequence[str]) -> str:
    """The concept text of a candidate."""
    if kind == "or":
        return " or ".join(_words([a]) for a in attributes)
    return _words(attributes)


def candidates(probes: Sequence[Probe]) -> tuple[list[Candidate], np.ndarray]:
    """The candidate concepts with enough support, and ``[probes, candidates]`` 0/1 labels."""
    n = len(probes)
    have = {a: np.array([a in p.attributes for p in probes]) for a in ATTRIBUTES}

    def supported(labels: np.ndarray) -> bool:
        count = int(labels.sum())
        return MIN_SUPPORT <= count <= n - MIN_SUPPORT

    found: list[Candidate] = []
    columns: list[np.ndarray] = []

    def add(kind: str, attributes: tuple[str, ...], labels: np.ndarray) -> None:
        text = candidate_text(kind, attributes)
        if supported(labels) and parse_attributes(text) == set(attributes):
            found.append(Candidate(kind, attributes, text))
            columns.append(labels)

    singles = [a for a in ATTRIBUTES if int(have[a].sum()) >= MIN_SUPPORT]
    for attribute in singles:
        add("single", (attribute,), have[attribute])
    for a, b in combinations(singles, 2):
        same_category = _category(a) == _category(b)
        if not same_category:
            if "many" in (a, b) and {a, b} - {"many"} <= OBJECT_ATTRIBUTES:
                (carried,) = {a, b} - {"many"}
                both = np.array([carried in p.many_of for p in probes])
            elif a in OBJECT_ATTRIBUTES and b in OBJECT_ATTRIBUTES:
                pair = frozenset((a, b))
                both = np.array([pair in p.object_pairs for p in probes])
            else:
                both = have[a] & have[b]
            add("and", (a, b), both)
        add("or", (a, b), have[a] | have[b])
    matrix = np.stack(columns, axis=1).astype(np.float64) if columns else np.zeros((n, 0))
    return found, matrix


def auc_matrix(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[units, candidates]`` ROC AUC of every unit for every 0/1 label column (ties 1/2),
    through the rank-sum identity AUC = (R1 - n1(n1+1)/2) / (n1 n0)."""
    ranks = rankdata(np.asarray(activations, dtype=np.float64), axis=0)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    rank_sums = ranks.T @ labels
    return (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)


def dissect_layer(
    layer: str, activations: np.ndarray, found: list[Candidate], labels: np.ndarray
) -> list[DissectedUnit]:
    """Each unit's reference concept from its activations on the probe scenes."""
    aucs = auc_matrix(activations, labels)
    single_index = {c.attributes[0]: i for i, c in enumerate(found) if c.kind == "single"}
    units = []
    for unit, row in enumerate(aucs):
        order = np.argsort(-row, kind="stable")
        choice = int(order[0])
        best = found[choice]
        if best.kind != "single":
            halves = [single_index[a] for a in best.attributes if a in single_index]
            better_half = max(halves, key=lambda i: row[i]) if halves else None
            if better_half is not None and row[better_half] >= row[choice] - PAIR_MARGIN:
                choice, best = better_half, found[better_half]
        auc = float(row[choice])
        if auc >= SELECTIVE_AUC:
            units.append(
                DissectedUnit(
                    layer, unit, best.concept, best.kind, list(best.attributes), auc, best.concept
                )
            )
        else:
            note = f"best candidate {best.concept!r} has AUC {auc:.3f} < {SELECTIVE_AUC}"
            units.append(
                DissectedUnit(layer, unit, "no concept", "none", [], auc, best.concept, note)
            )
    return units


def check_toy_world_target(spec: str) -> None:
    """Dissection needs scenes with known attributes: only the toy world's targets have them."""
    family = spec.partition(":")[0]
    if family not in TOY_WORLD_FAMILIES:
        raise DissectionError(
            f"dissection needs scenes with known attributes, which only the toy world has; "
            f"{spec!r} is not a toy-world target (use 'planted:shapes' or 'learned:shapes')"
        )


def dissect_target(
    target: TargetModel,
    layers: Sequence[str] | None = None,
    scenes: int = PROBE_SCENES,
    progress: Callable[[str], None] | None = None,
) -> list[DissectedUnit]:
    """Dissect every unit of ``layers`` (default: all) of a toy-world target."""
    check_toy_world_target(target.name)
    wanted = check_layers(target, layers)
    say = progress or (lambda _text: None)
    probes = probe_set(scenes, PROBE_SEED)
    found, labels = candidates(probes)
    say(f"{len(probes)} probe scenes, {len(found)} candidate concepts")
    readings: dict[str, list[np.ndarray]] = {layer: [] for layer in wanted}
    for start in range(0, len(probes), 64):
        images = [probe.render() for probe in probes[start : start + 64]]
        for layer in wanted:
            readings[layer].append(np.asarray(target.activations(images, layer)))
        say(f"read {min(start + 64, len(probes))}/{len(probes)} scenes")
    out: list[DissectedUnit] = []
    for layer in wanted:
        out += dissect_layer(layer, np.concatenate(readings[layer]), found, labels)
    return out


def cache_path(target: TargetModel, scenes: int) -> Path:
    """Where the dissection of a target (its identity: weights included) is cached."""
    key = f"{DISSECTION_VERSION}|{target.identity}|{scenes}|{PROBE_SEED}|{SELECTIVE_AUC}"
    key += f"|{PAIR_MARGIN}|{MIN_SUPPORT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return default_cache_dir() / "dissection" / f"{digest}.json"


def check_layers(target: TargetModel, layers: Sequence[str] | None) -> list[str]:
    """The layers asked for (default: all of the target's), or an error listing the valid ones."""
    valid = [info.name for info in target.layers()]
    unknown = [layer for layer in layers or () if layer not in valid]
    if unknown:
        raise DissectionError(
            f"{target.name} has no layer {unknown[0]!r}; valid layers: {', '.join(valid)}"
        )
    return list(layers) if layers else valid


def cached_dissection(
    target: TargetModel,
    layer: str | None = None,
    scenes: int = PROBE_SCENES,
    progress: Callable[[str], None] | None = None,
) -> list[DissectedUnit]:
    """The units of ``layer`` (default: every layer), from :func:`dissect_target` over every
    layer, computed once per target and cached on disk."""
    check_toy_world_target(target.name)
    wanted = check_layers(target, None if layer is None else [layer])
    path = cache_path(target, scenes)
    try:
        units = [DissectedUnit(**row) for row in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        units = dissect_target(target, scenes=scenes, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps([asdict(u) for u in units]))
        partial.replace(path)
    return [unit for unit in units if unit.layer in wanted]


def load_toy_world_target(spec: str) -> TargetModel:
    """A toy-world target by spec, with the dissection error for any other target."""
    check_toy_world_target(spec)
    try:
        return load_target(spec, "cpu")
    except BackendSpecError as error:
        raise DissectionError(str(error)) from error
