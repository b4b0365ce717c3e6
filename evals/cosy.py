"""CoSy scores of a neuron label: concept images against a control set of natural images.

CoSy (Kopf et al., 2024) renders images of a neuron's label and asks how well the neuron's
activations separate them from natural control images. With ``control`` (n1 values) and
``concept`` (n2 values) of one neuron:

* ``u``: the Mann-Whitney U of the control sample against the concept sample, i.e. the number
  of (control, concept) pairs in which the control activation is the larger, ties counting one
  half. This is ``scipy.stats.mannwhitneyu(control, concept).statistic``. Small U means the
  concept images activate the neuron more.
* ``auc``: the ROC AUC with concept images as the positive class
  (``sklearn.metrics.roc_auc_score``), i.e. the probability that a concept image's activation
  exceeds a control image's, ties counting one half. It equals ``1 - u / (n1 * n2)``.
* ``p``: the two-sided p-value of that Mann-Whitney test (scipy's default method: exact for
  small samples without ties, otherwise the normal approximation with continuity correction);
  1 when every value is tied.
* ``mad``: ``(mean(concept) - mean(control)) / std(control, ddof=1)``, 0 when that deviation
  is 0 (or there is a single control value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from evals.defaults import DEFAULT_COSY_TEMPLATE


def _sample(values: object, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} activations must be a 1-D array; got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} activations are empty; CoSy needs at least one value of each")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} activations hold NaN or infinite values; check the target model")
    return array


def cosy_scores(control: Iterable[float], concept: Iterable[float]) -> dict[str, float]:
    """AUC, MAD, Mann-Whitney U (control vs concept) and its two-sided p; see the module doc."""
    control = _sample(control, "control")
    concept = _sample(concept, "concept")
    pairs = control.size * concept.size
    # U of the control sample: pairs where control > concept, ties one half (by ranks via scipy)
    if np.all(control == control[0]) and np.all(concept == control[0]):
        u, p = 0.5 * pairs, 1.0
    else:
        test = mannwhitneyu(control, concept, alternative="two-sided")
        u, p = float(test.statistic), float(test.pvalue)
    spread = float(np.std(control, ddof=1)) if control.size > 1 else 0.0
    mad = (float(concept.mean()) - float(control.mean())) / spread if spread > 0 else 0.0
    is_concept = np.r_[np.zeros(control.size), np.ones(concept.size)]
    auc = float(roc_auc_score(is_concept, np.r_[control, concept]))
    return {"auc": auc, "mad": mad, "u": u, "p": p}


def cosy_seed(run_seed: int, label: str, index: int) -> int:
    """The seed of a label's ``index``-th CoSy image: its own hash namespace (``cosy|``), so it
    differs from the search's image seeds (``tools.agent_tools.image_seed``). It does not depend
    on the neuron: a label's images are the same for every neuron and every method that names it,
    and render once."""
    key = f"cosy|{run_seed}|{label.strip()}|{index}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def cosy_seeds(run_seed: int, label: str, count: int, exclude: Iterable[int] = ()) -> list[int]:
    """``count`` distinct CoSy seeds of a label, none of them in ``exclude`` (the search's seeds).

    Deterministic: a seed that collides is passed over and the next index is used.
    """
    banned = set(exclude)
    seeds: list[int] = []
    index = 0
    while len(seeds) < count:
        seed = cosy_seed(run_seed, label, index)
        if seed not in banned:
            seeds.append(seed)
            banned.add(seed)
        index += 1
    return seeds


def cosy_prompt(template: str, label: str) -> str:
    """Fill a CoSy template: ``{label}`` becomes the label (other braces are left alone)."""
    if "{label}" not in template:
        raise ValueError(
            f"CoSy template {template!r} has no {{label}} placeholder; write e.g. "
            f"{DEFAULT_COSY_TEMPLATE!r}"
        )
    return template.replace("{label}", label.strip())
