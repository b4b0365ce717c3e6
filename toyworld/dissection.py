"""Dissection: every unit's reference concept, from data, the way network dissection does it.

Render a probe set of scenes whose attributes are known (:mod:`toyworld.probes`), read
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
matched against it. Which scenes have a candidate is decided by the predicate of that text
(:func:`label_predicate`), the same function that tests any label on scenes: a reference and a
label naming the same concept mean the same scenes. A pair wins over its better half only when
its AUC is higher by at least :data:`PAIR_MARGIN` (the simpler concept is preferred). The
unit's reference concept is the best candidate when its AUC is at least :data:`SELECTIVE_AUC`;
otherwise the unit is ``none``: not selective for any concept of the toy world; ``weak``
(:attr:`DissectedUnit.verdict`) when that AUC is at least :data:`WEAK_AUC`, just under the cut.

A second probe set (:data:`HELDOUT_PROBE_SEED`, :func:`heldout_readings`) is disjoint from the
dissection's: labels are tested on it, and dissecting the layer again on it shows how stable
the references are.

Dissection needs scenes with known attributes, so it works for the toy world's targets only
(``planted:shapes``, where it cross-checks the planted truth, and ``learned:shapes``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from inference.protocols import BackendSpecError, TargetModel
from inference.registry import load_target
from inference.store import default_cache_dir
from toyworld import TOY_WORLD_FAMILIES
from toyworld.defaults import PROBE_SCENES
from toyworld.probes import ATTRIBUTES, MANY_OBJECTS, Probe, object_size, probe_set
from toyworld.scenes import COUNT_VALUES, SIZE_RANGES
from toyworld.vocabulary import (
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    TEXTURES,
    parse_attributes,
    parse_scene_text,
)

SELECTIVE_AUC = 0.85
"""A unit has a reference concept when its best candidate's AUC reaches this."""
WEAK_AUC = 0.75
"""A unit without a reference concept whose best candidate's AUC reaches this is ``weak``:
close enough to the cut that a second probe set may decide either way."""
PAIR_MARGIN = 0.02
"""A pair (AND/OR) must beat its better single attribute's AUC by this much to be chosen."""
MIN_SUPPORT = 40
"""Least number of probe scenes with (and without) a candidate concept."""
PROBE_SEED = 3000
"""The probe set's scenes are disjoint from the learned target's training and held-out scenes."""
HELDOUT_PROBE_SEED = 4000
"""A second probe set, disjoint from the dissection's: labels are tested on it, and the layer is
dissected again on it to see how stable the references are."""
DISSECTION_VERSION = "v1"


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

    @property
    def verdict(self) -> str:
        """``selective`` (a reference concept), ``weak`` (none, but the best candidate's AUC is
        in [:data:`WEAK_AUC`, :data:`SELECTIVE_AUC`)) or ``none``."""
        if self.selective:
            return "selective"
        return "weak" if self.auc >= WEAK_AUC else "none"


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


class ProbeScenes:
    """What predicates read off a probe set: every object's colour, shape, fill and size, and
    every scene's background, as arrays (built once, evaluated for any number of concepts)."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        objects = [(row, obj) for row, probe in enumerate(probes) for obj in probe.scene.objects]
        self.count = len(probes)
        self.owner = np.array([row for row, _obj in objects], dtype=np.int64)
        self.colours = np.array([obj.colour for _row, obj in objects], dtype=str)
        self.shapes = np.array([obj.shape for _row, obj in objects], dtype=str)
        self.textures = np.array([obj.texture for _row, obj in objects], dtype=str)
        self.sizes = np.array([size_name(obj.radius) for _row, obj in objects], dtype=str)
        self.backgrounds = np.array([probe.scene.background for probe in probes], dtype=str)


def size_name(radius: float) -> str:
    """``small``, ``medium`` or ``large`` when a radius falls in that size range, else ``""``
    (``small`` and ``large`` as :func:`toyworld.probes.object_size` reads them)."""
    named = object_size(radius)
    if named is not None:
        return named
    low, high = SIZE_RANGES["medium"]
    return "medium" if low <= radius <= high else ""


@dataclass(frozen=True)
class ObjectTest:
    """Objects a concept asks for: each named field takes one of its values (none named: any
    value), and how many such objects: at least one (``count`` None), ``many`` (at least
    :data:`~toyworld.probes.MANY_OBJECTS`) or exactly ``one`` to ``five``."""

    colours: frozenset[str] = frozenset()
    shapes: frozenset[str] = frozenset()
    textures: frozenset[str] = frozenset()
    sizes: frozenset[str] = frozenset()
    count: str | None = None

    def holds(self, scenes: ProbeScenes) -> np.ndarray:
        """``[probes]`` bool: the scene has such objects."""
        match = np.ones(scenes.owner.shape, dtype=bool)
        for values, column in (
            (self.colours, scenes.colours),
            (self.shapes, scenes.shapes),
            (self.textures, scenes.textures),
            (self.sizes, scenes.sizes),
        ):
            if values:
                match &= np.isin(column, sorted(values))
        carriers = np.bincount(scenes.owner, weights=match, minlength=scenes.count)
        if self.count is None:
            return carriers >= 1
        if self.count == "many":
            return carriers >= MANY_OBJECTS
        return carriers == COUNT_VALUES[self.count]


@dataclass(frozen=True)
class Conjunction:
    """Object groups that must all be in the scene, and the scene's background colour."""

    objects: tuple[ObjectTest, ...] = ()
    background: str | None = None

    def holds(self, scenes: ProbeScenes) -> np.ndarray:
        """``[probes]`` bool: every group is there and the background is the one named."""
        out = np.ones(scenes.count, dtype=bool)
        for group in self.objects:
            out &= group.holds(scenes)
        if self.background is not None:
            out &= scenes.backgrounds == self.background
        return out


@dataclass(frozen=True)
class Predicate:
    """A concept as a test on scenes: it holds when any of its alternatives holds.

    ``kind`` is ``single`` (one attribute), ``and`` (one alternative with several) or ``or``.
    """

    kind: str
    alternatives: tuple[Conjunction, ...]

    def holds(self, scenes: ProbeScenes) -> np.ndarray:
        """``[probes]`` float 0/1: whether each scene has the concept."""
        out = np.zeros(scenes.count, dtype=bool)
        for alternative in self.alternatives:
            out |= alternative.holds(scenes)
        return out.astype(np.float64)


_OR = re.compile(r"\bor\b", re.IGNORECASE)


def _conjunction(text: str) -> tuple[Conjunction, int] | None:
    """The conjunction one alternative of a text names, and how many attributes it names."""
    spec = parse_scene_text(text)
    groups = tuple(
        ObjectTest(
            frozenset(group.colours),
            frozenset(group.shapes),
            frozenset(group.textures),
            frozenset(() if group.size is None else (group.size,)),
            group.count,
        )
        for group in spec.groups
        if group.attributes()
    )
    if not groups and spec.background is None:
        return None
    return Conjunction(groups, spec.background), len(spec.attributes)


def label_predicate(text: str | None) -> Predicate | None:
    """A label's predicate on scenes, read with the toy world's parser: ``" or "`` separates
    alternatives (OR); within one, each object group the text names must be in the scene (its
    attributes on one object; ``many``/a number: that many such objects) and the background it
    names too (AND; one attribute: ``single``). ``None`` when the text names no toy-world
    attribute ("no selective concept", an empty label)."""
    parts = [found for part in _OR.split(text or "") if (found := _conjunction(part))]
    if not parts:
        return None
    if len(parts) > 1:
        return Predicate("or", tuple(conjunction for conjunction, _n in parts))
    (conjunction, named), *_ = parts
    return Predicate("single" if named == 1 else "and", (conjunction,))


def concept_predicate(kind: str, attributes: Sequence[str]) -> Predicate | None:
    """The predicate of a concept given by kind and attributes (a dissection candidate, a
    reference, a planted truth): the predicate of its text (:func:`candidate_text`), so a
    reference and a label that names the same concept test scenes the same way. ``None`` for
    a unit with no concept."""
    if kind == "none" or not attributes:
        return None
    return label_predicate(candidate_text(kind, attributes))


def candidates(probes: Sequence[Probe]) -> tuple[list[Candidate], np.ndarray]:
    """The candidate concepts with enough support, and ``[probes, candidates]`` 0/1 labels."""
    n = len(probes)
    scenes = ProbeScenes(probes)
    have = {a: np.array([a in p.attributes for p in probes]) for a in ATTRIBUTES}

    def supported(labels: np.ndarray) -> bool:
        count = int(labels.sum())
        return MIN_SUPPORT <= count <= n - MIN_SUPPORT

    found: list[Candidate] = []
    columns: list[np.ndarray] = []

    def add(kind: str, attributes: tuple[str, ...]) -> None:
        text = candidate_text(kind, attributes)
        predicate = label_predicate(text)
        if predicate is None or parse_attributes(text) != set(attributes):
            return
        labels = predicate.holds(scenes)
        if supported(labels):
            found.append(Candidate(kind, attributes, text))
            columns.append(labels)

    singles = [a for a in ATTRIBUTES if int(have[a].sum()) >= MIN_SUPPORT]
    for attribute in singles:
        add("single", (attribute,))
    for a, b in combinations(singles, 2):
        if _category(a) != _category(b):
            add("and", (a, b))
        add("or", (a, b))
    matrix = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
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


def read_layers(
    target: TargetModel,
    probes: Sequence[Probe],
    layers: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """``layer -> [probes, units]`` activations of the target on the probe scenes (batches of
    64)."""
    say = progress or (lambda _text: None)
    readings: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for start in range(0, len(probes), 64):
        images = [probe.render() for probe in probes[start : start + 64]]
        for layer in layers:
            readings[layer].append(np.asarray(target.activations(images, layer)))
        say(f"read {min(start + 64, len(probes))}/{len(probes)} scenes")
    return {layer: np.concatenate(parts) for layer, parts in readings.items()}


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
    readings = read_layers(target, probes, wanted, say)
    out: list[DissectedUnit] = []
    for layer in wanted:
        out += dissect_layer(layer, readings[layer], found, labels)
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


def heldout_readings(
    target: TargetModel,
    layer: str,
    scenes: int = PROBE_SCENES,
    seed: int = HELDOUT_PROBE_SEED,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Probe], np.ndarray]:
    """The probe set ``seed`` (disjoint from the dissection's for any seed but
    :data:`PROBE_SEED`) and the layer's ``[probes, units]`` activations on it, read once per
    (target identity, layer, scenes, seed) and cached on disk."""
    check_toy_world_target(target.name)
    (layer,) = check_layers(target, [layer])
    probes = probe_set(scenes, seed)
    key = f"{DISSECTION_VERSION}|readings|{target.identity}|{layer}|{scenes}|{seed}"
    path = (
        default_cache_dir() / "dissection" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    )
    try:
        activations = np.load(path, allow_pickle=False)
        if activations.shape[0] != len(probes):
            raise ValueError(f"{path} holds {activations.shape[0]} rows, not {len(probes)}")
    except (OSError, ValueError):
        activations = read_layers(target, probes, [layer], progress)[layer]
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.npy")
        np.save(partial, activations, allow_pickle=False)
        partial.replace(path)
    return probes, activations
