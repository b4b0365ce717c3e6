"""The ground-truth benchmark: explain toy-world units whose concepts are known, score each label.

``line eval groundtruth`` runs the agent on units of a toy-world target (R times, with run seeds
0..R-1) and scores each final label with :func:`analysis.groundtruth.score_label`. The truth is
the planted concept for the planted units of ``planted:shapes``, and the dissection reference
(:mod:`inference.toyworld.dissection`) for every other toy-world layer, ``learned:shapes``'s
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
  the false-claim rate.
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.launch import (
    DEMO_OFFLINE_ITERATIONS,
    RunSetupError,
    execute_run,
    read_basis,
    settings_from_options,
)
from agent.offline import DEFAULT_VOCABULARY_PATH
from agent.providers import parse_llm_spec
from agent.run_folder import RunFolder
from agent.runner import RunProgress
from analysis.groundtruth import KINDS, GroundTruth, score_label
from analysis.polysemanticity import history_polysemanticity
from analysis.similarity import SentenceEmbedder
from evals.baseline import read_vocabulary, vocabulary_baseline
from inference.bases import out_of_range, split_unit_space
from inference.toyworld.dissection import (
    DissectionError,
    cached_dissection,
    load_toy_world_target,
)
from inference.toyworld.latents import toy_basis_truth
from inference.toyworld.truth import PLANTED_LAYER, PlantedUnit, planted_ground_truth
from prompts.variant import load_variant
from tools.server_session import server_session

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
    "verdict_right",
    "baseline_label",
    "baseline_recovered",
    "groups",
    "group_concepts",
]
SUMMARY_COLUMNS = [
    "kind",
    "units",
    "runs",
    "recovery",
    "recovery_min",
    "recovery_max",
    "baseline_recovery",
    "similarity",
    "groups",
    "verdict_agreement",
    "false_claims",
]


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


def score_run_rows(
    rows: list[dict],
    folder: RunFolder,
    truths: Mapping[int, GroundTruth | PlantedUnit],
    repeat: int,
    embedder: SentenceEmbedder | None = None,
    baseline: Mapping[int, str] | None = None,
) -> list[dict]:
    """Score the results rows of one run folder against the truths (keyed by unit); a unit's
    label is claimed when the run's verdict calls it selective."""
    out = []
    for row in rows:
        unit = int(row["unit"])
        truth = GroundTruth.of(truths[unit])
        history = folder.read_history(row["layer"], unit) or {}
        entries = history.get("entries") or []
        done = row["status"] == "done"
        label = row["label"] if done else ""
        score = row["score"] if done and row["score"] not in ("", None) else None
        scored = score_label(
            label,
            truth,
            embedder,
            score=None if score is None else float(score),
            history_scores=[entry["score"] for entry in entries] if done else None,
        )
        groups = history_polysemanticity(history, embedder=embedder)
        selective = row.get("selective")
        claimed = None if selective in (None, "") else done and selective in (True, "True")
        baseline_label = (baseline or {}).get(unit)
        baseline_recovered = (
            None
            if baseline_label is None
            else score_label(baseline_label, truth, embedder).recovered
        )
        out.append(
            {
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
                "verdict_right": None if claimed is None else claimed == (truth.kind != "none"),
                "baseline_label": baseline_label,
                "baseline_recovered": baseline_recovered,
                "groups": groups.count,
                "group_concepts": groups.summary(),
            }
        )
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (``None`` when there are none)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize_groundtruth(rows: list[dict]) -> list[dict]:
    """Per kind (then ``all`` units with a concept): recovery as the mean over repeats of each
    repeat's rate (with its min and max), mean similarity and groups, false-claim rate."""
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
        out.append(
            {
                "kind": kind,
                "units": len({row["unit"] for row in chosen}),
                "runs": len(chosen),
                "recovery": _mean(per_repeat),
                "recovery_min": min(per_repeat) if per_repeat else None,
                "recovery_max": max(per_repeat) if per_repeat else None,
                "baseline_recovery": _mean([row.get("baseline_recovered") for row in chosen]),
                "similarity": _mean([row["similarity"] for row in chosen]),
                "groups": _mean([row["groups"] for row in chosen]),
                "verdict_agreement": _mean([row.get("verdict_right") for row in chosen]),
                "false_claims": _mean(claims) if kind == "none" else None,
            }
        )
    return out


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, float) and math.isfinite(value):
            return round(value, 6)
        return value

    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: cell(row.get(key)) for key in columns} for row in rows)


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
) -> dict[str, Any]:
    """Explain a toy-world layer's units ``repeats`` times and score every label against the
    truth (module docstring).

    ``target`` and ``layer`` default to ``planted:shapes``'s planted units; any other toy-world
    layer is scored against its dissection reference. ``iterations`` overrides the variant's
    budget; with the offline proposer it defaults to the demo's (enough to try every single
    attribute, then combinations). ``units`` picks units (default: all of the layer).
    ``baseline`` also labels the units with the vocabulary baseline. ``basis`` (a toy basis,
    ``line toyworld bases``) explains its latents instead, scored against their known concepts.
    Writes ``groundtruth.csv``
    and ``groundtruth-summary.csv`` into ``out_dir`` and returns ``{"out", "runs", "rows",
    "summary", "rows_csv", "summary_csv" (the two files), "recovery" (kind -> rate, mean over
    repeats), "baseline_recovery" (kind -> rate), "verdict_agreement", "false_claim_rate"}``.
    Raises ``RunSetupError`` (a ``ValueError``) with what to change when the run cannot start.
    """
    if repeats < 1:
        raise RunSetupError(f"--repeats must be at least 1 (got {repeats})")
    layer, truths = reference_truths(target, layer, units, basis)
    if iterations is None and llm.startswith("offline:"):
        iterations = DEMO_OFFLINE_ITERATIONS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    rows: list[dict] = []
    for repeat, (results, folder) in enumerate(runs, start=1):
        rows += score_run_rows(results, folder, truths, repeat, embedder, baseline_labels)
    summary = summarize_groundtruth(rows)
    rows_csv, summary_csv = out / "groundtruth.csv", out / "groundtruth-summary.csv"
    _write_csv(rows_csv, ROW_COLUMNS, rows)
    _write_csv(summary_csv, SUMMARY_COLUMNS, summary)
    by_kind = {row["kind"]: row for row in summary}
    return {
        "out": out,
        "runs": [folder.path for _results, folder in runs],
        "rows": rows,
        "summary": summary,
        "rows_csv": rows_csv,
        "summary_csv": summary_csv,
        "recovery": {kind: row["recovery"] for kind, row in by_kind.items() if kind != "none"},
        "baseline_recovery": {
            kind: row["baseline_recovery"] for kind, row in by_kind.items() if kind != "none"
        },
        "verdict_agreement": _mean([row.get("verdict_right") for row in rows]),
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
