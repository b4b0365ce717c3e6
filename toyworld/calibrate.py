"""Reproduce the planted model's shape prototypes from rendered scenes.

The planted model's only fitted numbers are the per-shape feature means and spreads in
``detect.SHAPE_PROTOTYPES``. They were produced by ``python -m toyworld.calibrate``,
which prints the table to paste; ``tests/toyworld`` checks that the stored table still
matches the renderer.
"""

from __future__ import annotations

import numpy as np

from toyworld.detect import (
    SHAPE_FEATURES,
    DetectedObject,
    PixelClassifier,
    analyse_pixels,
    to_analysis_array,
)
from toyworld.procedural import draw_scene
from toyworld.scenes import compose_scene
from toyworld.vocabulary import SHAPES, TEXTURES, parse_scene_text

CALIBRATION_SIZES = ("small", "medium", "large")
MIN_STD = 0.012


def main_object_detections(
    prompt: str, seed: int, classifier: PixelClassifier
) -> list[tuple[str, str, DetectedObject]]:
    """Render a prompt and pair each requested (non-distractor) object with its detection."""
    scene = compose_scene(parse_scene_text(prompt), seed)
    analysis = analyse_pixels(to_analysis_array(draw_scene(scene, 224, 224)), classifier)
    pairs = []
    for obj in scene.objects:
        if obj.distractor or not analysis.objects:
            continue
        nearest = min(
            analysis.objects, key=lambda d: np.hypot(d.centre[0] - obj.x, d.centre[1] - obj.y)
        )
        pairs.append((obj.shape, obj.texture, nearest))
    return pairs


def shape_feature_table(seeds: range) -> dict[str, np.ndarray]:
    """Shape features of single rendered objects, ``[n, len(SHAPE_FEATURES)]`` per shape."""
    classifier = PixelClassifier.build()
    rows: dict[str, list[list[float]]] = {shape: [] for shape in SHAPES}
    for shape in SHAPES:
        for texture in TEXTURES:
            for size in CALIBRATION_SIZES:
                for seed in seeds:
                    for _, _, found in main_object_detections(
                        f"a {size} {texture} {shape}", seed, classifier
                    ):
                        rows[shape].append([found.features[name] for name in SHAPE_FEATURES])
    return {shape: np.array(values) for shape, values in rows.items()}


def fit_shape_prototypes(
    seeds: range = range(1000, 1008),
) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per-shape (mean, std) of the shape features, std floored at ``MIN_STD``."""
    table = shape_feature_table(seeds)
    return {
        shape: (
            tuple(round(float(v), 3) for v in values.mean(axis=0)),
            tuple(round(max(float(v), MIN_STD), 3) for v in values.std(axis=0)),
        )
        for shape, values in table.items()
    }


if __name__ == "__main__":
    print("SHAPE_PROTOTYPES = {")
    for shape, (mean, std) in fit_shape_prototypes().items():
        print(f"    {shape!r}: ({mean}, {std}),")
    print("}")
