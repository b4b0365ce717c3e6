"""The verdict: CoSy's AUC on the confirmation images, bounded, with three stated outcomes."""

from __future__ import annotations

import math

import numpy as np

from analysis.selectivity import (
    NO_SELECTIVE_CONCEPT,
    SELECTIVE_AUC,
    WEAK_AUC,
    Verdict,
    shown_label,
)
from tools.scoring import auc_interval


def test_outcomes_follow_the_stated_thresholds():
    assert Verdict(SELECTIVE_AUC, 0.7, 0.95).outcome == "selective"
    assert Verdict(SELECTIVE_AUC - 0.01, 0.7, 0.9).outcome == "weak"
    assert Verdict(WEAK_AUC, 0.55, 0.8).outcome == "weak"
    assert Verdict(WEAK_AUC - 0.01).outcome == "none"


def test_a_label_whose_interval_reaches_chance_is_not_selective():
    assert Verdict(0.9, 0.45, 1.0).outcome == "weak"


def test_an_unconfirmed_label_is_never_selective():
    verdict = Verdict(math.nan)
    assert verdict.outcome == "none" and not verdict.selective


def test_zero_spread_gives_a_finite_verdict():
    # a unit constant on every image (a dead or saturated unit) gets AUC 0.5, not infinity
    auc, low, high = auc_interval(np.ones(20), np.ones(100))
    assert (auc, low, high) == (0.5, 0.5, 0.5)
    assert Verdict(auc, low, high).outcome == "none"


def test_a_detector_is_selective_and_noise_is_not():
    rng = np.random.default_rng(0)
    control = rng.normal(0.0, 1.0, 100)
    detector = Verdict(*auc_interval(rng.normal(4.0, 1.0, 20), control))
    noise = Verdict(*auc_interval(rng.normal(0.0, 1.0, 20), control))
    assert detector.selective and detector.low > 0.9
    assert noise.outcome == "none" and noise.low < 0.5 < noise.high


def test_the_interval_is_reproducible():
    rng = np.random.default_rng(1)
    concept, control = rng.normal(1, 1, 20), rng.normal(0, 1, 100)
    assert auc_interval(concept, control) == auc_interval(concept, control)


def test_tables_show_weak_and_none_labels_as_no_selective_concept():
    assert shown_label("red", "weak") == f"{NO_SELECTIVE_CONCEPT} (best: red)"
    assert shown_label("red", "False") == f"{NO_SELECTIVE_CONCEPT} (best: red)"
    assert shown_label("red", True) == "red"
    assert shown_label("red", None) == "red"


def test_an_inhibitor_is_judged_from_below():
    assert Verdict(0.05, 0.01, 0.1).inhibitor().outcome == "selective"
    assert Verdict(0.3, 0.2, 0.45).inhibitor().outcome == "weak"
    assert Verdict(0.5, 0.4, 0.6).inhibitor().outcome == "none"
