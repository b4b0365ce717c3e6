"""The ground-truth benchmark: explain toy-world units whose concepts are known, score each label.

``line eval groundtruth`` runs the agent on units of a toy-world target (R times, with run seeds
0..R-1) and scores each final label with :func:`analysis.groundtruth.score_label`. The truth is
the planted concept for the planted units of ``planted:shapes``, and the dissection reference
(:mod:`toyworld.dissection`) for every other toy-world layer, ``learned:shapes``'s
learned units included. A unit with no concept counts as a false claim when the run's verdict
calls its label selective (``results.csv``'s ``selective``). The same units are labelled by the
vocabulary baseline (the offline proposer's vocabulary, or the one ``offline:vocab:FILE`` names;
every concept scored the same way) for comparison. The output folder holds one run folder per
repeat (``repeat-1/``, ...; an existing one is resumed) and

- ``groundtruth.csv``: one row per (repeat, unit): truth, label, score, attribute match,
  similarity, normalised score, claimed (the verdict), recovered, the verdict's agreement with
  the truth on whether the unit is selective, the baseline's label and recovery, groups;
- ``groundtruth-summary.csv``: one row per unit kind (single, and, or, count, none, then
  ``all`` for the units with a concept): recovery rate (mean over repeats), the baseline's
  recovery, mean similarity, mean number of groups, the verdict's agreement, and for ``none``
  the false-claim rate;
- ``summary.json``: the headline figures (:func:`groundtruth_figures`).

Exact recovery is all or nothing (one extra word is a miss), so it has partial credit beside it,
the attribute Jaccard |label's attributes & truth's| / |label's | truth's|, and the main figure
does not depend on wording at all: **predicate AUC**. A label's predicate
(:func:`toyworld.dissection.label_predicate`, the same one dissection tests its
candidates with) says which scenes of a held-out probe set, disjoint from the one that made the
references, have the concept; its AUC is the chance that the unit's activation ranks a scene
with it above one without (ties 1/2). A label with no predicate (no toy-world attribute, an
empty label, "no selective concept") or one that holds on every held-out scene or none scores
0.5, no information, and is counted. It is averaged over live units (activation not constant
on the held-out scenes): over the live units with a reference concept, beside the reference
concept's own predicate AUC (the ceiling), and over every live unit, beside the best dissection
candidate's. LINE and the vocabulary baseline are compared unit by unit with a Wilcoxon
signed-rank test. Toy-world layers only: a toy basis's latents get none of these figures.

References are not exact either: the layer is dissected again on the held-out probes and the
share of units whose reference (kind and attributes, or none) stays the same is reported. A
dissection reference whose best AUC is in the weak band (``weak``,
:attr:`toyworld.dissection.DissectedUnit.verdict`) is not forced to yes or no: the
verdict's agreement is computed on the other units, and reported apart for the weak ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from agent.launch import (
    DEMO_OFFLINE_ITERATIONS,
    RunSetupError,
    execute_run,
    read_basis,
    settings_from_options,
)
from agent.offline import DEFAULT_VOCABULARY_PATH
from agent.providers import parse_llm_spec
from agent.record import NeuronRecord
from agent.run_folder import RunFolder
from agent.runner import RunProgress, add_groups
from analysis.groundtruth import KINDS, GroundTruth, score_label
from analysis.similarity import SentenceEmbedder
from evals.baseline import read_vocabulary, vocabulary_baseline
from evals.tables import write_rows
from inference.bases import out_of_range, split_unit_space
from prompts.variant import load_variant
from tools.server_session import server_session
from toyworld.defaults import PROBE_SCENES
from toyworld.dissection import (
    HELDOUT_PROBE_SEED,
    PROBE_SEED,
    SELECTIVE_AUC,
    WEAK_AUC,
    DissectedUnit,
    DissectionError,
    Predicate,
    ProbeScenes,
    auc_matrix,
    cached_dissection,
    candidate_text,
    candidates,
    concept_predicate,
    dissect_layer,
    heldout_readings,
    label_predicate,
    load_toy_world_target,
)
from toyworld.latents import toy_basis_truth
from toyworld.probes import ATTRIBUTES
from toyworld.truth import (
    INHIBITED_LAYER,
    PLANTED_LAYER,
    PlantedUnit,
    inhibited_ground_truth,
    planted_ground_truth,
)
from toyworld.vocabulary import parse_attributes

TARGET = "planted:shapes"
GENERATOR = "procedural:shapes"
ROW_COLUMNS = [
    "repeat",
    "unit",
    "kind",
    "truth",
    "label",
    "score",
    "status",
    "attribute_match",
    "similarity",
    "normalised_score",
    "claimed",
    "recovered",
    "attribute_jaccard",
    "verdict",
    "reference_verdict",
    "verdict_right",
    "live",
    "predicate_auc",
    "predicate_note",
    "ceiling_concept",
    "ceiling_predicate_auc",
    "baseline_label",
    "baseline_recovered",
    "baseline_attribute_jaccard",
    "baseline_predicate_auc",
    "baseline_predicate_note",
    "groups",
    "group_concepts",
    "inhibitor",
    "inhibitor_truth",
    "inhibitor_recovered",
]
SUMMARY_COLUMNS = [
    "kind",
    "units",
    "runs",
    "recovery",
    "recovery_min",
    "recovery_max",
    "baseline_recovery",
    "attribute_jaccard",
    "baseline_attribute_jaccard",
    "predicate_auc",
    "baseline_predicate_auc",
    "similarity",
    "groups",
    "verdict_agreement",
    "false_claims",
]
NO_INFORMATION_AUC = 0.5
"""The predicate AUC of a label with no predicate, or one that holds on every held-out scene or
on none: it ranks nothing."""


def reference_truths(
    target: str, layer: str | None, units: Sequence[int] | None, basis: str | None = None
) -> tuple[str, dict[int, GroundTruth]]:
    """``(layer, truth by unit)``: the planted truth for ``planted:shapes``'s planted layer, the
    dissection reference for any other toy-world layer (computed once, cached), or the known
    latents of a toy basis (``basis``; the layer is then its unit space)."""
    if basis is not None:
        if target != TARGET or layer not in (None, PLANTED_LAYER):
            raise RunSetupError(
                f"--basis: the toy world's known bases read the {PLANTED_LAYER} layer of {TARGET}"
            )
        unit_basis = read_basis(basis)
        known = toy_basis_truth(unit_basis)
        if known is None:
            raise RunSetupError(
                f"{basis} is not one of the toy world's bases, so its latents have no known "
                "concepts; `line toyworld bases --out DIR` writes those"
            )
        bad = sorted(set(units or ()) - {unit.unit for unit in known})
        if bad:
            raise RunSetupError(out_of_range(unit_basis, bad[0]))
        chosen = set(units) if units is not None else {unit.unit for unit in known}
        return known[0].layer, {u.unit: GroundTruth.of(u) for u in known if u.unit in chosen}
    if target == TARGET and layer in (None, PLANTED_LAYER):
        layer = PLANTED_LAYER
        truth = {unit.unit: GroundTruth.of(unit) for unit in planted_ground_truth()}
    elif target == TARGET and layer == INHIBITED_LAYER:
        truth = {unit.unit: GroundTruth.of(unit) for unit in inhibited_ground_truth()}
    else:
        try:
            model = load_toy_world_target(target)
            if layer is None:
                layers = ", ".join(info.name for info in model.layers())
                raise RunSetupError(f"{target}: pass --layer with one of: {layers}")
            dissected = cached_dissection(model, layer)
        except DissectionError as error:
            raise RunSetupError(str(error)) from error
        truth = {unit.unit: GroundTruth.of(unit) for unit in dissected}
    if units is None:
        return layer, truth
    unknown = sorted(set(units) - set(truth))
    if unknown and layer == PLANTED_LAYER and target == TARGET:
        raise RunSetupError(
            f"{target} has no planted unit {unknown[0]}; planted units are 0 to {max(truth)} "
            "(see `line toyworld truth`)"
        )
    if unknown:
        raise RunSetupError(
            f"{target} has no unit {unknown[0]} in layer {layer!r}; its units are 0 to "
            f"{max(truth)} (see `line toyworld truth --target {target}`)"
        )
    return layer, {unit: truth[unit] for unit in sorted(set(units))}


@dataclass
class HeldOutProbes:
    """A toy-world layer read on a probe set disjoint from its dissection's: what the labels'
    predicates are tested on, and the layer dissected again on it.

    ``references`` is the layer's dissection on the usual probe set (:data:`PROBE_SEED`),
    ``redissected`` the one on these probes.
    """

    layer: str
    scenes: ProbeScenes
    activations: np.ndarray
    """``[probes, units]``: every unit of the layer."""
    seed: int
    references: dict[int, DissectedUnit]
    redissected: dict[int, DissectedUnit]
    _tests: dict[str, tuple[np.ndarray | None, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(
        cls,
        target: str,
        layer: str,
        scenes: int = PROBE_SCENES,
        seed: int = HELDOUT_PROBE_SEED,
        progress: Callable[[str], None] | None = None,
    ) -> HeldOutProbes:
        """Read (or load from the cache) the layer on the held-out probes and dissect it on
        both probe sets."""
        if seed == PROBE_SEED:
            raise RunSetupError(f"the held-out probes need a seed other than {PROBE_SEED}")
        try:
            model = load_toy_world_target(target)
            references = cached_dissection(model, layer, progress=progress)
            probes, activations = heldout_readings(model, layer, scenes, seed, progress)
        except DissectionError as error:
            raise RunSetupError(str(error)) from error
        found, labels = candidates(probes)
        redissected = dissect_layer(layer, activations, found, labels)
        return cls(
            layer,
            ProbeScenes(probes),
            activations,
            seed,
            {unit.unit: unit for unit in references},
            {unit.unit: unit for unit in redissected},
        )

    @property
    def count(self) -> int:
        """The number of held-out scenes."""
        return self.scenes.count

    def live(self, unit: int) -> bool:
        """Whether the unit's activation varies over the held-out scenes."""
        values = self.activations[:, unit]
        return bool(np.any(values != values[0]))

    def _test(
        self, key: str, predicate: Callable[[], Predicate | None]
    ) -> tuple[np.ndarray | None, str]:
        """Which held-out scenes a predicate holds on (computed once per key), or None and why
        it tells nothing: no predicate, or it holds on every scene or on none."""
        if key not in self._tests:
            found = predicate()
            if found is None:
                self._tests[key] = None, "no predicate"
            else:
                column = found.holds(self.scenes)
                positives = int(column.sum())
                if 0 < positives < column.size:
                    self._tests[key] = column, ""
                else:
                    where = "every" if positives else "no"
                    self._tests[key] = None, f"holds on {where} held-out scene"
        return self._tests[key]

    def _auc(self, unit: int, test: tuple[np.ndarray | None, str]) -> tuple[float, str]:
        column, note = test
        if column is None:
            return NO_INFORMATION_AUC, note
        return float(auc_matrix(self.activations[:, [unit]], column[:, None])[0, 0]), ""

    def label_auc(self, unit: int, label: str | None) -> tuple[float, str]:
        """``(AUC, note)``: how well the predicate of a label ranks the unit's activation on the
        held-out scenes; :data:`NO_INFORMATION_AUC` and the reason when it has no informative
        predicate."""
        text = label or ""
        return self._auc(unit, self._test(f"label|{text}", lambda: label_predicate(text)))

    def concept_auc(self, unit: int, kind: str, attributes: Sequence[str]) -> tuple[float, str]:
        """:meth:`label_auc` for a concept given by kind and attributes (a reference)."""
        key = f"concept|{kind}|{'|'.join(attributes)}"
        return self._auc(unit, self._test(key, lambda: concept_predicate(kind, attributes)))

    def stability(self, units: Sequence[int]) -> tuple[float | None, list[dict[str, Any]]]:
        """The share of ``units`` whose reference (kind and attributes, or none) is the same on
        the held-out probes, and the units whose reference changed."""
        changes = []
        for unit in units:
            first, second = self.references[unit], self.redissected[unit]
            if (first.kind, sorted(first.attributes)) != (second.kind, sorted(second.attributes)):
                changes.append(
                    {
                        "unit": unit,
                        "reference": first.concept,
                        "reference_auc": round(first.auc, 4),
                        "heldout": second.concept,
                        "heldout_auc": round(second.auc, 4),
                    }
                )
        share = 1.0 - len(changes) / len(units) if units else None
        return share, changes


def attribute_jaccard(label: str | None, truth: GroundTruth) -> float | None:
    """|label's attributes & truth's| / |label's | truth's| (toy-world attributes): partial
    credit beside the exact match; None for a truth without attributes."""
    if truth.kind == "none" or not truth.attributes:
        return None
    named, wanted = parse_attributes(label or ""), set(truth.attributes)
    return len(named & wanted) / len(named | wanted)


ATTRIBUTE_VOCABULARY_FILE = "attribute-vocabulary.txt"
ATTRIBUTE_ITERATIONS = len(ATTRIBUTES) + 8
"""Rounds of the offline proposer over the attribute vocabulary: every single attribute, then
combinations."""


def write_attribute_vocabulary(path: Path) -> Path:
    """Every toy-world attribute as a concept, one per line: the offline proposer's and the
    vocabulary baseline's vocabulary on a layer scored against dissection references."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(candidate_text("single", (a,)) for a in ATTRIBUTES) + "\n")
    return path


def vocabulary_labels(
    target: str,
    layer: str,
    units: list[int],
    prompts: str,
    vocabulary: Path = DEFAULT_VOCABULARY_PATH,
    seed: int = 0,
    basis: str | None = None,
) -> dict[int, str]:
    """The vocabulary baseline's label for each unit (every concept of ``vocabulary`` scored with
    the variant's template, images and score), from a local toy-world server."""
    concepts = read_vocabulary(vocabulary)
    variant = load_variant(prompts)

    async def labels() -> dict[int, str]:
        with server_session(
            None, target, layer, units, GENERATOR, device="cpu", basis=basis
        ) as session:
            async with session.connect() as client:
                result = await vocabulary_baseline(
                    client, target, layer, units, concepts, variant, GENERATOR, seed
                )
        return {unit: label for unit, label, _score in result.labels()}

    return asyncio.run(labels())


def _repeat_run(
    path: Path,
    repeat: int,
    target: str,
    units: list[int],
    layer: str,
    llm: str,
    llm_base_url: str | None,
    prompts: str,
    iterations: int | None,
    concurrency: int,
    on_progress: Callable[[RunProgress], None] | None,
    basis: str | None = None,
) -> tuple[list[dict], RunFolder]:
    """Run (or resume) one repeat; returns (rows, folder). With ``basis``, ``layer`` is its
    unit space."""
    if RunFolder(path).config.is_file():
        settings, folder = settings_from_options(
            prompts=prompts, concurrency=concurrency, seed=repeat, resume=path
        )
        wanted = (target, layer, units, llm, prompts, repeat)
        found = (
            settings.target,
            settings.layer,
            settings.units,
            settings.llm,
            settings.prompts,
            settings.seed,
        )
        if found != wanted:
            raise RunSetupError(
                f"{path} holds another run ({settings.llm}, prompts {settings.prompts}, units "
                f"{settings.units}); choose another --out or delete that folder"
            )
    else:
        settings, folder = settings_from_options(
            target=target,
            layer=split_unit_space(layer)[0] if basis else layer,
            units=",".join(map(str, units)),
            generator=GENERATOR,
            llm=llm,
            llm_base_url=llm_base_url,
            prompts=prompts,
            out=path,
            concurrency=concurrency,
            seed=repeat,
            iterations=iterations,
            basis=basis,
        )
    return execute_run(settings, folder, device="cpu", on_progress=on_progress), folder


def run_verdict(row: Mapping[str, Any]) -> str | None:
    """The run's verdict on a unit: ``results.csv``'s ``verdict`` (selective / weak / none)
    where the run has one, else ``selective`` or ``none`` from its ``selective`` column; None
    when it has neither, ``none`` for a unit that did not finish."""
    verdict = row.get("verdict")
    if verdict in (None, ""):
        selective = row.get("selective")
        if selective in (None, ""):
            return None
        verdict = "selective" if selective in (True, "True") else "none"
    return str(verdict) if row.get("status") == "done" else "none"


def score_run_rows(
    rows: list[dict],
    folder: RunFolder,
    truths: Mapping[int, GroundTruth | PlantedUnit],
    repeat: int,
    embedder: SentenceEmbedder | None = None,
    baseline: Mapping[int, str] | None = None,
    heldout: HeldOutProbes | None = None,
    weak_band: bool = False,
) -> list[dict]:
    """Score the results rows of one run folder against the truths (keyed by unit); a unit's
    label is claimed when the run's verdict calls it selective. With ``heldout`` the labels'
    (and the baseline's and the truth's) predicate AUCs are measured on its probes; with
    ``weak_band`` (the truths are its dissection references) a unit whose reference is ``weak``
    gets no right or wrong verdict."""
    out = []
    for row in rows:
        unit = int(row["unit"])
        truth = GroundTruth.of(truths[unit])
        record = folder.read_record(row["layer"], unit) or NeuronRecord()
        if record.groups is None:  # a run made without groups (--no-groups, or older)
            record = add_groups(record, embedder)
        done = row["status"] == "done"
        label = row["label"] if done else ""
        score = row["score"] if done and row["score"] not in ("", None) else None
        scored = score_label(
            label,
            truth,
            embedder,
            score=None if score is None else float(score),
            history_scores=[entry.score for entry in record.entries] if done else None,
        )
        verdict = run_verdict(row)
        claimed = None if verdict is None else done and verdict == "selective"
        reference_verdict = (
            heldout.references[unit].verdict
            if heldout is not None and weak_band
            else "none"
            if truth.kind == "none"
            else "selective"
        )
        verdict_right = (
            None
            if claimed is None or reference_verdict == "weak"
            else claimed == (truth.kind != "none")
        )
        baseline_label = (baseline or {}).get(unit)
        baseline_recovered = (
            None
            if baseline_label is None
            else score_label(baseline_label, truth, embedder).recovered
        )
        scored_row = {
            "repeat": repeat,
            "unit": unit,
            "kind": truth.kind,
            "truth": truth.concept,
            "label": row["label"],
            "score": row["score"],
            "status": row["status"],
            "attribute_match": scored.attribute_match,
            "similarity": scored.similarity,
            "normalised_score": scored.normalised_score,
            "claimed": scored.claimed if claimed is None else claimed,
            "recovered": scored.recovered,
            "attribute_jaccard": attribute_jaccard(label, truth),
            "verdict": verdict,
            "reference_verdict": reference_verdict,
            "verdict_right": verdict_right,
            "baseline_label": baseline_label,
            "baseline_recovered": baseline_recovered,
            "baseline_attribute_jaccard": None
            if baseline_label is None
            else attribute_jaccard(baseline_label, truth),
            "groups": len(record.groups or []),
            "group_concepts": record.groups_text(),
            **_inhibitor_columns(row, truth),
        }
        if heldout is not None:
            scored_row.update(_predicate_columns(heldout, unit, label, truth, baseline_label))
        out.append(scored_row)
    return out


def _inhibitor_columns(row: Mapping[str, Any], truth: GroundTruth) -> dict[str, Any]:
    """The run's inhibitor against a known one (planted inhibitor units): recovered when it
    names exactly the known inhibitor's attributes and its verdict is ``selective``."""
    found = str(row.get("inhibitor") or "")
    if not truth.inhibitor:
        return {"inhibitor": found, "inhibitor_truth": "", "inhibitor_recovered": None}
    right = bool(found) and parse_attributes(found) == parse_attributes(truth.inhibitor)
    recovered = right and row.get("inhibitor_verdict") == "selective"
    return {
        "inhibitor": found,
        "inhibitor_truth": truth.inhibitor,
        "inhibitor_recovered": recovered,
    }


def _predicate_columns(
    heldout: HeldOutProbes,
    unit: int,
    label: str,
    truth: GroundTruth,
    baseline_label: str | None,
) -> dict[str, Any]:
    """A row's predicate AUCs on the held-out probes: the label's, the baseline's and the
    ceiling's (the truth's concept, or for a unit without one the best dissection candidate)."""
    auc, note = heldout.label_auc(unit, label)
    baseline_auc, baseline_note = (
        (None, "") if baseline_label is None else heldout.label_auc(unit, baseline_label)
    )
    if truth.kind != "none":
        ceiling = truth.concept
        ceiling_auc, _note = heldout.concept_auc(unit, truth.kind, truth.attributes)
    else:
        ceiling = heldout.references[unit].best
        ceiling_auc, _note = heldout.label_auc(unit, ceiling)
    return {
        "live": heldout.live(unit),
        "predicate_auc": auc,
        "predicate_note": note,
        "ceiling_concept": ceiling,
        "ceiling_predicate_auc": ceiling_auc,
        "baseline_predicate_auc": baseline_auc,
        "baseline_predicate_note": baseline_note,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (``None`` when there are none)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize_groundtruth(rows: list[dict]) -> list[dict]:
    """Per kind (then ``all`` units with a concept): recovery as the mean over repeats of each
    repeat's rate (with its min and max), mean attribute Jaccard, predicate AUC (live units),
    similarity and groups, false-claim rate."""
    repeats = sorted({row["repeat"] for row in rows})
    kinds = [kind for kind in KINDS if any(row["kind"] == kind for row in rows)]
    out = []
    for kind in [*kinds, "all"]:
        chosen = [
            row for row in rows if row["kind"] == kind or (kind == "all" and row["kind"] != "none")
        ]
        if not chosen:
            continue
        recovery_rates = (
            _mean([row["recovered"] for row in chosen if row["repeat"] == repeat])
            for repeat in repeats
        )
        per_repeat = [rate for rate in recovery_rates if rate is not None]
        claim_rates = (
            _mean([row["claimed"] for row in chosen if row["repeat"] == repeat])
            for repeat in repeats
        )
        claims = [rate for rate in claim_rates if rate is not None]
        live = [row for row in chosen if row.get("live")]
        out.append(
            {
                "kind": kind,
                "units": len({row["unit"] for row in chosen}),
                "runs": len(chosen),
                "recovery": _mean(per_repeat),
                "recovery_min": min(per_repeat) if per_repeat else None,
                "recovery_max": max(per_repeat) if per_repeat else None,
                "baseline_recovery": _mean([row.get("baseline_recovered") for row in chosen]),
                "attribute_jaccard": _mean([row.get("attribute_jaccard") for row in chosen]),
                "baseline_attribute_jaccard": _mean(
                    [row.get("baseline_attribute_jaccard") for row in chosen]
                ),
                "predicate_auc": _mean([row.get("predicate_auc") for row in live]),
                "baseline_predicate_auc": _mean(
                    [row.get("baseline_predicate_auc") for row in live]
                ),
                "similarity": _mean([row["similarity"] for row in chosen]),
                "groups": _mean([row["groups"] for row in chosen]),
                "verdict_agreement": _mean([row.get("verdict_right") for row in chosen]),
                "false_claims": _mean(claims) if kind == "none" else None,
            }
        )
    return out


def paired_test(first: Sequence[float], second: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test (two-sided) of two methods' values on the same units: its
    statistic and p, the number of units, how many differ, and the mean difference (first -
    second). With no unit that differs, p is 1."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    differences = a - b
    out: dict[str, Any] = {
        "test": "Wilcoxon signed-rank, two-sided",
        "n": int(a.size),
        "differing": int(np.count_nonzero(differences)),
        "mean_difference": float(differences.mean()) if a.size else None,
        "statistic": None,
        "p_value": None,
    }
    if a.size and not out["differing"]:
        out["p_value"] = 1.0
    elif a.size:
        result = wilcoxon(a, b)
        out["statistic"], out["p_value"] = float(result.statistic), float(result.pvalue)
    return out


def _per_unit(rows: list[dict], key: str) -> dict[int, float]:
    """A row value's mean over repeats, per unit (units where it is missing left out)."""
    values: dict[int, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            values.setdefault(row["unit"], []).append(float(row[key]))
    return {unit: sum(found) / len(found) for unit, found in values.items()}


def _predicate_figures(rows: list[dict], units: Sequence[int]) -> dict[str, Any]:
    """Predicate AUC of LINE, the baseline and the ceiling, means over ``units`` (live), and the
    paired test of LINE against the baseline."""
    chosen = [row for row in rows if row["unit"] in set(units)]
    line, ceiling = _per_unit(chosen, "predicate_auc"), _per_unit(chosen, "ceiling_predicate_auc")
    baseline = _per_unit(chosen, "baseline_predicate_auc")
    paired = [unit for unit in units if unit in line and unit in baseline]

    def mean(values: Mapping[int, float]) -> float | None:
        return _mean([values.get(unit) for unit in units])

    line_mean, ceiling_mean, baseline_mean = mean(line), mean(ceiling), mean(baseline)
    return {
        "units": len(units),
        "predicate_auc": line_mean,
        "baseline_predicate_auc": baseline_mean,
        "ceiling_predicate_auc": ceiling_mean,
        "predicate_auc_of_ceiling": None
        if line_mean is None or not ceiling_mean
        else line_mean / ceiling_mean,
        "baseline_predicate_auc_of_ceiling": None
        if baseline_mean is None or not ceiling_mean
        else baseline_mean / ceiling_mean,
        "predicate_test": paired_test([line[u] for u in paired], [baseline[u] for u in paired])
        if baseline
        else None,
    }


def groundtruth_figures(
    rows: list[dict],
    summary: list[dict],
    heldout: HeldOutProbes | None = None,
    three_way_verdict: bool = False,
) -> dict[str, Any]:
    """The headline figures (``summary.json``; module docstring).

    ``recovery``, ``attribute_jaccard`` and their ``baseline_`` twins: over the units with a
    concept (exact match, mean over repeats; partial credit). ``predicate_auc``,
    ``baseline_predicate_auc``, ``reference_predicate_auc`` (the ceiling), their ratios and
    ``predicate_test``: over the live units with a reference concept; ``all_live_units`` the
    same over every live unit (the ceiling of a unit without a concept: its best dissection
    candidate). ``verdict_agreement``: over the units whose reference is not ``weak``
    (``verdict_agreement_live``: the live ones among them);
    ``verdict_agreement_weak``: the share of weak units the run calls weak (None when the run
    has no three-way verdict). ``reference_stability``: share of the units whose reference is
    the same on the held-out probes. ``three_way_verdict``: the runs' results have a
    ``verdict`` column.
    """
    units = sorted({row["unit"] for row in rows})
    with_reference = sorted({row["unit"] for row in rows if row["kind"] != "none"})
    weak = [row for row in rows if row.get("reference_verdict") == "weak"]
    agreeing = [row["verdict_right"] for row in rows if row.get("verdict_right") is not None]
    by_kind = {row["kind"]: row for row in summary}
    everything = by_kind.get("all", {})
    figures: dict[str, Any] = {
        "units": len(units),
        "repeats": len({row["repeat"] for row in rows}),
        "units_with_reference": len(with_reference),
        "weak_references": len({row["unit"] for row in weak}),
        "recovery": everything.get("recovery"),
        "baseline_recovery": everything.get("baseline_recovery"),
        "inhibitor_recovery": _mean(
            [row["inhibitor_recovered"] for row in rows if row.get("inhibitor_truth")]
        ),
        "attribute_jaccard": everything.get("attribute_jaccard"),
        "baseline_attribute_jaccard": everything.get("baseline_attribute_jaccard"),
        "verdict_agreement": _mean(agreeing),
        "verdict_agreement_runs": len(agreeing),
        "verdict_agreement_weak": _mean([row.get("verdict") == "weak" for row in weak])
        if three_way_verdict
        else None,
        "weak_verdicts": {
            verdict: sum(row.get("verdict") == verdict for row in weak)
            for verdict in ("selective", "weak", "none")
        },
    }
    if heldout is None:
        return figures | {
            key: None
            for key in (
                "predicate_auc",
                "baseline_predicate_auc",
                "reference_predicate_auc",
                "reference_stability",
            )
        }
    live = [unit for unit in units if heldout.live(unit)]
    live_with_reference = [unit for unit in live if unit in set(with_reference)]
    live_rows = [row for row in rows if row["unit"] in set(live)]
    main = _predicate_figures(rows, live_with_reference)
    stability, changes = heldout.stability(units)
    live_agreeing = [row["verdict_right"] for row in live_rows if row["verdict_right"] is not None]
    return figures | {
        "verdict_agreement_live": _mean(live_agreeing),
        "verdict_agreement_live_runs": len(live_agreeing),
        "live_units": len(live),
        "live_units_with_reference": len(live_with_reference),
        "predicate_auc": main["predicate_auc"],
        "baseline_predicate_auc": main["baseline_predicate_auc"],
        "reference_predicate_auc": main["ceiling_predicate_auc"],
        "predicate_auc_of_reference": main["predicate_auc_of_ceiling"],
        "baseline_predicate_auc_of_reference": main["baseline_predicate_auc_of_ceiling"],
        "predicate_test": main["predicate_test"],
        "all_live_units": _predicate_figures(rows, live),
        "labels_without_predicate": sum(bool(row.get("predicate_note")) for row in live_rows),
        "baseline_labels_without_predicate": len(
            {row["unit"] for row in live_rows if row.get("baseline_predicate_note")}
        ),
        "reference_stability": stability,
        "reference_changes": changes,
        "heldout_probes": {"scenes": heldout.count, "seed": heldout.seed},
        "reference_probes": {"scenes": PROBE_SCENES, "seed": PROBE_SEED},
        "selective_auc": SELECTIVE_AUC,
        "weak_auc": WEAK_AUC,
    }


def figures_text(figures: Mapping[str, Any]) -> str:
    """The headline figures as a few lines of text."""

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def test(found: Mapping[str, Any] | None) -> str:
        if not found or not found["n"]:
            return ""
        p_value = "-" if found["p_value"] is None else f"{found['p_value']:.2g}"
        return (
            f"; LINE - baseline {found['mean_difference']:+.3f}, {found['test']} p={p_value} "
            f"(n={found['n']}, {found['differing']} differ)"
        )

    lines = []
    if "live_units" in figures:
        probes = figures["heldout_probes"]
        lines.append(
            f"predicate AUC on {probes['scenes']} held-out scenes (seed {probes['seed']}, "
            f"disjoint from the dissection's), {figures['live_units_with_reference']} live units "
            f"with a reference: LINE {number(figures['predicate_auc'])}, vocab baseline "
            f"{number(figures['baseline_predicate_auc'])}, reference "
            f"{number(figures['reference_predicate_auc'])} (LINE "
            f"{number(figures['predicate_auc_of_reference'])} of it)"
            + test(figures["predicate_test"])
        )
        every = figures["all_live_units"]
        lines.append(
            f"predicate AUC, all {every['units']} live units: LINE {number(every['predicate_auc'])}"
            f", vocab baseline {number(every['baseline_predicate_auc'])}, reference or best "
            f"candidate {number(every['ceiling_predicate_auc'])}" + test(every["predicate_test"])
        )
        lines.append(
            f"labels without an informative predicate (scored 0.5): LINE "
            f"{figures['labels_without_predicate']}, vocab baseline "
            f"{figures['baseline_labels_without_predicate']}"
        )
    lines.append(
        f"exact recovery ({figures['units_with_reference']} units with a reference): LINE "
        f"{number(figures['recovery'])}, vocab baseline {number(figures['baseline_recovery'])}; "
        f"attribute Jaccard: LINE {number(figures['attribute_jaccard'])}, vocab baseline "
        f"{number(figures['baseline_attribute_jaccard'])}"
    )
    weak = figures["weak_verdicts"]
    live = (
        f" ({number(figures['verdict_agreement_live'])} over the "
        f"{figures['verdict_agreement_live_runs']} live ones)"
        if "verdict_agreement_live" in figures
        else ""
    )
    lines.append(
        f"verdict agreement: {number(figures['verdict_agreement'])} over "
        f"{figures['verdict_agreement_runs']} non-weak units x repeats{live}; "
        f"{figures['weak_references']} weak references (AUC {WEAK_AUC}-{SELECTIVE_AUC}), the run "
        f"called them selective {weak['selective']}, weak {weak['weak']}, none {weak['none']}"
    )
    if figures.get("reference_stability") is not None:
        lines.append(
            f"reference stability: {number(figures['reference_stability'])} of "
            f"{figures['units']} units keep their reference on the held-out probes "
            f"({len(figures['reference_changes'])} change)"
        )
    return "\n".join(lines)


def run_groundtruth_benchmark(
    out_dir: str | Path,
    target: str = TARGET,
    layer: str | None = None,
    llm: str = "offline:vocab",
    prompts: str = "paper",
    repeats: int = 1,
    llm_base_url: str | None = None,
    iterations: int | None = None,
    concurrency: int = 32,
    units: Sequence[int] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    embedder: SentenceEmbedder | None = None,
    baseline: bool = True,
    basis: str | None = None,
    heldout_scenes: int = PROBE_SCENES,
) -> dict[str, Any]:
    """Explain a toy-world layer's units ``repeats`` times and score every label against the
    truth (module docstring).

    ``target`` and ``layer`` default to ``planted:shapes``'s planted units; any other toy-world
    layer is scored against its dissection reference. ``iterations`` overrides the variant's
    budget; with the offline proposer it defaults to the demo's (enough to try every single
    attribute, then combinations). On a layer scored against dissection references, plain
    ``offline:vocab`` walks every toy attribute (:func:`write_attribute_vocabulary`, written into
    ``out_dir``; backgrounds and ``plain`` included, which the demo's vocabulary lacks) for
    :data:`ATTRIBUTE_ITERATIONS` rounds, and the baseline scores the same vocabulary.
    ``units`` picks units (default: all of the layer).
    ``baseline`` also labels the units with the vocabulary baseline. ``basis`` (a toy basis,
    ``line toyworld bases``) explains its latents instead, scored against their known concepts.
    ``heldout_scenes``: the size of the held-out probe set the labels' predicates are tested on
    (toy-world layers; not with ``basis``).
    Writes ``groundtruth.csv``, ``groundtruth-summary.csv`` and ``summary.json`` into
    ``out_dir`` and returns ``{"out", "runs", "rows", "summary", "rows_csv", "summary_csv",
    "summary_json" (the three files), "figures" (what ``summary.json`` holds), "recovery" (kind
    -> rate, mean over repeats), "baseline_recovery" (kind -> rate), "verdict_agreement" (units
    whose reference is not weak), "false_claim_rate"}``.
    Raises ``RunSetupError`` (a ``ValueError``) with what to change when the run cannot start.
    """
    if repeats < 1:
        raise RunSetupError(f"--repeats must be at least 1 (got {repeats})")
    if heldout_scenes < 1:
        raise RunSetupError(f"--heldout-scenes must be at least 1 (got {heldout_scenes})")
    layer, truths = reference_truths(target, layer, units, basis)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    planted = target == TARGET and layer in (PLANTED_LAYER, INHIBITED_LAYER)
    dissected = basis is None and not planted
    if llm == "offline:vocab" and dissected:
        # a dissection reference can be any toy attribute (backgrounds, "plain", sizes): LINE
        # and the baseline get the vocabulary the references are drawn from
        llm = f"offline:vocab:{write_attribute_vocabulary(out / ATTRIBUTE_VOCABULARY_FILE)}"
        iterations = ATTRIBUTE_ITERATIONS if iterations is None else iterations
    if iterations is None and llm.startswith("offline:"):
        iterations = DEMO_OFFLINE_ITERATIONS
    runs: list[tuple[list[dict], RunFolder]] = []
    for repeat in range(repeats):
        results, folder = _repeat_run(
            out / f"repeat-{repeat + 1}",
            repeat,
            target,
            sorted(truths),
            layer,
            llm,
            llm_base_url,
            prompts,
            iterations,
            concurrency,
            on_progress,
            basis,
        )
        runs.append((results, folder))
    # after the runs: their settings checks (the LLM spec among them) come first
    vocabulary = parse_llm_spec(llm).vocab_path or DEFAULT_VOCABULARY_PATH
    baseline_labels = (
        vocabulary_labels(target, layer, sorted(truths), prompts, vocabulary, basis=basis)
        if baseline
        else None
    )
    heldout = None if basis else HeldOutProbes.read(target, layer, heldout_scenes)
    weak_band = not planted  # dissection references
    rows: list[dict] = []
    for repeat, (results, folder) in enumerate(runs, start=1):
        rows += score_run_rows(
            results, folder, truths, repeat, embedder, baseline_labels, heldout, weak_band
        )
    summary = summarize_groundtruth(rows)
    three_way = any(row.get("verdict") not in (None, "") for results, _ in runs for row in results)
    figures = {
        "target": target,
        "layer": layer,
        "llm": llm,
        **groundtruth_figures(rows, summary, heldout, three_way),
    }
    rows_csv, summary_csv = out / "groundtruth.csv", out / "groundtruth-summary.csv"
    summary_json = out / "summary.json"
    write_rows(rows_csv, rows, ROW_COLUMNS)
    write_rows(summary_csv, summary, SUMMARY_COLUMNS)
    summary_json.write_text(json.dumps(figures, indent=2) + "\n")
    by_kind = {row["kind"]: row for row in summary}
    return {
        "out": out,
        "runs": [folder.path for _results, folder in runs],
        "rows": rows,
        "summary": summary,
        "figures": figures,
        "rows_csv": rows_csv,
        "summary_csv": summary_csv,
        "summary_json": summary_json,
        "recovery": {kind: row["recovery"] for kind, row in by_kind.items() if kind != "none"},
        "baseline_recovery": {
            kind: row["baseline_recovery"] for kind, row in by_kind.items() if kind != "none"
        },
        "verdict_agreement": figures["verdict_agreement"],
        "false_claim_rate": by_kind["none"]["false_claims"] if "none" in by_kind else None,
    }


def summary_table(summary: list[dict]) -> str:
    """The per-kind table as aligned text."""
    header = [
        "kind",
        "units",
        "runs",
        "recovered",
        "range",
        "vocab baseline",
        "jaccard",
        "vocab jaccard",
        "predicate AUC",
        "vocab AUC",
        "similarity",
        "groups",
        "verdict right",
        "false claims",
    ]

    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    table = [header]
    for row in summary:
        spread = (
            "-"
            if row["recovery_min"] is None or row["recovery_min"] == row["recovery_max"]
            else f"{row['recovery_min']:.2f}-{row['recovery_max']:.2f}"
        )
        table.append(
            [
                row["kind"],
                str(row["units"]),
                str(row["runs"]),
                number(row["recovery"]),
                spread,
                number(row["baseline_recovery"]),
                number(row["attribute_jaccard"]),
                number(row["baseline_attribute_jaccard"]),
                number(row["predicate_auc"], 3),
                number(row["baseline_predicate_auc"], 3),
                number(row["similarity"]),
                number(row["groups"], 1),
                number(row["verdict_agreement"]),
                number(row["false_claims"]),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
