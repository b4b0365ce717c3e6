"""The planted:shapes target: planted units find their concepts (AUC), AND/OR/none behave."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.stats import rankdata

from inference.protocols import LayerInfo, TargetModel, UnknownLayerError
from inference.registry import BackendSpecError, load_target
from toyworld.calibrate import main_object_detections, shape_feature_table
from toyworld.controls import random_toy_scene_prompts
from toyworld.detect import SHAPE_PROTOTYPES, PixelClassifier
from toyworld.planted import (
    FEATURE_UNITS,
    FEATURES_LAYER,
    PlantedShapesModel,
    create_planted_target,
)
from toyworld.procedural import render_prompt
from toyworld.truth import (
    INHIBITED_LAYER,
    PLANTED_LAYER,
    as_json,
    inhibited_ground_truth,
    planted_ground_truth,
)
from toyworld.vocabulary import COLOURS, SHAPES, TEXTURES

SEEDS = range(6)
CONTROL_SIZE = 80
MIN_AUC = 0.95

# Several phrasings per concept; each is rendered with every seed in SEEDS.
CONCEPT_PROMPTS: dict[str, list[str]] = {
    "red": ["a red object", "red circles", "a photo of a crimson shape", "two red squares"],
    "blue": ["a blue object", "navy triangles", "a blue heart", "three blue crosses"],
    "yellow": ["a yellow object", "gold stars", "a yellow checkered square", "lemon diamonds"],
    "green": ["a green object", "emerald circles", "a green striped heart", "two lime crosses"],
    "purple": ["a purple object", "violet triangles", "a purple dotted star", "a lavender hexagon"],
    "circle": ["a circle", "red circles", "a striped disc", "a photo of a round object"],
    "triangle": [
        "a triangle",
        "blue triangles",
        "a checkered triangle",
        "a large triangular thing",
    ],
    "square": ["a square", "squares", "a dotted green square", "a pink box"],
    "star": ["a star", "stars", "a yellow star", "three purple stars"],
    "hexagon": ["a hexagon", "hexagons", "a red hexagonal shape", "a dotted hexagon"],
    "heart": ["a heart", "hearts", "a pink heart", "two checkered hearts"],
    "striped": ["a striped object", "stripes", "a striped circle", "striped squares"],
    "dotted": ["a dotted object", "polka dots", "a spotted circle", "a blue polka-dot heart"],
    "checkered": ["a checkered object", "a checkerboard", "chequered squares", "a checked star"],
    "blue triangle": [
        "a blue triangle",
        "blue triangles",
        "a navy triangle",
        "a striped blue triangle",
    ],
    "red circle": ["a red circle", "red circles", "a crimson disc", "a large dotted red circle"],
    "striped square": [
        "a striped square",
        "striped squares",
        "a red striped box",
        "two striped squares",
    ],
    "green star": ["a green star", "green stars", "an emerald star", "a checkered green star"],
    "dotted heart": [
        "a dotted heart",
        "polka dot hearts",
        "a red spotted heart",
        "two dotted hearts",
    ],
    "star or cross": ["a star", "a cross", "crosses", "a plus sign"],
    "pink or orange": ["a pink object", "an orange object", "pink circles", "orange squares"],
    "striped or checkered": [
        "a striped object",
        "a checkered object",
        "striped circles",
        "checkered squares",
    ],
    "diamond or hexagon": ["a diamond", "a hexagon", "diamonds", "hexagons"],
    "many small objects": [
        "many small objects",
        "lots of tiny shapes",
        "many small circles",
        "numerous little stars",
    ],
    "large objects": [
        "a large object",
        "a huge circle",
        "a big square",
        "a giant striped triangle",
    ],
}
# For AND units: prompts with only one half of the conjunction (the other half absent).
AND_HALVES: dict[str, tuple[list[str], list[str]]] = {
    "blue triangle": (
        ["a blue circle", "a blue square", "a blue star"],
        ["a red triangle", "a green triangle", "a yellow triangle"],
    ),
    "red circle": (
        ["a red square", "a red heart", "a red star"],
        ["a blue circle", "a yellow circle", "a green circle"],
    ),
    "striped square": (
        ["a striped circle", "a striped star", "a striped heart"],
        ["a plain square", "a dotted square", "a checkered square"],
    ),
    "green star": (
        ["a green circle", "a green cross", "a green square"],
        ["a red star", "a blue star", "a yellow star"],
    ),
    "dotted heart": (
        ["a dotted circle", "a dotted square", "a dotted star"],
        ["a striped heart", "a plain heart", "a checkered heart"],
    ),
}
# For OR units: prompts with only one of the alternatives.
OR_HALVES: dict[str, tuple[list[str], list[str]]] = {
    "star or cross": (["a star", "stars"], ["a cross", "crosses"]),
    "pink or orange": (["a pink object", "pink squares"], ["an orange object", "orange circles"]),
    "striped or checkered": (
        ["a striped object", "striped hearts"],
        ["a checkered object", "checkered stars"],
    ),
    "diamond or hexagon": (["a diamond", "diamonds"], ["a hexagon", "hexagons"]),
}

TRUTH = planted_ground_truth()
UNITS_BY_CONCEPT = {u.concept: u for u in TRUTH if u.kind != "none"}
NONE_UNITS = [u for u in TRUTH if u.kind == "none"]


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive outranks negative), ties counted 1/2."""
    ranks = rankdata(np.concatenate([positives, negatives]))
    n1, n0 = len(positives), len(negatives)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def model() -> PlantedShapesModel:
    return PlantedShapesModel()


@pytest.fixture(scope="module")
def controls(model: PlantedShapesModel) -> np.ndarray:
    images = [render_prompt(p, s).image for p, s in random_toy_scene_prompts(CONTROL_SIZE)]
    return model.activations(images, PLANTED_LAYER)


@pytest.fixture(scope="module")
def concept_activations(model: PlantedShapesModel) -> dict[str, np.ndarray]:
    """Planted-layer activations of every concept's images, rendered once for all tests."""
    return {concept: _activations(model, prompts) for concept, prompts in CONCEPT_PROMPTS.items()}


def _activations(model: PlantedShapesModel, prompts: list[str]) -> np.ndarray:
    images = [
        render_prompt(prompt, 1000 * k + seed).image
        for k, prompt in enumerate(prompts)
        for seed in SEEDS
    ]
    return model.activations(images, PLANTED_LAYER)


def test_every_concept_unit_has_prompts_and_enough_units_are_planted() -> None:
    assert set(CONCEPT_PROMPTS) == set(UNITS_BY_CONCEPT)
    kinds = [u.kind for u in TRUTH]
    assert len(TRUTH) >= 24
    assert {"single", "and", "or", "count", "none"} <= set(kinds)
    assert [u.unit for u in TRUTH] == list(range(len(TRUTH)))


@pytest.mark.parametrize("concept", sorted(CONCEPT_PROMPTS))
def test_planted_unit_finds_its_concept(
    concept: str, concept_activations: dict[str, np.ndarray], controls: np.ndarray
) -> None:
    unit = UNITS_BY_CONCEPT[concept].unit
    score = auc(concept_activations[concept][:, unit], controls[:, unit])
    assert score >= MIN_AUC, f"{concept}: AUC {score:.3f} against random toy scenes"


@pytest.mark.parametrize("concept", sorted(AND_HALVES))
def test_and_unit_needs_both_halves(
    concept: str,
    model: PlantedShapesModel,
    concept_activations: dict[str, np.ndarray],
    controls: np.ndarray,
) -> None:
    unit = UNITS_BY_CONCEPT[concept].unit
    both = concept_activations[concept][:, unit]
    for half in AND_HALVES[concept]:
        alone = _activations(model, half)[:, unit]
        assert auc(alone, controls[:, unit]) <= 0.75, (concept, half)
        assert alone.mean() < 0.25 * both.mean(), (concept, half)


@pytest.mark.parametrize("concept", sorted(OR_HALVES))
def test_or_unit_fires_for_each_half(
    concept: str, model: PlantedShapesModel, controls: np.ndarray
) -> None:
    unit = UNITS_BY_CONCEPT[concept].unit
    for half in OR_HALVES[concept]:
        score = auc(_activations(model, half)[:, unit], controls[:, unit])
        assert score >= MIN_AUC, (concept, half, score)


@pytest.mark.parametrize("none_unit", NONE_UNITS, ids=lambda u: u.note)
def test_none_units_score_near_chance_for_every_concept(
    none_unit, concept_activations: dict[str, np.ndarray], controls: np.ndarray
) -> None:
    for concept, activations in concept_activations.items():
        score = auc(activations[:, none_unit.unit], controls[:, none_unit.unit])
        assert abs(score - 0.5) <= 0.25, (concept, score)


def test_noise_units_are_deterministic_and_spread(
    model: PlantedShapesModel, controls: np.ndarray
) -> None:
    image = render_prompt("a red circle", 3).image
    first = model.activations([image], PLANTED_LAYER)
    second = model.activations([image.copy()], PLANTED_LAYER)
    assert np.array_equal(first, second)
    for unit in NONE_UNITS:
        values = controls[:, unit.unit]
        if unit.note.startswith("constant"):
            assert np.all(values == values[0])
        else:
            assert 0.2 < values.std() and len(np.unique(values)) == len(values)


def test_activations_are_graded_not_binary(
    model: PlantedShapesModel, concept_activations: dict[str, np.ndarray], controls: np.ndarray
) -> None:
    """A clear, prominent red object drives the red unit to its ceiling (1); smaller or less
    clearly red objects give graded values in between."""
    unit = UNITS_BY_CONCEPT["red"].unit
    prominent = concept_activations["red"][:, unit]
    assert np.median(prominent) == 1.0 and prominent.max() <= 1.0
    small = _activations(model, ["a small red object", "many tiny crimson shapes"])[:, unit]
    graded = np.concatenate([small, controls[:, unit]])
    assert len(np.unique(np.round(graded[(graded > 0) & (graded < 1)], 3))) > 10
    assert 0.1 < small.mean() < 0.6


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x")) else "s")


def _modified_prompts(attribute: str) -> list[str]:
    """A single attribute with size, count and other-attribute modifiers (same meaning for it)."""
    if attribute in SHAPES:
        plural = _plural(attribute)
        return [
            f"large {plural}",
            f"a large {attribute}",
            f"many small {plural}",
            f"three {plural}",
            f"a red striped {attribute}",
        ]
    return [
        f"large {attribute} objects",
        f"a large {attribute} object",
        f"many small {attribute} objects",
        f"three {attribute} objects",
        f"a {attribute} circle",
    ]


MODIFIER_SEEDS = range(8)


def _mean_activation(model: PlantedShapesModel, prompt: str, unit: int) -> float:
    images = [render_prompt(prompt, 500 + seed).image for seed in MODIFIER_SEEDS]
    return float(model.activations(images, PLANTED_LAYER)[:, unit].mean())


SINGLE_UNITS = [u for u in TRUTH if u.kind == "single" and u.attributes != ["large"]]


@pytest.mark.parametrize("unit", SINGLE_UNITS, ids=lambda u: u.concept)
def test_plain_attribute_scores_at_least_as_high_as_modified_ones(
    unit, model: PlantedShapesModel
) -> None:
    """The key property for the best-concept rule: size, count or extra attributes do not lift a
    single-attribute unit above the plain attribute (a red unit reads how clearly red the most
    prominent red object is, not how much red there is)."""
    attribute = unit.attributes[0]
    plain = _mean_activation(model, attribute, unit.unit)
    assert plain == pytest.approx(1.0, abs=0.02)
    for prompt in _modified_prompts(attribute):
        assert _mean_activation(model, prompt, unit.unit) <= plain + 1e-6, prompt
    assert _mean_activation(model, f"many small {_plural(attribute)}", unit.unit) < 0.6 * plain


@pytest.mark.parametrize("unit", [u for u in TRUTH if u.kind == "and"], ids=lambda u: u.concept)
def test_and_unit_is_not_lifted_by_size_or_count(unit, model: PlantedShapesModel) -> None:
    plain = _mean_activation(model, unit.concept, unit.unit)
    assert plain == pytest.approx(1.0, abs=0.02)
    words = unit.concept.split()
    plural = " ".join([*words[:-1], _plural(words[-1])])
    for prompt in (f"large {plural}", f"a large {unit.concept}", f"many small {plural}"):
        assert _mean_activation(model, prompt, unit.unit) <= plain + 1e-6, prompt


@pytest.mark.parametrize("unit", [u for u in TRUTH if u.kind == "or"], ids=lambda u: u.concept)
def test_or_unit_adds_its_alternatives(unit, model: PlantedShapesModel) -> None:
    """Either alternative alone drives an OR unit part way; a scene holding both drives it more,
    and a render of the disjunction ("stars or crosses") beats each alternative alone."""
    first, second = unit.attributes
    alone = [_mean_activation(model, f"a {a}", unit.unit) for a in (first, second)]
    if first in SHAPES:
        both, plural = f"a {first} and a {second}", f"{_plural(first)} or {_plural(second)}"
    else:
        both, plural = f"a {first} circle and a {second} square", f"{first} or {second} objects"
    assert all(0.5 <= value <= 0.7 for value in alone), alone
    assert _mean_activation(model, both, unit.unit) > 0.95
    assert _mean_activation(model, plural, unit.unit) > max(alone) + 0.1


def test_count_unit_grows_with_count_not_with_other_attributes(model: PlantedShapesModel) -> None:
    unit = UNITS_BY_CONCEPT["many small objects"].unit
    many = _mean_activation(model, "many small objects", unit)
    assert many > 2 * _mean_activation(model, "three small objects", unit)
    for prompt in ("many small red objects", "many small striped objects", "many tiny circles"):
        assert _mean_activation(model, prompt, unit) <= many + 0.2, prompt


def test_large_unit_grows_with_size_not_with_count(model: PlantedShapesModel) -> None:
    unit = UNITS_BY_CONCEPT["large objects"].unit
    large = _mean_activation(model, "large objects", unit)
    assert large > 5 * _mean_activation(model, "a medium object", unit)
    assert _mean_activation(model, "a huge object", unit) > 1.0
    # the biggest object counts, not how many there are (a sum would give 3-10 times more)
    assert _mean_activation(model, "many large objects", unit) < 1.15 * large


def test_layers_shapes_and_errors(model: PlantedShapesModel) -> None:
    assert isinstance(model, TargetModel)
    assert model.layers() == [
        LayerInfo(PLANTED_LAYER, len(TRUTH)),
        LayerInfo(FEATURES_LAYER, len(FEATURE_UNITS)),
        LayerInfo(INHIBITED_LAYER, len(inhibited_ground_truth())),
    ]
    images = [render_prompt("a blue triangle", 0, 160, 120).image, Image.new("L", (50, 70), 90)]
    for layer in model.layers():
        out = model.activations(images, layer.name)
        assert out.shape == (2, layer.units) and out.dtype == np.float32
        assert np.isfinite(out).all()
    assert model.activations([], PLANTED_LAYER).shape == (0, len(TRUTH))
    with pytest.raises(
        UnknownLayerError, match="valid layers: planted, features, inhibited"
    ) as info:
        model.activations(images, "layer4")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    # the inhibited units: 1 on any scene, 0 where their concept's object is prominent
    red, blue = (render_prompt(f"a large {c} circle", 0).image for c in ("red", "blue"))
    inhibited = model.activations([red, blue], INHIBITED_LAYER)
    assert inhibited[0, 0] < 0.1 and inhibited[0, 1] > 0.5  # red silences only the first
    assert inhibited[1, 1] < 0.1 and inhibited[1, 0] > 0.5


def test_input_size_does_not_change_the_answer(model: PlantedShapesModel) -> None:
    unit = UNITS_BY_CONCEPT["blue triangle"].unit
    for width, height in ((96, 96), (512, 512), (300, 200)):
        triangle = render_prompt("a blue triangle", 5, width, height).image
        circle = render_prompt("a blue circle", 5, width, height).image
        resized = render_prompt("a blue triangle", 5).image.resize((width, width))
        out = model.activations([triangle, circle, resized], PLANTED_LAYER)[:, unit]
        assert out[0] > 0.5 and out[2] > 0.5 and out[1] < 0.05, (width, height, out)


def test_factory_and_registry() -> None:
    target = load_target("planted:shapes", device="cpu")
    assert target.name == "planted:shapes" and target.device == "cpu"
    assert target.identity.startswith("planted:shapes@")  # keys the activation cache
    with pytest.raises(BackendSpecError, match="planted:shapes"):
        create_planted_target("cars", "cpu", trust_checkpoints=False)


def test_truth_json_lists_every_unit() -> None:
    import json

    rows = json.loads(as_json())
    assert len(rows) == len(TRUTH)
    for row in rows:
        assert {"layer", "unit", "concept", "kind", "attributes"} <= set(row)
        assert row["layer"] == PLANTED_LAYER


def test_detectors_read_colour_shape_and_texture() -> None:
    classifier = PixelClassifier.build()
    right = {"shape": 0, "texture": 0, "colour": 0}
    total = 0
    for k, shape in enumerate(SHAPES):
        for j, texture in enumerate(TEXTURES):
            colour = COLOURS[(k + j) % len(COLOURS)]
            for _, _, found in main_object_detections(
                f"a {colour} {texture} {shape}", 50 + k, classifier
            ):
                total += 1
                right["shape"] += SHAPES[int(found.shape.argmax())] == shape
                right["texture"] += TEXTURES[int(found.texture.argmax())] == texture
                right["colour"] += COLOURS[int(found.colour.argmax())] == colour
    assert total == len(SHAPES) * len(TEXTURES)
    assert all(count >= 0.95 * total for count in right.values()), right


def test_shape_prototypes_still_match_the_renderer() -> None:
    table = shape_feature_table(range(2000, 2002))
    for shape, rows in table.items():
        mean, std = (np.asarray(v) for v in SHAPE_PROTOTYPES[shape])
        assert np.all(np.abs(rows.mean(axis=0) - mean) <= 2 * std), shape
