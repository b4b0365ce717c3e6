"""CoSy scores against hand-computed values; CoSy seeds and prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from evals.cosy import (
    DEFAULT_COSY_TEMPLATE,
    cosy_prompt,
    cosy_scores,
    cosy_seed,
    cosy_seeds,
)
from tools.scoring import auc_interval, auc_score, mad_score, score_activations


def test_keys_and_a_hand_computed_case_with_a_tie():
    # control [1, 2, 3] vs concept [2, 4]: control wins only 3 > 2, and 2 = 2 is a tie,
    # so U_control = 1 + 0.5 = 1.5 of 6 pairs and AUC = 1 - 1.5 / 6 = 0.75.
    scores = cosy_scores([1, 2, 3], [2, 4])
    assert set(scores) == {"auc", "mad", "u", "p"}
    assert scores["u"] == 1.5
    assert scores["auc"] == 0.75
    assert scores["mad"] == pytest.approx((3 - 2) / 1.0)  # std([1, 2, 3], ddof=1) = 1
    # normal approximation with tie correction and continuity correction, by hand:
    # mu = n1 n2 / 2 = 3; sigma^2 = n1 n2 / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1)))
    #                              = 6 / 12 * (6 - 6 / 20) = 2.85
    z = (abs(1.5 - 3) - 0.5) / math.sqrt(2.85)
    assert scores["p"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    reference = mannwhitneyu([1, 2, 3], [2, 4], alternative="two-sided")
    assert (scores["u"], scores["p"]) == pytest.approx((reference.statistic, reference.pvalue))


def test_perfect_separation_uses_the_exact_p():
    scores = cosy_scores([1, 2, 3], [4, 5])
    assert scores["u"] == 0.0 and scores["auc"] == 1.0
    # exact null distribution: 1 of the C(5, 2) = 10 orderings has U = 0; two-sided doubles it
    assert scores["p"] == pytest.approx(0.2)
    assert scores["mad"] == pytest.approx(2.5)
    assert cosy_scores([4, 5], [1, 2, 3])["auc"] == 0.0


def test_negative_mad_and_u_of_the_control_sample():
    scores = cosy_scores([0, 2, 4], [-1, 1])  # control mean 2, std 2; concept mean 0
    assert scores["mad"] == pytest.approx(-1.0)
    # control beats concept in 5 of 6 pairs (only 0 < 1 goes the other way)
    assert scores["u"] == 5.0 and scores["auc"] == pytest.approx(1 / 6)


def test_ties_count_one_half():
    scores = cosy_scores([1, 1], [1, 2])
    assert scores["auc"] == 0.75  # (0.5 + 0.5 + 1 + 1) / 4
    assert scores["u"] == 1.0


def test_constant_control_gives_zero_mad():
    scores = cosy_scores([1, 1, 1], [2, 3])
    assert scores["mad"] == 0.0 and scores["auc"] == 1.0 and scores["u"] == 0.0
    assert cosy_scores([5.0], [7.0])["mad"] == 0.0  # one control value: no deviation


def test_everything_tied():
    scores = cosy_scores(np.ones(30), np.ones(20))
    assert scores == {"auc": 0.5, "mad": 0.0, "u": 300.0, "p": 1.0}


def test_random_samples_agree_with_brute_force_and_scipy():
    rng = np.random.default_rng(3)
    control = np.round(rng.normal(size=57), 1)  # rounding makes ties
    concept = np.round(rng.normal(0.7, size=23), 1)
    scores = cosy_scores(control, concept)
    greater = (concept[:, None] > control[None, :]).sum()
    ties = (concept[:, None] == control[None, :]).sum()
    assert ties > 0
    assert scores["auc"] == pytest.approx((greater + 0.5 * ties) / (57 * 23))
    assert scores["u"] == pytest.approx(57 * 23 - greater - 0.5 * ties)
    reference = mannwhitneyu(control, concept, alternative="two-sided")
    assert scores["u"] == pytest.approx(reference.statistic)
    assert scores["p"] == pytest.approx(reference.pvalue)
    mad = (concept.mean() - control.mean()) / control.std(ddof=1)
    assert scores["mad"] == pytest.approx(mad)
    # the search's scores are the same quantities
    assert scores["auc"] == pytest.approx(auc_score(concept, control))
    assert scores["mad"] == pytest.approx(mad_score(concept, control))


@pytest.mark.parametrize("seed", range(5))
def test_cosy_search_and_confirmation_score_alike(seed):
    """One formula: on the same activations CoSy's AUC and MAD, the search's AUC and MAD scores
    and the confirmation's AUC (with its interval) are the same numbers, ties included."""
    rng = np.random.default_rng(seed)
    control = np.round(rng.normal(size=int(rng.integers(2, 300))), 1)
    concept = np.round(rng.normal(rng.uniform(-1, 2), size=int(rng.integers(2, 60))), 1)
    scores = cosy_scores(control, concept)
    confirmed, low, high = auc_interval(concept, control, resamples=200)
    assert scores["auc"] == confirmed == score_activations("auc", concept, control)
    assert scores["mad"] == score_activations("mad", concept, control)
    assert low <= confirmed <= high


@pytest.mark.parametrize("seed", range(20))
def test_auc_keeps_the_mann_whitney_identity(seed):
    """sklearn's ROC AUC is 1 - U / (n1 * n2) with scipy's U of the control sample, ties 1/2."""
    rng = np.random.default_rng(seed)
    control = np.round(rng.normal(size=int(rng.integers(1, 40))), 1)
    concept = np.round(rng.normal(rng.uniform(-1, 1), size=int(rng.integers(1, 40))), 1)
    scores = cosy_scores(control, concept)
    u = mannwhitneyu(control, concept, alternative="two-sided").statistic
    assert scores["u"] == pytest.approx(u)
    assert scores["auc"] == pytest.approx(1 - u / (control.size * concept.size), abs=1e-12)


@pytest.mark.parametrize(
    ("control", "concept", "message"),
    [
        ([], [1.0], "control activations are empty"),
        ([1.0], [], "concept activations are empty"),
        ([[1.0, 2.0]], [1.0], "1-D"),
        ([1.0, float("nan")], [1.0], "NaN"),
    ],
)
def test_bad_samples_are_refused(control, concept, message):
    with pytest.raises(ValueError, match=message):
        cosy_scores(control, concept)


def test_cosy_seeds_are_fixed_distinct_and_avoid_excluded_seeds():
    seeds = cosy_seeds(0, "red", 50)
    assert seeds == cosy_seeds(0, " red ", 50)
    assert len(set(seeds)) == 50 and all(0 <= s < 2**63 for s in seeds)
    assert seeds != cosy_seeds(1, "red", 50) and seeds != cosy_seeds(0, "blue", 50)
    assert seeds[0] == cosy_seed(0, "red", 0)
    avoided = cosy_seeds(0, "red", 50, exclude=seeds[:2])
    assert avoided[:48] == seeds[2:] and not set(avoided) & set(seeds[:2])


def test_cosy_seeds_use_another_namespace_than_the_search():
    from tools.agent_tools import image_seed

    class Ctx:
        target, layer, unit = "planted:shapes", "planted", 3

    search = {image_seed(0, Ctx, "red", index) for index in range(200)}
    assert not search & set(cosy_seeds(0, "red", 200))


def test_cosy_prompt():
    assert cosy_prompt(DEFAULT_COSY_TEMPLATE, " red fruit ") == (
        "realistic photo of a close up of red fruit"
    )
    assert cosy_prompt("{label} {not a field}", "x") == "x {not a field}"
    with pytest.raises(ValueError, match="no \\{label\\} placeholder"):
        cosy_prompt("a photo of {concept}", "x")
