"""The toy world's known unit bases: an SAE and a directions matrix over ``planted:shapes``'s
planted layer whose latents are known combinations of planted units.

Each latent of :data:`_LATENTS` adds planted units with weights and a bias: ``red circle`` is
``red + circle - 0.5``, so it fires a little on red things or on circles and most on a red circle;
``blue or green`` is ``blue + green``. Two latents have no concept: one reads the constant planted
unit (dense: it fires on every image) and one can never fire (dead). The SAE (SAELens format,
``standard`` ReLU architecture) encodes them as ``W_enc`` and ``b_enc``; the directions matrix
holds the same weights and puts each bias on the constant unit (always 1), so a direction's
value equals the SAE latent's pre-activation. ``line toyworld bases`` writes both files, and
``line toyworld truth --basis SPEC`` prints their truth, found by the basis's hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.bases import (
    UnitBasis,
    directions_basis,
    sae_basis,
    unit_space,
    write_directions,
    write_sae,
)
from toyworld.truth import PLANTED_LAYER, PlantedUnit, UnitKind, planted_ground_truth

TARGET = "planted:shapes"
SAE_FOLDER = "shapes-sae"
DIRECTIONS_FILE = "shapes-directions.npy"
SAE_CONFIG = {
    "architecture": "standard",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "model_name": TARGET,
    "hook_name": PLANTED_LAYER,
}
CONSTANT = "constant"
"""The planted unit that is always 1 (a no-concept unit): it carries the directions' biases."""

# (concept, kind, attributes, planted units with weights, bias, note); the latent is the position.
Latent = tuple[str, UnitKind, tuple[str, ...], tuple[tuple[str, float], ...], float, str]
_LATENTS: tuple[Latent, ...] = (
    ("red circle", "and", ("red", "circle"), (("red", 1), ("circle", 1)), -0.5, ""),
    ("blue or green", "or", ("blue", "green"), (("blue", 1), ("green", 1)), 0.0, ""),
    ("striped star", "and", ("striped", "star"), (("striped", 1), ("star", 1)), -0.5, ""),
    ("yellow square", "and", ("yellow", "square"), (("yellow", 1), ("square", 1)), -0.5, ""),
    ("dotted or checkered", "or", ("dotted", "checkered"),
     (("dotted", 1), ("checkered", 1)), 0.0, ""),
    ("triangle", "single", ("triangle",), (("triangle", 1.5),), 0.0, ""),
    ("no concept", "none", (), ((CONSTANT, 1),), 0.0, "dense: fires on every image"),
    ("no concept", "none", (), (("red", 1),), -10.0, "dead: red is at most 1"),
)  # fmt: skip


def _planted_index() -> dict[str, int]:
    """Planted unit index by concept (the constant unit as ``constant``)."""
    index = {u.concept: u.unit for u in planted_ground_truth() if u.kind != "none"}
    index[CONSTANT] = next(u.unit for u in planted_ground_truth() if u.note.startswith(CONSTANT))
    return index


def latent_weights() -> tuple[np.ndarray, np.ndarray]:
    """``(W [planted units, latents], bias [latents])`` of the toy latents."""
    index = _planted_index()
    weights = np.zeros((len(planted_ground_truth()), len(_LATENTS)), np.float32)
    for latent, (_concept, _kind, _attributes, parts, _bias, _note) in enumerate(_LATENTS):
        for concept, weight in parts:
            weights[index[concept], latent] = weight
    return weights, np.array([latent[4] for latent in _LATENTS], np.float32)


def _sae_tensors() -> dict[str, np.ndarray]:
    weights, bias = latent_weights()
    decoder = weights.T / np.linalg.norm(weights.T, axis=1, keepdims=True)
    return {
        "W_enc": weights,
        "b_enc": bias,
        "W_dec": decoder.astype(np.float32),
        "b_dec": np.zeros(weights.shape[0], np.float32),
    }


def _direction_rows() -> np.ndarray:
    weights, bias = latent_weights()
    rows = weights.T.copy()
    rows[:, _planted_index()[CONSTANT]] += bias  # the constant unit is 1 on every image
    return rows


def toy_bases() -> dict[str, UnitBasis]:
    """The toy SAE and directions, built in memory (the same tensors the files hold)."""
    return {
        "sae": sae_basis(_sae_tensors(), SAE_CONFIG, "sae:toy world"),
        "directions": directions_basis(_direction_rows(), None, "directions:toy world"),
    }


def write_toy_bases(folder: str | Path) -> dict[str, str]:
    """Write the toy SAE folder and directions file into ``folder``; their specs by kind."""
    folder = Path(folder)
    sae = write_sae(folder / SAE_FOLDER, _sae_tensors(), SAE_CONFIG)
    directions = write_directions(folder / DIRECTIONS_FILE, _direction_rows())
    return {"sae": f"sae:{sae}", "directions": f"directions:{directions}"}


def toy_basis_truth(basis: UnitBasis) -> list[PlantedUnit] | None:
    """The known concepts of a toy basis's latents (by its hash); ``None`` for other bases."""
    if basis.hash not in {known.hash for known in toy_bases().values()}:
        return None
    layer = unit_space(PLANTED_LAYER, basis.key)
    truth = []
    for latent, (concept, kind, attributes, parts, bias, note) in enumerate(_LATENTS):
        terms = " + ".join(f"{weight:g} {name}" for name, weight in parts)
        how = f"{terms} {bias:+g}" if bias else terms
        truth.append(
            PlantedUnit(
                layer, latent, concept, kind, list(attributes), f"{how}; {note}" if note else how
            )
        )
    return truth
