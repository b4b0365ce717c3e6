"""The iteration analysis: how a run's best score and its final labels arrive step by step.

A neuron's history is a list of scored concepts, each with the step that tried it: ``0`` for the
seed concepts (control-set classes), ``1..N`` for the proposal rounds (the agentic strategy's
measured concepts) and the summary step ``S`` last. Per step, over the finished neurons of one
or more runs:

* ``relative_best``: the best score so far divided by the neuron's final best, averaged over
  neurons (1 at the last step; neurons whose final best is not positive are left out, since the
  ratio means nothing there, and neurons with nothing measured yet do not count at that step);
* ``discovery_rate``: the share of neurons whose final label was first tried at that step.

The paper plots both for 10 rounds (its Figures 5 and 6); ``line run --iterations 20`` extends
the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from agent.record import ConceptEntry, NeuronRecord
from agent.run_folder import EvaluationFiles, RunFolder
from evals.tables import markdown_table, text_table, write_rows

SEED_STEP = "0"
SUMMARY_STEP = "S"
COLUMNS = [
    ("run", "run"), ("step", "step"), ("neurons", "neurons"),
    ("relative_best", "relative best so far"), ("discovered", "labels found"),
    ("discovery_rate", "discovery rate"),
]  # fmt: skip


@dataclass(frozen=True)
class NeuronSteps:
    """One finished neuron: the best score up to each step and the step its label was found."""

    best_by_step: dict[str, float]  # step -> best score so far (only steps with a score so far)
    final_best: float
    found_at: str


def step_of(entry: ConceptEntry) -> str:
    """The step of a record's entry: ``S`` for the summary, else its iteration (``0``: seeds)."""
    return SUMMARY_STEP if entry.source == "summary" else str(int(entry.iteration))


def step_order(rounds: int, seeded: bool) -> list[str]:
    """The steps in order: ``0`` when seeded, ``1..rounds``, then ``S``."""
    return [SEED_STEP] * seeded + [str(i) for i in range(1, rounds + 1)] + [SUMMARY_STEP]


def step_rank(step: str) -> tuple[bool, int]:
    """Sort key of a step: seeds and rounds by number, the summary last."""
    return (step == SUMMARY_STEP, 0 if step == SUMMARY_STEP else int(step))


def neuron_steps(record: NeuronRecord, steps: Sequence[str]) -> NeuronSteps | None:
    """The steps of a finished neuron's record (``None`` unless done, labelled and measured)."""
    label = record.label
    entries = record.entries
    if record.status != "done" or not label or not entries:
        return None
    scores: dict[str, list[float]] = {}
    found_at = None
    for entry in entries:
        scores.setdefault(step_of(entry), []).append(entry.score)
        if found_at is None and entry.concept == label:
            found_at = step_of(entry)
    best_by_step: dict[str, float] = {}
    best = -math.inf
    for step in steps:
        best = max([best, *scores.get(step, [])])
        if best > -math.inf:
            best_by_step[step] = best
    return NeuronSteps(best_by_step, best, found_at or SUMMARY_STEP)


def iteration_rows(
    histories: Sequence[NeuronRecord], run: str = ""
) -> tuple[list[dict], list[str]]:
    """Per step of the histories (one run, or several pooled): neurons counted, mean relative
    best so far, labels found at that step and the discovery rate; plus notes on neurons left
    out."""
    rounds = max(
        (int(e.iteration) for h in histories for e in h.entries if step_of(e) != "S"),
        default=0,
    )
    seeded = any(step_of(e) == SEED_STEP for h in histories for e in h.entries)
    steps = step_order(rounds, seeded)
    neurons = [n for n in (neuron_steps(h, steps) for h in histories) if n is not None]
    notes = []
    if len(neurons) < len(histories):
        notes.append(f"{len(histories) - len(neurons)} neurons not finished or unlabelled")
    positive = [n for n in neurons if n.final_best > 0]
    if len(positive) < len(neurons):
        notes.append(
            f"{len(neurons) - len(positive)} neurons whose final best score is not positive are "
            "left out of the relative best score"
        )
    rows = []
    for step in steps:
        ratios = [n.best_by_step[step] / n.final_best for n in positive if step in n.best_by_step]
        found = sum(n.found_at == step for n in neurons)
        rows.append(
            {
                "run": run,
                "step": step,
                "neurons": len(ratios),
                "relative_best": float(np.mean(ratios)) if ratios else math.nan,
                "discovered": found,
                "discovery_rate": found / len(neurons) if neurons else math.nan,
            }
        )
    return rows, notes


def run_histories(folder: RunFolder) -> list[NeuronRecord]:
    """Every neuron record of a run with results (a clear error for one without)."""
    settings = folder.read_settings()
    if not folder.results_csv.is_file():
        raise ValueError(
            f"{folder.path} has no {folder.results_csv.name} yet; finish the run first "
            f"(line run --resume {folder.path})"
        )
    histories = [folder.read_record(settings.layer, unit) for unit in settings.units]
    found = [history for history in histories if history is not None]
    if not found:
        raise ValueError(f"{folder.path} holds no neuron history; finish the run first")
    return found


def analyse_runs(paths: Sequence[Path]) -> list[tuple[Path, list[dict], list[str]]]:
    """The iteration rows and notes of every run, each named by its path as given."""
    analysed = []
    for path in paths:
        rows, notes = iteration_rows(run_histories(RunFolder(path)), str(path))
        analysed.append((path, rows, notes))
    return analysed


def plot_iterations(rows: Sequence[dict], path: Path) -> None:
    """Two panels: relative best score so far per step (a line per run) and the discovery rate
    per step (bars per run)."""
    runs = list(dict.fromkeys(row["run"] for row in rows))
    steps = sorted({row["step"] for row in rows}, key=step_rank)
    figure = Figure(figsize=(10, 4), dpi=120)
    left, right = figure.subplots(1, 2)
    width = 0.8 / max(len(runs), 1)
    for index, run in enumerate(runs):
        by_step = {row["step"]: row for row in rows if row["run"] == run}
        x = [steps.index(step) for step in by_step]
        left.plot(x, [row["relative_best"] for row in by_step.values()], marker="o", label=run)
        offsets = [i - 0.4 + width * (index + 0.5) for i in x]
        right.bar(offsets, [row["discovery_rate"] for row in by_step.values()], width, label=run)
    for axes, ylabel in ((left, "best score so far / final best"), (right, "share of labels")):
        axes.set_xticks(range(len(steps)), steps, fontsize=10 if len(steps) <= 12 else 7)
        axes.set_xlabel("step (S: summary)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, axis="y")
        if len(runs) > 1:
            axes.legend()
    left.set_title("Relative best score so far")
    right.set_title("Step at which the final label was found")
    figure.tight_layout()
    figure.savefig(path)


def write_iterations(rows: Sequence[dict], notes: Sequence[str], out: RunFolder) -> EvaluationFiles:
    """``iterations.csv``, ``iterations.md`` and ``iterations.png`` under ``out``."""
    files = out.evaluation("iterations")
    out.path.mkdir(parents=True, exist_ok=True)
    write_rows(files.csv, rows, [key for key, _ in COLUMNS])
    lines = [markdown_table(rows, COLUMNS, digits=3)]
    lines += [f"Note: {text}." for text in notes]
    files.summary.write_text("\n".join(lines) + "\n")
    plot_iterations(rows, files.figure)
    return files


def iterations_text(rows: Sequence[dict]) -> str:
    """The rows for the terminal."""
    return text_table(rows, COLUMNS)
