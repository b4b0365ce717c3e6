"""Dissection: AUCs equal scikit-learn's, it recovers every planted unit's truth on planted:shapes
and calls the no-concept units none, it is cached, and it refuses targets outside the toy world."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from inference.registry import load_target
from inference.toyworld.dissection import (
    SELECTIVE_AUC,
    DissectionError,
    auc_matrix,
    cache_path,
    cached_dissection,
    candidate_text,
    candidates,
    dissect_target,
    load_toy_world_target,
)
from inference.toyworld.probes import probe_set
from inference.toyworld.truth import PLANTED_LAYER, planted_ground_truth
from inference.toyworld.vocabulary import parse_attributes


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
