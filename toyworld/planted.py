"""``planted:shapes``: a target model whose units have known concepts, computed from pixels only.

Each image is analysed by :mod:`toyworld.detect` (objects with graded colour, shape,
texture and size). Two layers read that analysis:

- ``planted``: the units listed in :mod:`toyworld.truth`. A unit reads how strongly its
  concept is present and prominent, not how much of it there is: per object, the concept's
  membership (saturating: a clear red counts 1) times the object's prominence (saturating: any
  object of medium size or bigger counts 1, smaller ones less), then the maximum over objects.
  So "red", "a red circle", "large red objects" and "three red squares" all drive the red unit
  to 1, and "many small red objects" less. ``and`` multiplies memberships on one object; ``or``
  adds the evidence of its alternatives (either alone gives ``OR_WEIGHT``, both together 1);
  the ``large`` unit grows with the biggest object's size; ``count`` units softly count
  objects; ``none`` units are pixel-hash noise or a constant.
- ``features``: generic detector outputs (colour, shape and texture salience summed over
  objects, object counts, foreground fraction), not part of the ground truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from inference.protocols import BackendSpecError, LayerInfo, UnknownLayerError
from toyworld.detect import (
    DetectedObject,
    ImageAnalysis,
    PixelClassifier,
    analyse_pixels,
    to_analysis_array,
)
from toyworld.truth import (
    INHIBITED_LAYER,
    PLANTED_LAYER,
    PlantedUnit,
    inhibited_ground_truth,
    planted_ground_truth,
)
from toyworld.vocabulary import COLOURS, SHAPES, TEXTURES

TARGET_NAMES = ("shapes",)
PLANTED_VERSION = "v3"  # v3: the inhibited layer
"""Bump when a change alters what a unit computes: it is part of the target's identity, which
keys the activation cache. v2: saturating memberships and prominence, max over objects."""
FEATURES_LAYER = "features"
SALIENCE_RADIUS = 0.2
"""An object of this radius (fraction of the image side) has salience 1; salience ~ radius^2."""
PROMINENT_RADIUS = 0.15
"""Objects at least this big (medium objects start at 0.165) are fully prominent (1); smaller
ones count ~(radius / 0.15)^2, so a small object (0.065-0.095) counts 0.2-0.4."""
SMALL_RADIUS, LARGE_RADIUS, SIZE_SOFTNESS = 0.115, 0.245, 0.012
MEMBERSHIP_FLOOR = 0.03
MEMBERSHIP_FULL = 0.75
"""Memberships at or above this count as a clear case (1); the detector gives clean objects
0.83-1.0 for their own colour, shape and texture."""
OR_WEIGHT = 0.6
"""What one alternative of an ``or`` unit contributes; evidence adds up to at most 1."""
MANY_SCALE = 4.0
"""Count units report the soft count divided by this."""

FEATURE_UNITS: tuple[str, ...] = (
    *(f"{c} salience" for c in COLOURS),
    *(f"{s} salience" for s in SHAPES),
    *(f"{t} salience" for t in TEXTURES),
    "object count",
    "small object count",
    "large object count",
    "foreground fraction",
)
"""What each unit of the ``features`` layer measures, by index."""

ObjectScore = Callable[[DetectedObject], float]
ImageScore = Callable[[ImageAnalysis, np.ndarray], float]


def salience(obj: DetectedObject) -> float:
    """How much an object counts: ~(radius / 0.2)^2, so about 1 for a medium-sized object."""
    return (obj.radius / SALIENCE_RADIUS) ** 2


def prominence(obj: DetectedObject) -> float:
    """How prominent an object is: 1 from ``PROMINENT_RADIUS`` up, ~radius^2 below it."""
    return min(1.0, (obj.radius / PROMINENT_RADIUS) ** 2)


def is_small(obj: DetectedObject) -> float:
    """Soft membership of "small" (radius below ~11% of the image side)."""
    return float(1.0 / (1.0 + np.exp((obj.radius - SMALL_RADIUS) / SIZE_SOFTNESS)))


def is_large(obj: DetectedObject) -> float:
    """Soft membership of "large" (radius above ~25% of the image side)."""
    return float(1.0 / (1.0 + np.exp((LARGE_RADIUS - obj.radius) / SIZE_SOFTNESS)))


def _floored(membership: float) -> float:
    """ReLU-style floor: memberships below ``MEMBERSHIP_FLOOR`` count as exactly 0."""
    return max(0.0, membership - MEMBERSHIP_FLOOR) / (1.0 - MEMBERSHIP_FLOOR)


def _clear(membership: float) -> float:
    """Saturating membership: 0 below ``MEMBERSHIP_FLOOR``, 1 from ``MEMBERSHIP_FULL`` up."""
    span = MEMBERSHIP_FULL - MEMBERSHIP_FLOOR
    return min(1.0, max(0.0, membership - MEMBERSHIP_FLOOR) / span)


def attribute_score(attribute: str, saturate: bool = False) -> ObjectScore:
    """Membership of one canonical attribute for one detected object.

    ``saturate``: colour, shape and texture memberships count a clear case as 1 (``_clear``)
    instead of only flooring small values (``_floored``, used by the ``features`` layer).
    """
    graded = _clear if saturate else _floored
    if attribute in COLOURS:
        index = COLOURS.index(attribute)
        return lambda obj: graded(float(obj.colour[index]))
    if attribute in SHAPES:
        index = SHAPES.index(attribute)
        return lambda obj: graded(float(obj.shape[index]))
    if attribute in TEXTURES:
        index = TEXTURES.index(attribute)
        return lambda obj: graded(float(obj.texture[index]))
    if attribute == "small":
        return is_small
    if attribute == "large":
        return is_large
    raise ValueError(f"no detector for attribute {attribute!r}")


def _all_of(scores: list[ObjectScore]) -> ObjectScore:
    """AND on one object: the product of the memberships."""
    return lambda obj: float(np.prod([score(obj) for score in scores]))


def _salience_sum(score: ObjectScore) -> ImageScore:
    return lambda analysis, _pixels: sum(score(o) * salience(o) for o in analysis.objects)


def _most_prominent(score: ObjectScore) -> ImageScore:
    """The strongest object: max over objects of membership times prominence (0 if none)."""
    return lambda analysis, _pixels: max(
        (score(o) * prominence(o) for o in analysis.objects), default=0.0
    )


def _any_of(scores: list[ObjectScore]) -> ImageScore:
    """OR: each alternative's strongest object adds ``OR_WEIGHT`` times its evidence, up to 1."""
    parts = [_most_prominent(score) for score in scores]
    return lambda analysis, pixels: min(
        1.0, OR_WEIGHT * sum(part(analysis, pixels) for part in parts)
    )


def _largest(analysis: ImageAnalysis, _pixels: np.ndarray) -> float:
    """The ``large`` unit: grows with the biggest large object's salience (~radius^2)."""
    return max((is_large(o) * salience(o) for o in analysis.objects), default=0.0)


def _soft_count(score: ObjectScore, scale: float = 1.0) -> ImageScore:
    return lambda analysis, _pixels: sum(score(o) for o in analysis.objects) / scale


def _pixel_hash(salt: int) -> ImageScore:
    def unit(_analysis: ImageAnalysis, pixels: np.ndarray) -> float:
        digest = hashlib.blake2b(pixels.tobytes(), digest_size=8, salt=salt.to_bytes(8, "little"))
        return int.from_bytes(digest.digest(), "little") / 2.0**64

    return unit


def _all_but(attribute: str) -> ImageScore:
    """1 on any scene, down to 0 as the attribute's most prominent object grows."""
    present = _most_prominent(attribute_score(attribute, saturate=True))
    return lambda analysis, pixels: 1.0 - present(analysis, pixels)


def planted_unit_function(unit: PlantedUnit) -> ImageScore:
    """How a ground-truth entry is computed from an image analysis (and its pixels)."""
    if unit.kind == "none":
        if unit.note.startswith("constant"):
            return lambda _analysis, _pixels: 1.0
        return _pixel_hash(salt=unit.unit)
    attributes = [a for a in unit.attributes if a != "many"]
    if unit.kind == "count":
        score = _all_of([attribute_score(a) for a in attributes])
        return _soft_count(score, MANY_SCALE if "many" in unit.attributes else 1.0)
    if unit.kind == "single" and attributes == ["large"]:
        return _largest
    scores = [attribute_score(a, saturate=True) for a in attributes]
    if unit.kind in ("single", "and"):
        return _most_prominent(_all_of(scores))
    if unit.kind == "or":
        return _any_of(scores)
    raise ValueError(f"cannot compute a unit of kind {unit.kind!r}")


def _feature_functions() -> list[ImageScore]:
    functions = [
        _salience_sum(attribute_score(attribute)) for attribute in (*COLOURS, *SHAPES, *TEXTURES)
    ]
    functions += [
        lambda analysis, _pixels: float(len(analysis.objects)),
        _soft_count(is_small),
        _soft_count(is_large),
        lambda analysis, _pixels: analysis.foreground_fraction,
    ]
    return functions


@dataclass
class PlantedShapesModel:
    """The ``planted:shapes`` target model (pure NumPy/SciPy, runs on the CPU)."""

    name: str = "planted:shapes"
    identity: str = f"planted:shapes@{PLANTED_VERSION}"
    device: str = "cpu"
    classifier: PixelClassifier = field(default_factory=PixelClassifier.build, repr=False)
    units: dict[str, list[ImageScore]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.units = {
            PLANTED_LAYER: [planted_unit_function(u) for u in planted_ground_truth()],
            FEATURES_LAYER: _feature_functions(),
            INHIBITED_LAYER: [_all_but(u.inhibitor) for u in inhibited_ground_truth()],
        }

    def layers(self) -> list[LayerInfo]:
        """``planted`` (the ground-truth units), ``features`` (generic detector outputs) and
        ``inhibited`` (units that one concept silences)."""
        return [LayerInfo(name=name, units=len(units)) for name, units in self.units.items()]

    def analyse(self, image: Image.Image) -> tuple[ImageAnalysis, np.ndarray]:
        """The object analysis of one image and the 224x224 pixels it was computed from."""
        pixels = to_analysis_array(image)
        return analyse_pixels(pixels, self.classifier), pixels

    def activations(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        """``[batch, units]`` float32 activations of ``layer`` for RGB images of any size."""
        if layer not in self.units:
            raise UnknownLayerError(
                f"planted:shapes has no layer {layer!r}; valid layers: {', '.join(self.units)}"
            )
        functions = self.units[layer]
        out = np.zeros((len(images), len(functions)), dtype=np.float32)
        for row, image in enumerate(images):
            analysis, pixels = self.analyse(image)
            out[row] = [function(analysis, pixels) for function in functions]
        return out


def create_planted_target(rest: str, device: str, trust_checkpoints: bool) -> PlantedShapesModel:
    """Factory for ``planted:<name>`` specs; ``device`` and ``trust_checkpoints`` are unused."""
    if rest not in TARGET_NAMES:
        raise BackendSpecError(
            f"unknown planted target {rest!r}; valid: "
            + ", ".join(f"'planted:{name}'" for name in TARGET_NAMES)
        )
    return PlantedShapesModel()
