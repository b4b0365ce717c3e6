"""CoSy scores of a neuron label: concept images against a control set of natural images.

CoSy (Kopf et al., 2024) renders images of a neuron's label and asks how well the neuron's
activations separate them from natural control images: AUC, MAD, the Mann-Whitney U of the
control sample and its two-sided p. The formulas are :mod:`tools.scoring`'s (the same functions
score the search and the confirmation); this module checks the samples and picks CoSy's seeds
and prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from evals.defaults import DEFAULT_COSY_TEMPLATE
from tools.scoring import separation


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
    """AUC, MAD, Mann-Whitney U (control vs concept) and its two-sided p
    (:func:`tools.scoring.separation`) of checked samples."""
    return separation(_sample(concept, "concept"), _sample(control, "control")).as_dict()


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
