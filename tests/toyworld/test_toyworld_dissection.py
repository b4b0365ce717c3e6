"""Dissection: AUCs equal scikit-learn's, it recovers every planted unit's truth on planted:shapes
and calls the no-concept units none, it is cached, and it refuses targets outside the toy world."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from inference.registry import load_target
from inference.store import default_cache_dir
from toyworld.dissection import (
    HELDOUT_PROBE_SEED,
    PROBE_SEED,
    SELECTIVE_AUC,
    WEAK_AUC,
    DissectedUnit,
    DissectionError,
    ProbeScenes,
    auc_matrix,
    cache_path,
    cached_dissection,
    candidate_text,
    candidates,
    concept_predicate,
    dissect_target,
    heldout_readings,
    label_predicate,
    load_toy_world_target,
    size_name,
)
from toyworld.probes import MANY_OBJECTS, OBJECT_ATTRIBUTES, probe_set
from toyworld.scenes import COUNT_VALUES
from toyworld.truth import PLANTED_LAYER, planted_ground_truth
from toyworld.vocabulary import parse_attributes


def test_auc_matrix_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    activations = rng.integers(0, 4, size=(300, 3)).astype(float)  # many ties
    labels = (rng.random((300, 5)) < 0.3).astype(float)
    ours = auc_matrix(activations, labels)
    for unit in range(3):
        for column in range(5):
            expected = roc_auc_score(labels[:, column], activations[:, unit])
            assert ours[unit, column] == pytest.approx(expected, abs=1e-12)


def test_every_candidate_text_parses_back_to_its_attributes():
    found, labels = candidates(probe_set(600, 11))
    assert found and labels.shape == (600, len(found))
    kinds = {c.kind for c in found}
    assert kinds == {"single", "and", "or"}
    for candidate in found:
        assert parse_attributes(candidate.concept) == set(candidate.attributes), candidate
    assert candidate_text("and", ("small", "many")) == "many small objects"
    assert candidate_text("or", ("star", "cross")) == "star or cross"


@pytest.fixture(scope="module")
def probes():
    return probe_set(600, 11)


def test_candidate_predicates_mean_what_the_probes_record(probes):
    """A candidate holds on a scene exactly when the probe's own record says so: an attribute
    anywhere; two object attributes on one object; "many" with an object attribute: many
    objects carry it; a background with anything: both in the scene; OR: either."""
    found, labels = candidates(probes)

    def recorded(kind, attributes, probe):
        if kind == "single":
            return attributes[0] in probe.attributes
        if kind == "or":
            return any(a in probe.attributes for a in attributes)
        a, b = attributes
        if "many" in attributes and {a, b} - {"many"} <= OBJECT_ATTRIBUTES:
            return ({a, b} - {"many"}).pop() in probe.many_of
        if a in OBJECT_ATTRIBUTES and b in OBJECT_ATTRIBUTES:
            return frozenset(attributes) in probe.object_pairs
        return a in probe.attributes and b in probe.attributes

    for column, candidate in enumerate(found):
        expected = [recorded(candidate.kind, candidate.attributes, p) for p in probes]
        assert labels[:, column].tolist() == [float(x) for x in expected], candidate


@pytest.mark.parametrize(
    ("label", "kind", "attributes"),
    [
        ("navy triangles", "and", ("blue", "triangle")),
        ("Crimson shapes", "single", ("red",)),
        ("crosses or stars", "or", ("star", "cross")),
        ("lots of tiny objects", "and", ("many", "small")),
        ("red things on a blue backdrop", "and", ("red", "blue background")),
    ],
)
def test_a_label_and_the_reference_it_names_hold_on_the_same_scenes(
    probes, label, kind, attributes
):
    scenes = ProbeScenes(probes)
    predicate = label_predicate(label)
    reference = concept_predicate(kind, attributes)
    assert predicate is not None and reference is not None
    assert predicate.kind == reference.kind == kind
    assert predicate.holds(scenes).tolist() == reference.holds(scenes).tolist()


@pytest.mark.parametrize("label", ["no selective concept", "", None, "a photo", "objects"])
def test_a_label_without_toy_world_attributes_has_no_predicate(label):
    assert label_predicate(label) is None


def test_label_predicates_read_counts_sizes_and_several_objects_off_the_scene(probes):
    """Beyond the candidates: a number is an exact count of such objects, "medium" a size, and
    each object group of a label must be in the scene."""
    scenes = ProbeScenes(probes)

    def objects(probe, **wanted):
        return [
            obj
            for obj in probe.scene.objects
            if all(
                (size_name(obj.radius) if name == "size" else getattr(obj, name)) == value
                for name, value in wanted.items()
            )
        ]

    def expect(test):
        return [float(test(p)) for p in probes]

    three_red = label_predicate("three red circles")
    assert three_red is not None and three_red.kind == "and"
    assert three_red.holds(scenes).tolist() == expect(
        lambda p: len(objects(p, colour="red", shape="circle")) == COUNT_VALUES["three"]
    )
    many_stars = label_predicate("many stars")
    assert many_stars is not None
    assert many_stars.holds(scenes).tolist() == expect(
        lambda p: len(objects(p, shape="star")) >= MANY_OBJECTS
    )
    medium = label_predicate("medium objects")
    assert medium is not None and medium.holds(scenes).sum() > 0
    assert medium.holds(scenes).tolist() == expect(lambda p: bool(objects(p, size="medium")))
    two_groups = label_predicate("a red circle and a blue square")
    assert two_groups is not None
    assert two_groups.holds(scenes).tolist() == expect(
        lambda p: (
            bool(objects(p, colour="red", shape="circle"))
            and bool(objects(p, colour="blue", shape="square"))
        )
    )


def test_the_weak_band_sits_just_under_the_selective_cut():
    def unit(kind, auc):
        return DissectedUnit("conv4", 0, "x", kind, [], auc, "red")

    assert unit("single", 0.9).verdict == "selective"
    assert unit("none", (WEAK_AUC + SELECTIVE_AUC) / 2).verdict == "weak"
    assert unit("none", WEAK_AUC).verdict == "weak"
    assert unit("none", WEAK_AUC - 0.01).verdict == "none"


def test_heldout_readings_are_disjoint_from_the_dissection_probes_and_cached():
    target = load_target("planted:shapes", "cpu")
    probes, activations = heldout_readings(target, PLANTED_LAYER, scenes=70)
    assert HELDOUT_PROBE_SEED != PROBE_SEED
    assert activations.shape == (70, 28)
    dissection_seeds = {p.seed for p in probe_set(70, PROBE_SEED)}
    assert not dissection_seeds & {p.seed for p in probes}
    read = np.asarray(target.activations([p.render() for p in probes], PLANTED_LAYER))
    assert np.array_equal(activations, read)
    assert list((default_cache_dir() / "dissection").glob("*.npy"))
    again_probes, again = heldout_readings(target, PLANTED_LAYER, scenes=70)  # from the cache
    assert np.array_equal(again, activations) and again_probes == probes
    with pytest.raises(DissectionError, match="valid layers"):
        heldout_readings(target, "conv9", scenes=10)


@pytest.fixture(scope="module")
def planted_dissection():
    return cached_dissection(load_target("planted:shapes", "cpu"))


def test_dissection_recovers_every_planted_unit_and_calls_no_concept_units_none(
    planted_dissection,
):
    dissected = {u.unit: u for u in planted_dissection if u.layer == PLANTED_LAYER}
    for truth in planted_ground_truth():
        unit = dissected[truth.unit]
        if truth.kind == "none":
            assert unit.kind == "none" and unit.concept == "no concept", unit
            assert unit.auc < SELECTIVE_AUC
        else:
            assert set(unit.attributes) == set(truth.attributes), (truth, unit)
            assert (unit.kind == "or") == (truth.kind == "or"), (truth, unit)
            assert unit.auc >= SELECTIVE_AUC


def test_dissection_covers_every_layer_and_is_cached(planted_dissection):
    target = load_target("planted:shapes", "cpu")
    layers = {info.name: info.units for info in target.layers()}
    counts = {name: sum(u.layer == name for u in planted_dissection) for name in layers}
    assert counts == layers
    assert cache_path(target, 3000).is_file()
    again = cached_dissection(target)  # read from the cache: the same units
    assert again == planted_dissection
    assert cached_dissection(target, "features") == [
        u for u in planted_dissection if u.layer == "features"
    ]


def test_dissection_refuses_targets_outside_the_toy_world():
    with pytest.raises(DissectionError, match="needs scenes with known attributes"):
        load_toy_world_target("torchvision:resnet18:random")


def test_dissection_of_an_unknown_layer_lists_the_valid_ones():
    target = load_target("planted:shapes", "cpu")
    with pytest.raises(DissectionError, match="valid layers: planted, features"):
        dissect_target(target, layers=["conv9"], scenes=10)
    with pytest.raises(DissectionError, match="valid layers: planted, features"):
        cached_dissection(target, "conv9")
