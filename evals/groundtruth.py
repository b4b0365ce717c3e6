"""The ground-truth benchmark: explain the toy world's planted units, score each label.

``line eval groundtruth`` runs the agent on every planted unit of ``planted:shapes`` (R times,
with run seeds 0..R-1), scores each final label with :func:`analysis.groundtruth.score_label` and
counts each neuron's high-scoring meanings (:mod:`analysis.polysemanticity`). The output folder
holds one run folder per repeat (``repeat-1/``, ...; an existing one is resumed) and

- ``groundtruth.csv``: one row per (repeat, unit): truth, label, score, attribute match,
  similarity, normalised score, claimed, recovered, groups;
- ``groundtruth-summary.csv``: one row per unit kind (single, and, or, count, none, then
  ``all`` for the units with a concept): recovery rate (mean over repeats), mean similarity,
  mean number of groups, and for ``none`` the false-claim rate.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.launch import (
    DEMO_OFFLINE_ITERATIONS,
    RunSetupError,
    execute_run,
    parse_units,
    settings_from_options,
)
from analysis.groundtruth import KINDS, GroundTruth, score_label
from analysis.polysemanticity import history_polysemanticity
from analysis.similarity import EmbedderUnavailable
from inference.toyworld.truth import planted_ground_truth

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
    "similarity",
    "groups",
    "false_claims",
]


def _planted_units(units: Sequence[int] | None):

    truth = {unit.unit: unit for unit in planted_ground_truth()}
    if units is None:
        return list(truth.values())
    unknown = sorted(set(units) - set(truth))
    if unknown:
        raise ValueError(
            f"planted:shapes has no planted unit {unknown[0]}; planted units are 0 to "
            f"{max(truth)} (see `line toyworld truth`)"
        )
    return [truth[unit] for unit in sorted(set(units))]


def _repeat_run(
    path: Path,
    repeat: int,
    units: list[int],
    layer: str,
    llm: str,
    llm_base_url: str | None,
    prompts: str,
    iterations: int | None,
    concurrency: int,
    on_progress: Callable | None,
):
    """Run (or resume) one repeat; returns (rows, folder)."""

    options: dict[str, Any] = dict(
        target=None, layer=None, units=None, generator=None, llm=None, llm_base_url=None,
        prompts=prompts, out=None, server=None, concurrency=concurrency, seed=repeat,
        temperature=None, iterations=None, resume=None,
    )  # fmt: skip
    if (path / "config.json").is_file():
        settings, folder = settings_from_options(**{**options, "resume": path})
        wanted = (TARGET, layer, units, llm, prompts, repeat)
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
            **{
                **options,
                "target": TARGET,
                "layer": layer,
                "units": ",".join(map(str, units)),
                "generator": GENERATOR,
                "llm": llm,
                "llm_base_url": llm_base_url,
                "out": path,
                "iterations": iterations,
            }
        )
    return execute_run(settings, folder, device="cpu", on_progress=on_progress), folder


def score_run_rows(
    rows: list[dict], folder, truths: dict[int, Any], repeat: int, embedder=None
) -> list[dict]:
    """Score the results rows of one run folder against the truths (keyed by unit)."""
    out = []
    for row in rows:
        unit = int(row["unit"])
        truth = GroundTruth.of(truths[unit])
        path = folder.history_path(row["layer"], unit)
        history = json.loads(path.read_text()) if path.is_file() else {}
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
                "claimed": scored.claimed,
                "recovered": scored.recovered,
                "groups": groups.count,
                "group_concepts": groups.summary(),
            }
        )
    return out


def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


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
        per_repeat = [
            _mean([row["recovered"] for row in chosen if row["repeat"] == repeat])
            for repeat in repeats
        ]
        per_repeat = [rate for rate in per_repeat if rate is not None]
        claims = [
            _mean([row["claimed"] for row in chosen if row["repeat"] == repeat])
            for repeat in repeats
        ]
        claims = [rate for rate in claims if rate is not None]
        out.append(
            {
                "kind": kind,
                "units": len({row["unit"] for row in chosen}),
                "runs": len(chosen),
                "recovery": _mean(per_repeat),
                "recovery_min": min(per_repeat) if per_repeat else None,
                "recovery_max": max(per_repeat) if per_repeat else None,
                "similarity": _mean([row["similarity"] for row in chosen]),
                "groups": _mean([row["groups"] for row in chosen]),
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
    llm: str = "offline:vocab",
    prompts: str = "paper",
    repeats: int = 1,
    llm_base_url: str | None = None,
    iterations: int | None = None,
    concurrency: int = 32,
    units: Sequence[int] | None = None,
    on_progress: Callable | None = None,
    embedder=None,
) -> dict[str, Any]:
    """Explain the planted units ``repeats`` times and score every label against the truth.

    ``iterations`` overrides the variant's budget; with the offline proposer it defaults to the
    demo's (enough to try every single attribute, then combinations). ``units`` picks planted
    units (default: all 28). Returns ``{"out", "runs", "rows", "summary", "recovery"
    (kind -> rate, mean over repeats), "false_claim_rate"}`` and writes ``groundtruth.csv`` and
    ``groundtruth-summary.csv`` into ``out_dir``. Raises ``agent.launch.RunSetupError`` (a
    ``ValueError``) with what to change when the run cannot start.
    """

    if repeats < 1:
        raise RunSetupError(f"--repeats must be at least 1 (got {repeats})")
    try:
        planted = _planted_units(units)
    except ValueError as error:
        raise RunSetupError(str(error)) from error
    if iterations is None and llm.startswith("offline:"):
        iterations = DEMO_OFFLINE_ITERATIONS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truths = {unit.unit: unit for unit in planted}
    layer = planted[0].layer
    rows: list[dict] = []
    runs: list[Path] = []
    for repeat in range(repeats):
        results, folder = _repeat_run(
            out / f"repeat-{repeat + 1}",
            repeat,
            sorted(truths),
            layer,
            llm,
            llm_base_url,
            prompts,
            iterations,
            concurrency,
            on_progress,
        )
        runs.append(folder.path)
        rows += score_run_rows(results, folder, truths, repeat + 1, embedder)
    summary = summarize_groundtruth(rows)
    _write_csv(out / "groundtruth.csv", ROW_COLUMNS, rows)
    _write_csv(out / "groundtruth-summary.csv", SUMMARY_COLUMNS, summary)
    by_kind = {row["kind"]: row for row in summary}
    return {
        "out": out,
        "runs": runs,
        "rows": rows,
        "summary": summary,
        "recovery": {kind: row["recovery"] for kind, row in by_kind.items() if kind != "none"},
        "false_claim_rate": by_kind["none"]["false_claims"] if "none" in by_kind else None,
    }


def summary_table(summary: list[dict]) -> str:
    """The per-kind table as aligned text."""
    header = ["kind", "units", "runs", "recovered", "range", "similarity", "groups", "false claims"]

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
                number(row["similarity"]),
                number(row["groups"], 1),
                number(row["false_claims"]),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _progress(quiet: bool, repeats: int):
    """A tqdm bar per repeat (None when quiet)."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None, "repeat": 0}

    def update(progress) -> None:
        bar = state["bar"]
        if bar is None or progress.total != bar.total or progress.done + progress.failed < bar.n:
            if bar is not None:
                bar.close()
            state["repeat"] += 1
            bar = state["bar"] = tqdm(
                total=progress.total,
                unit="neuron",
                desc=f"repeat {state['repeat']}/{repeats}",
                dynamic_ncols=True,
            )
        bar.n = progress.done + progress.failed
        bar.set_postfix(images=progress.images, failed=progress.failed)
        if bar.n >= bar.total:
            bar.close()
            state["bar"] = None

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def groundtruth_command(
    llm: Annotated[
        str,
        typer.Option(help="provider:model, openai-compatible:<model>, or offline:vocab."),
    ] = "offline:vocab",
    llm_base_url: Annotated[
        str | None, typer.Option(help="Base URL for openai-compatible servers.")
    ] = None,
    prompts: Annotated[str, typer.Option(help="Prompt variant name or folder.")] = "paper",
    repeats: Annotated[int, typer.Option(help="Runs of every unit (seeds 0..R-1).")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: runs/groundtruth-<time>]; resumes repeats."),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Override the variant's (offline:vocab: 28).")
    ] = None,
    units: Annotated[
        str | None, typer.Option(help="Planted units, e.g. 0-3,7 [default: all 28].")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Neurons explained at once.")] = 32,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Ground-truth benchmark: explain the toy world's planted units, score labels vs truth."""

    out = out or Path("runs") / f"groundtruth-{datetime.now():%Y%m%d-%H%M%S}"
    update, close = _progress(quiet, repeats)
    try:
        unit_list = parse_units(units) if units else None
        result = run_groundtruth_benchmark(
            out,
            llm=llm,
            prompts=prompts,
            repeats=repeats,
            llm_base_url=llm_base_url,
            iterations=iterations,
            concurrency=concurrency,
            units=unit_list,
            on_progress=update,
        )
    except (RunSetupError, EmbedderUnavailable) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    finally:
        close()
    typer.echo(summary_table(result["summary"]))
    typer.echo(
        "recovered: the label names exactly the truth's attributes; similarity: "
        "all-MiniLM-L6-v2 cosine with the truth; groups: distinct high-scoring meanings; "
        "false claims: no-concept units labelled with a standout score (modified z >= 3.5)"
    )
    typer.echo(f"rows: {result['out'] / 'groundtruth.csv'}")
    typer.echo(f"summary: {result['out'] / 'groundtruth-summary.csv'}")
