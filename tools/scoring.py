"""How a concept's activations become its score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_score(activations: Sequence[float]) -> float:
    """The mean activation (the paper's default)."""
    return float(np.mean(activations)) if len(activations) else float("-inf")


def mad_score(activations: Sequence[float], control: np.ndarray) -> float:
    """(mean concept - mean control) / std(control, ddof=1); 0 when that std is 0."""
    spread = float(np.std(control, ddof=1)) if len(control) > 1 else 0.0
    if spread == 0.0:
        return 0.0
    return (float(np.mean(activations)) - float(np.mean(control))) / spread


def auc_score(activations: Sequence[float] | np.ndarray, control: np.ndarray) -> float:
    """P(concept activation > control activation), ties counting one half."""
    concept = np.asarray(activations, dtype=np.float64)[:, None]
    control = np.asarray(control, dtype=np.float64)[None, :]
    return float(np.mean((concept > control) + 0.5 * (concept == control)))


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
