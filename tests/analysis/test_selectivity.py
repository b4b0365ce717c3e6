"""The selectivity verdict: the figure is a robust z-score, and edge cases give clear answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.selectivity import SELECTIVE_Z, label_verdict, selectivity


def test_selectivity_is_the_modified_z_score_of_the_label_median():
    reference = [0.0, 1.0, 2.0, 3.0, 4.0]  # median 2, MAD 1
    assert selectivity([5.0, 7.0, 6.0], reference) == pytest.approx(0.6745 * 4)


def test_constant_reference_gives_infinities_and_zero():
    assert selectivity([1.0], [0.0, 0.0, 0.0]) == math.inf
    assert selectivity([0.0], [0.0, 0.0]) == 0.0
    assert selectivity([-1.0], [0.0, 0.0]) == -math.inf


def test_no_images_or_no_reference_gives_no_verdict():
    assert math.isnan(selectivity([], [1.0, 2.0]))
    verdict = label_verdict([{"concept": "red", "activations": [1.0, 1.0]}], "red")
    assert verdict.reference == "history" and not verdict.selective


def test_a_concept_unit_is_selective_and_the_best_of_noise_is_not():
    rng = np.random.default_rng(0)
    noise = [{"concept": f"c{i}", "activations": list(rng.normal(size=5))} for i in range(30)]
    best = max(noise, key=lambda row: float(np.mean(row["activations"])))
    assert not label_verdict(noise, best["concept"]).selective
    detector = [*noise, {"concept": "red", "activations": [6.0, 5.5, 7.0, 6.2, 5.9]}]
    verdict = label_verdict(detector, "red")
    assert verdict.selective and verdict.selectivity >= SELECTIVE_Z


def test_control_activations_are_the_reference_when_given():
    entries = [
        {"concept": "red", "activations": [1.0, 1.0]},
        {"concept": "x", "activations": [1.0]},
    ]
    verdict = label_verdict(entries, "red", control=[0.0, 0.1, -0.1, 0.05])
    assert verdict.reference == "control" and verdict.selective
