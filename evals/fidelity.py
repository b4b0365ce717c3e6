"""Fidelity: do generated images of a concept stand in for real images of it, for this model?

For every neuron whose label names a class of the control set (class folders), the neuron is
read on the label's generated images (CoSy's template and held-out seeds, as
:func:`evals.cosy_eval.score_neurons` renders them) and on the real images of that class:

- ``mean_synthetic``, ``mean_real`` and their ``ratio`` (synthetic over real; blank when the
  real mean is 0);
- ``auc_synthetic`` and ``auc_real``: how well each set stands out from the control images of
  the *other* classes (ROC AUC, ties one half): the same question CoSy asks, once with generated
  and once with real images.

Across neurons (per layer): the Spearman rank correlation of ``mean_synthetic`` with
``mean_real`` (do the neurons that respond most to generated X respond most to real X?), the
median ratio and the mean AUCs. The verdict: synthetic images **stand in** when the rank
correlation is at least :data:`MIN_RANK_CORRELATION` and the mean AUCs differ by at most
:data:`MAX_AUC_GAP`; with fewer than :data:`MIN_NEURONS` matched neurons there is no verdict.

A label names a class when their texts are equal (case, spaces and underscores aside) or, failing
that, when the class is the label's most similar one with an all-MiniLM-L6-v2 cosine of at least
``min_similarity`` (:data:`DEFAULT_MIN_SIMILARITY`; :mod:`analysis.similarity`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from agent.run_folder import RunFolder
from analysis.similarity import SentenceEmbedder, default_embedder
from evals.cosy import cosy_scores
from evals.cosy_eval import (
    CosyNeuron,
    LabelMap,
    Notes,
    cosy_neurons,
    measure_control_layers,
    score_neurons,
    search_seeds,
)
from evals.defaults import DEFAULT_COSY_TEMPLATE, DEFAULT_MIN_SIMILARITY
from evals.tables import markdown_table
from tools.client import InferenceClient
from tools.controlset import ControlSet, ControlSetError

log = logging.getLogger("line.eval.fidelity")

MIN_RANK_CORRELATION = 0.5
MAX_AUC_GAP = 0.1
MIN_NEURONS = 3
FIDELITY_COLUMNS = ("layer", "unit", "label", "class", "match", "similarity", "n_synthetic",
                    "n_real", "mean_synthetic", "mean_real", "ratio", "auc_synthetic",
                    "auc_real")  # fmt: skip
"""The columns of ``fidelity.csv``."""
FIDELITY_TABLE = [
    ("layer", "layer"),
    ("unit", "unit"),
    ("label", "label"),
    ("class", "class"),
    ("match", "match"),
    ("mean_synthetic", "mean synthetic"),
    ("mean_real", "mean real"),
    ("ratio", "ratio"),
    ("auc_synthetic", "AUC synthetic"),
    ("auc_real", "AUC real"),
]
FIDELITY_SUMMARY_TABLE = [
    ("layer", "layer"),
    ("neurons", "neurons"),
    ("rank_correlation", "Spearman (means, across neurons)"),
    ("p", "p"),
    ("median_ratio", "median ratio"),
    ("auc_synthetic", "mean AUC synthetic"),
    ("auc_real", "mean AUC real"),
    ("verdict", "synthetic stands in for real?"),
]


@dataclass(frozen=True)
class ClassMatch:
    """The control class a label names, how (``exact`` or ``similar``) and the similarity."""

    name: str
    how: str
    similarity: float


def _normalised(text: str) -> str:
    return " ".join(text.replace("_", " ").casefold().split())


def match_classes(
    labels: Sequence[str],
    classes: Sequence[str],
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    embedder: SentenceEmbedder | None = None,
) -> dict[str, ClassMatch]:
    """The class each label names (module doc); labels naming none are left out. The text
    model loads only when some label has no exact match."""
    by_text = {_normalised(name): name for name in classes}
    matches = {
        label: ClassMatch(by_text[_normalised(label)], "exact", 1.0)
        for label in labels
        if _normalised(label) in by_text
    }
    rest = [label for label in dict.fromkeys(labels) if label not in matches]
    if rest and classes:
        model = embedder or default_embedder()
        similarity = model.embed(rest) @ model.embed(list(classes)).T
        for label, row in zip(rest, similarity, strict=True):
            best = int(np.argmax(row))
            if row[best] >= min_similarity:
                matches[label] = ClassMatch(classes[best], "similar", float(row[best]))
    return matches


def check_class_folders(control: ControlSet) -> None:
    """Fidelity needs real images by class: a control folder in class folders."""
    if not control.classes:
        raise ControlSetError(
            "fidelity compares generated images with real images of the same class, so it needs "
            "a control folder in class folders (ROOT/<class>/*.jpg, e.g. ImageNet's val layout); "
            f"{control.name!r} has no classes"
        )


async def evaluate_fidelity(
    folder: RunFolder,
    client: InferenceClient,
    control: ControlSet,
    n_images: int = 20,
    template: str = DEFAULT_COSY_TEMPLATE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    labels: LabelMap | None = None,
    *,
    generator: str | None = None,
    embedder: SentenceEmbedder | None = None,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    batch: int = 64,
    notes: Notes | None = None,
) -> list[dict]:
    """Fidelity rows (:data:`FIDELITY_COLUMNS`) of every neuron whose final label (or label in
    ``labels``, as for :func:`evals.cosy_eval.cosy_neurons`) names a control class, in (layer,
    unit) order."""
    check_class_folders(control)
    note = notes or (lambda text: log.warning("%s", text))
    settings = folder.read_settings()
    generator = generator or settings.generator
    neurons, skipped = cosy_neurons(folder, labels)
    for text in skipped:
        note(text)
    matches = match_classes([n.label for n in neurons], control.classes, min_similarity, embedder)
    unmatched = [n for n in neurons if n.label not in matches]
    if unmatched:
        note(
            f"{len(unmatched)} of {len(neurons)} labels name no control class (e.g. "
            f"{unmatched[0].label!r}); they are not compared"
        )
    named = [neuron for neuron in neurons if neuron.label in matches]
    if not named:
        return []
    scored = await score_neurons(
        client, settings.target, generator, settings.seed, named, control, n_images, template,
        exclude=search_seeds(folder), cache_dir=cache_dir, server_id=server_id, batch=batch,
        notes=note,
    )  # fmt: skip
    controls = await measure_control_layers(
        client, control, settings.target, {row["layer"] for row in scored}, generator,
        cache_dir=cache_dir, server_id=server_id, batch=batch, notes=note,
    )  # fmt: skip
    rows = []
    for row in scored:
        neuron = CosyNeuron(row["layer"], row["unit"], row["concept"])
        measured = controls[neuron.layer]
        match = matches[neuron.label]
        in_class = np.array([label == match.name for label in measured.labels])
        rows.append(
            _compare(neuron, match, row["activations"], measured.unit(neuron.unit), in_class)
        )
    return rows


def _compare(
    neuron: CosyNeuron,
    match: ClassMatch,
    synthetic: np.ndarray,
    control: np.ndarray,
    in_class: np.ndarray,
) -> dict:
    real, others = control[in_class], control[~in_class]
    mean_synthetic = float(synthetic.mean())
    mean_real = float(real.mean()) if real.size else math.nan
    return {
        "layer": neuron.layer,
        "unit": neuron.unit,
        "label": neuron.label,
        "class": match.name,
        "match": match.how,
        "similarity": match.similarity,
        "n_synthetic": int(synthetic.size),
        "n_real": int(real.size),
        "mean_synthetic": mean_synthetic,
        "mean_real": mean_real,
        "ratio": mean_synthetic / mean_real if mean_real != 0 else math.nan,
        "auc_synthetic": cosy_scores(others, synthetic)["auc"] if others.size else math.nan,
        "auc_real": cosy_scores(others, real)["auc"] if others.size else math.nan,
    }


def _finite_mean(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def verdict(rank_correlation: float, auc_synthetic: float, auc_real: float, neurons: int) -> str:
    """Whether synthetic images stand in for real ones (module doc), in words."""
    if neurons < MIN_NEURONS or math.isnan(rank_correlation):
        return f"no verdict (needs at least {MIN_NEURONS} matched neurons with varying means)"
    ranks_agree = rank_correlation >= MIN_RANK_CORRELATION
    aucs_agree = abs(auc_synthetic - auc_real) <= MAX_AUC_GAP
    if ranks_agree and aucs_agree:
        return "yes"
    reasons = []
    if not ranks_agree:
        reasons.append(f"rank correlation below {MIN_RANK_CORRELATION}")
    if not aucs_agree:
        reasons.append(f"AUCs differ by more than {MAX_AUC_GAP}")
    return "no: " + ", ".join(reasons)


def fidelity_summary_rows(rows: Sequence[dict]) -> list[dict]:
    """Per layer: matched neurons, the rank correlation of synthetic and real means across them
    (with its p), the median ratio, the mean AUCs and the verdict."""
    summary = []
    for layer in dict.fromkeys(row["layer"] for row in rows):
        own = [row for row in rows if row["layer"] == layer]
        synthetic = np.array([row["mean_synthetic"] for row in own])
        real = np.array([row["mean_real"] for row in own])
        rho = p = math.nan
        if len(own) >= 2 and np.ptp(synthetic) > 0 and np.ptp(real) > 0:
            test = spearmanr(synthetic, real)
            rho, p = float(test.statistic), float(test.pvalue)
        ratios = [row["ratio"] for row in own if math.isfinite(row["ratio"])]
        auc_synthetic = _finite_mean([row["auc_synthetic"] for row in own])
        auc_real = _finite_mean([row["auc_real"] for row in own])
        summary.append(
            {
                "layer": layer,
                "neurons": len(own),
                "rank_correlation": rho,
                "p": p,
                "median_ratio": float(np.median(ratios)) if ratios else math.nan,
                "auc_synthetic": auc_synthetic,
                "auc_real": auc_real,
                "verdict": verdict(rho, auc_synthetic, auc_real, len(own)),
            }
        )
    return summary


def fidelity_markdown(rows: Sequence[dict], control: str, template: str) -> str:
    """The Markdown summary: the question, the per-layer answer, how it is decided."""
    return "\n".join(
        [
            f"Do generated images stand in for real ones? Each neuron whose label names a class "
            f"of `{control}` is read on the label's generated images (`{template}`) and on the "
            "real images of the class; AUCs are against the other classes' images.",
            "",
            markdown_table(fidelity_summary_rows(rows), FIDELITY_SUMMARY_TABLE),
            f"Verdict: yes when the rank correlation is at least {MIN_RANK_CORRELATION} and the "
            f"mean AUCs differ by at most {MAX_AUC_GAP}. A ratio above 1 means the generated "
            "images drive the neurons harder than the real ones.",
        ]
    )
