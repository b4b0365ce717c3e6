"""Every score formula of LINE, in one place: the search's scores (:func:`score_activations`),
the confirmation's AUC with its interval (:func:`auc_interval`) and CoSy's four figures
(:func:`separation`, which ``evals.cosy`` reports) all come from here.

With ``concept`` (the activations on a concept's images, n values) and ``control`` (on the
control images, m values) of one unit:

* **mean**: ``mean(concept)`` (the paper's default search score);
* **wins**: the pairs (concept image, control image) in which the concept image's activation is
  the larger, ties counting one half; the Mann-Whitney U of the concept sample;
* **AUC**: ``wins / (n * m)``, the chance that a concept image outranks a control image (the
  ROC AUC with concept images as the positive class);
* **U** (CoSy's): the Mann-Whitney U of the control sample, ``n * m - wins``; small U means the
  concept images activate the unit more; **p** is that test's two-sided p-value (scipy's
  default method), 1 when every value is tied;
* **MAD**: ``(mean(concept) - mean(control)) / std(control, ddof=1)``, 0 when that std is 0 or
  there is a single control value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def mean_score(activations: Sequence[float]) -> float:
    """The mean activation (the paper's default)."""
    return float(np.mean(activations)) if len(activations) else float("-inf")


def mad_score(activations: Sequence[float] | np.ndarray, control: np.ndarray) -> float:
    """(mean concept - mean control) / std(control, ddof=1); 0 when that std is 0."""
    spread = float(np.std(control, ddof=1)) if len(control) > 1 else 0.0
    if spread == 0.0:
        return 0.0
    return (float(np.mean(activations)) - float(np.mean(control))) / spread


def concept_wins(activations: Sequence[float] | np.ndarray, control: np.ndarray) -> float:
    """Pairs (concept, control) in which the concept's activation is the larger, ties one half
    (the Mann-Whitney U of the concept sample); by sorting, so large samples cost no n x m."""
    ordered = np.sort(np.asarray(control, dtype=np.float64))
    concept = np.asarray(activations, dtype=np.float64)
    below = np.searchsorted(ordered, concept, side="left")
    at_most = np.searchsorted(ordered, concept, side="right")
    return float(np.sum(below) + 0.5 * np.sum(at_most - below))


def auc_score(activations: Sequence[float] | np.ndarray, control: np.ndarray) -> float:
    """P(concept activation > control activation), ties counting one half."""
    pairs = len(activations) * len(control)
    return concept_wins(activations, control) / pairs if pairs else float("nan")


@dataclass(frozen=True)
class Separation:
    """How well a unit's activations separate concept images from control images (module doc);
    CoSy's figures."""

    auc: float
    mad: float
    u: float
    """Mann-Whitney U of the control sample."""
    p: float

    def as_dict(self) -> dict[str, float]:
        """``{"auc", "mad", "u", "p"}``."""
        return asdict(self)


def separation(activations: Sequence[float] | np.ndarray, control: np.ndarray) -> Separation:
    """AUC, MAD, Mann-Whitney U of the control sample and its two-sided p (module doc)."""
    from scipy.stats import mannwhitneyu

    concept = np.asarray(activations, dtype=np.float64)
    reference = np.asarray(control, dtype=np.float64)
    pairs = concept.size * reference.size
    wins = concept_wins(concept, reference)
    if np.all(reference == reference[0]) and np.all(concept == reference[0]):
        p = 1.0  # every value tied: scipy's normal approximation would divide by zero
    else:
        p = float(mannwhitneyu(reference, concept, alternative="two-sided").pvalue)
    return Separation(wins / pairs, mad_score(concept, reference), pairs - wins, p)


def score_activations(
    kind: str, activations: Sequence[float], control: np.ndarray | None = None
) -> float:
    """Score by the variant's ``score`` setting; MAD and AUC need control activations."""
    if kind == "mean":
        return mean_score(activations)
    if control is None or len(control) == 0:
        raise ValueError(f"score {kind!r} needs a control set; pass --control or use 'mean'")
    return mad_score(activations, control) if kind == "mad" else auc_score(activations, control)


def _auc_statistic(concept: np.ndarray, control: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC along ``axis`` of (batches of) two samples, for :func:`scipy.stats.bootstrap`."""
    concept = np.moveaxis(concept, axis, -1)[..., :, None]
    control = np.moveaxis(control, axis, -1)[..., None, :]
    return np.mean((concept > control) + 0.5 * (concept == control), axis=(-2, -1))


def auc_interval(
    activations: Sequence[float],
    control: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(auc, low, high)``: :func:`auc_score` with its percentile bootstrap interval (both
    samples resampled; fixed ``seed``, so the same data give the same interval)."""
    from scipy.stats import bootstrap

    concept = np.asarray(activations, dtype=np.float64)
    reference = np.asarray(control, dtype=np.float64)
    auc = auc_score(concept, reference)
    if len(concept) < 2 or len(reference) < 2:
        return auc, float("nan"), float("nan")
    result = bootstrap(
        (concept, reference),
        _auc_statistic,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return auc, float(interval.low), float(interval.high)


def normalised_drops(before: np.ndarray, after: np.ndarray, floor: float) -> np.ndarray:
    """How far an edit brought each image's activation down to the unit's typical level
    ``floor``: ``(before - after) / (before - floor)`` clipped to [-1, 1] (1: down to the
    floor, 0: unchanged, below 0: it rose), for the images that were above ``floor`` to begin
    with (the others say nothing about what was edited out)."""
    above = before > floor + 1e-9
    return np.clip((before[above] - after[above]) / (before[above] - floor), -1.0, 1.0)
