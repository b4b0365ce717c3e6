"""Comparing prompt variants, LLMs and generators: every neuron under every arm, repeated.

An arm is a (variant, LLM, generator) triple. Every arm runs every neuron ``repeats`` times
(repeat k uses run seed k) against one shared server that holds every arm's generator, so
identical image requests across arms render once.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from scipy import stats

from agent.run_folder import RunFolder
from analysis.groundtruth import attribute_match
from evals.tables import markdown_table, present_columns, write_rows
from tools.client import InferenceClient
from toyworld.truth import planted_ground_truth


@dataclass(frozen=True)
class Arm:
    """One configuration under comparison (``generator`` empty: the command's one generator)."""

    variant: str
    llm: str
    generator: str = ""

    @property
    def name(self) -> str:
        """``variant / llm[ / generator]``."""
        return " / ".join(part for part in (self.variant, self.llm, self.generator) if part)

    @property
    def slug(self) -> str:
        """The arm's name as a folder name."""
        parts = (self.variant, self.llm, *([self.generator] if self.generator else []))
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(parts))


@dataclass
class ArmRun:
    """One repeat of one arm: its rows and wall time."""

    arm: Arm
    repeat: int
    folder: Path
    rows: list[dict]
    wall_s: float
    extra: dict[int, dict] = field(default_factory=dict)  # unit -> cosy / ground truth figures


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-interval ``(mean, low, high)``; the interval is the mean itself for n < 2."""
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if data.size < 2:
        return (mean, mean, mean)
    half = float(
        stats.t.ppf(0.5 + level / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size)
    )
    return (mean, mean - half, mean + half)


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Wilcoxon signed-rank over paired values: ``(statistic, two-sided p)``.

    All-zero differences give ``(0, 1)``: no evidence of a difference.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    if x.size == 0 or np.allclose(x - y, 0):
        return (0.0, 1.0)
    result = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return (float(result.statistic), float(result.pvalue))


def per_neuron_means(runs: Sequence[ArmRun], key: str) -> dict[int, float]:
    """A metric averaged over repeats, per unit (finished neurons only)."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for row in run.rows:
            value = row_value(run, row, key)
            if value is not None:
                values.setdefault(int(row["unit"]), []).append(value)
    return {unit: float(np.mean(v)) for unit, v in values.items()}


def row_value(run: ArmRun, row: dict, key: str) -> float | None:
    """A row's metric: a results column, or a figure from ``extra`` (cosy, ground truth)."""
    if row.get("status") != "done":
        return None
    if key in row and row[key] not in ("", None):
        return float(row[key])
    figure = run.extra.get(int(row["unit"]), {}).get(key)
    return None if figure is None else float(figure)


def summarize(runs_by_arm: dict[Arm, list[ArmRun]]) -> list[dict]:
    """One table row per arm: means with 95% CIs and costs per neuron."""
    table = []
    for arm, runs in runs_by_arm.items():
        row: dict[str, object] = {"arm": arm.name, "variant": arm.variant, "llm": arm.llm}
        if arm.generator:
            row["generator"] = arm.generator
        all_rows = [(run, r) for run in runs for r in run.rows]
        done = [(run, r) for run, r in all_rows if r["status"] == "done"]
        row["neurons"] = len({int(r["unit"]) for _, r in all_rows})
        row["repeats"] = len(runs)
        row["done"] = f"{len(done)}/{len(all_rows)}"
        for key in ("score", "auc", "mad", "match"):
            figures = (row_value(run, r, key) for run, r in done)
            values = [v for v in figures if v is not None]
            if values:
                mean, low, high = mean_ci(values)
                row[key] = mean
                row[f"{key}_ci"] = (low, high)
        count = max(len(all_rows), 1)
        for key in ("llm_calls", "tokens", "images"):
            row[f"{key}_per_neuron"] = sum(int(r[key]) for _, r in all_rows) / count
        for key in ("llm_images", "edits"):  # a vision variant's costs: images sent, edits
            total = sum(int(r.get(key) or 0) for _, r in all_rows)
            if total:
                row[f"{key}_per_neuron"] = total / count
        row["wall_s_per_neuron"] = sum(run.wall_s for run in runs) / count
        wall = sum(run.wall_s for run in runs)
        row["images_per_s"] = sum(int(r["images"]) for _, r in all_rows) / wall if wall else None
        table.append(row)
    return table


def pairwise_tests(runs_by_arm: dict[Arm, list[ArmRun]], key: str = "score") -> list[dict]:
    """Paired Wilcoxon signed-rank tests between every two arms over the neurons both finished."""
    means = {arm: per_neuron_means(runs, key) for arm, runs in runs_by_arm.items()}
    rows = []
    for first, second in itertools.combinations(runs_by_arm, 2):
        shared = sorted(set(means[first]) & set(means[second]))
        a = [means[first][u] for u in shared]
        b = [means[second][u] for u in shared]
        statistic, p = paired_wilcoxon(a, b)
        rows.append(
            {
                "a": first.name,
                "b": second.name,
                "metric": key,
                "neurons": len(shared),
                "mean_difference": float(np.mean(np.subtract(a, b))) if shared else math.nan,
                "wilcoxon_w": statistic,
                "p": p,
            }
        )
    return rows


def best_so_far_curves(runs: Sequence[ArmRun]) -> np.ndarray:
    """Mean over neurons and repeats of the best score found up to each iteration."""
    curves = []
    for run in runs:
        folder = RunFolder(run.folder)
        for row in run.rows:
            record = folder.read_record(row["layer"], int(row["unit"]))
            entries = record.entries if record else []
            if not entries:
                continue
            first = min(entry.iteration for entry in entries)
            last = max(entry.iteration for entry in entries)
            curve, best = [math.nan] * first, -math.inf
            for iteration in range(first, last + 1):
                scores = [e.score for e in entries if e.iteration == iteration]
                best = max([best, *scores])
                curve.append(best if best > -math.inf else math.nan)
            curves.append(curve)
    if not curves:
        return np.zeros(0)
    width = max(len(curve) for curve in curves)
    padded = np.array([curve + [curve[-1]] * (width - len(curve)) for curve in curves], dtype=float)
    observed = ~np.isnan(padded)
    sums = np.where(observed, padded, 0.0).sum(axis=0)
    counts = observed.sum(axis=0)
    return np.divide(sums, counts, out=np.full(width, np.nan), where=counts > 0)


def plot_convergence(runs_by_arm: dict[Arm, list[ArmRun]], path: Path) -> None:
    """A PNG of the best score so far against iteration, one line per arm."""
    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    for arm, runs in runs_by_arm.items():
        curve = best_so_far_curves(runs)
        if curve.size:
            axes.plot(range(curve.size), curve, marker="o", markersize=3, label=arm.name)
    axes.set_xlabel("iteration")
    axes.set_ylabel("best score so far (mean over neurons)")
    axes.set_title("Convergence per arm")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def final_scores(runs: Sequence[ArmRun]) -> list[float]:
    """The final (best) score of every finished neuron of every repeat."""
    return [float(row["score"]) for run in runs for row in run.rows if row.get("status") == "done"]


def plot_scores(runs_by_arm: dict[Arm, list[ArmRun]], path: Path) -> None:
    """A PNG box plot of the best-score distribution (neurons x repeats) of each arm."""
    figure = Figure(figsize=(3 + 1.6 * len(runs_by_arm), 4), dpi=120)
    axes = figure.subplots()
    axes.boxplot([final_scores(runs) for runs in runs_by_arm.values()])
    axes.set_xticks(
        range(1, len(runs_by_arm) + 1), [arm.name.replace(" / ", "\n") for arm in runs_by_arm]
    )
    axes.set_ylabel("best score per neuron")
    axes.set_title("Best-score distribution per arm")
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path)


def label_rows(runs_by_arm: dict[Arm, list[ArmRun]]) -> list[dict]:
    """The labels of the same neurons side by side: one row per (unit, repeat), a column per
    arm (``label (score)``)."""
    table: dict[tuple[int, int], dict] = {}
    for arm, runs in runs_by_arm.items():
        for run in runs:
            for row in run.rows:
                key = (int(row["unit"]), run.repeat)
                cell = table.setdefault(key, {"unit": key[0], "repeat": key[1]})
                done = row.get("status") == "done"
                score = float(row["score"]) if done else math.nan
                cell[arm.name] = f"{row['label']} ({score:.3g})" if done else row.get("status")
    return [table[key] for key in sorted(table)]


@dataclass
class NeuronPanel:
    """One arm's label of a chosen neuron, its score and its most activating images."""

    arm: str
    label: str
    score: float
    images: list[Image.Image]


async def neuron_panels(
    client: InferenceClient,
    runs_by_arm: dict[Arm, list[ArmRun]],
    layer: str,
    unit: int,
    count: int = 4,
) -> list[NeuronPanel]:
    """For each arm's first repeat: the unit's label, score and the ``count`` images of the
    label that activated the unit most (fetched from the server)."""
    panels = []
    for arm, runs in runs_by_arm.items():
        record = RunFolder(runs[0].folder).read_record(layer, unit) if runs else None
        label = record.label if record else ""
        entry = next((e for e in record.entries if e.concept == label), None) if record else None
        if entry is None:
            panels.append(NeuronPanel(arm.name, "(no label)", math.nan, []))
            continue
        ranked = sorted(zip(entry.activations, entry.image_ids, strict=True), reverse=True)
        images = [
            Image.open(io.BytesIO(await client.image_png(image_id))).convert("RGB")
            for _, image_id in ranked[:count]
        ]
        panels.append(NeuronPanel(arm.name, label, entry.score, images))
    return panels


def plot_neuron_panels(panels: Sequence[NeuronPanel], unit: int, path: Path) -> None:
    """A PNG with a row per arm: its label and score for ``unit`` and its top images."""
    columns = max([len(panel.images) for panel in panels] + [1])
    figure = Figure(figsize=(1.8 * columns + 3.6, 1.9 * len(panels) + 0.5), dpi=120)
    grid = figure.subplots(
        len(panels), columns + 1, squeeze=False, gridspec_kw={"width_ratios": [2] + [1] * columns}
    )
    for row, panel in zip(grid, panels, strict=True):
        text = f"{panel.arm.replace(' / ', chr(10))}\n\n{panel.label}\nscore {panel.score:.3g}"
        row[0].text(0, 0.5, text, va="center", transform=row[0].transAxes)
        for axes, image in itertools.zip_longest(row[1:], panel.images):
            if image is not None:
                axes.imshow(image)
        for axes in row:
            axes.axis("off")
    figure.suptitle(f"unit {unit}: each arm's label and its most activating images")
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.05)
    figure.savefig(path)


SUMMARY_COLUMNS = [
    ("arm", "arm"), ("done", "done"), ("score", "score"), ("score_ci", "95% CI"),
    ("auc", "CoSy AUC"), ("mad", "CoSy MAD"), ("match", "GT recovery"),
    ("llm_calls_per_neuron", "LLM calls/neuron"), ("tokens_per_neuron", "tokens/neuron"),
    ("images_per_neuron", "images/neuron"), ("llm_images_per_neuron", "images to LLM/neuron"),
    ("edits_per_neuron", "edits/neuron"), ("wall_s_per_neuron", "wall s/neuron"),
    ("images_per_s", "images/s"),
]  # fmt: skip
PAIR_COLUMNS = [
    ("a", "a"), ("b", "b"), ("neurons", "neurons"), ("mean_difference", "mean difference"),
    ("wilcoxon_w", "Wilcoxon W"), ("p", "p"),
]  # fmt: skip


def markdown_report(table: list[dict], pairs: list[dict]) -> str:
    """The comparison as Markdown: the per-arm table and the pairwise tests."""
    report = markdown_table(table, present_columns(table, SUMMARY_COLUMNS))
    if pairs:
        report += "\n" + markdown_table(pairs, PAIR_COLUMNS)
    return report


def run_arms(
    arms: Sequence[Arm],
    repeats: int,
    out: Path,
    run_one: Callable[[Arm, int, Path], list[dict]],
) -> dict[Arm, list[ArmRun]]:
    """Run every arm ``repeats`` times through ``run_one(arm, repeat, folder) -> rows``."""
    runs: dict[Arm, list[ArmRun]] = {arm: [] for arm in arms}
    for repeat in range(repeats):
        for arm in arms:
            folder = out / "runs" / f"{arm.slug}__r{repeat}"
            started = time.monotonic()
            rows = run_one(arm, repeat, folder)
            runs[arm].append(ArmRun(arm, repeat, folder, rows, time.monotonic() - started))
    return runs


def add_cosy_figures(runs_by_arm: dict[Arm, list[ArmRun]], cosy: dict[Path, list[dict]]) -> None:
    """Put each run's CoSy rows (``cosy[run folder]``) into its ``extra`` as ``auc`` and ``mad``."""
    for runs in runs_by_arm.values():
        for run in runs:
            for row in cosy.get(run.folder, []):
                run.extra.setdefault(int(row["unit"]), {}).update(auc=row["auc"], mad=row["mad"])


def add_groundtruth_matches(runs_by_arm: dict[Arm, list[ArmRun]], target: str, layer: str) -> None:
    """On the toy world (``planted:shapes``), put each label's attribute match with the planted
    concept into its run's ``extra`` as ``match`` (1.0 or 0.0; units without a concept get none)."""
    if target != "planted:shapes":
        return
    truth = {unit.unit: unit for unit in planted_ground_truth() if unit.layer == layer}
    for runs in runs_by_arm.values():
        for run in runs:
            for row in run.rows:
                unit = truth.get(int(row["unit"]))
                matched = attribute_match(row["label"], unit) if unit else None
                if matched is not None:
                    run.extra.setdefault(int(row["unit"]), {})["match"] = float(matched)


COMPARISON_FILES = (
    "comparison.md", "comparison.csv", "pairwise.csv", "convergence.png", "scores.png",
    "labels.csv",
)  # fmt: skip


def neuron_figure_path(out: Path, unit: int) -> Path:
    """Where the chosen neuron's side-by-side figure goes."""
    return out / f"neuron-{unit}.png"


def write_comparison(runs_by_arm: dict[Arm, list[ArmRun]], out: Path) -> str:
    """Write the comparison into ``out`` (:data:`COMPARISON_FILES`: the Markdown report, the
    per-arm table, the pairwise tests, the convergence plot, the best-score box plot and every
    arm's labels side by side); returns the Markdown."""
    table = summarize(runs_by_arm)
    pairs = pairwise_tests(runs_by_arm, "score")
    report = markdown_report(table, pairs)
    markdown, table_csv, pairs_csv, convergence, scores, labels = (
        out / name for name in COMPARISON_FILES
    )
    write_rows(table_csv, table)
    write_rows(pairs_csv, pairs)
    write_rows(labels, label_rows(runs_by_arm))
    markdown.write_text(report)
    plot_convergence(runs_by_arm, convergence)
    plot_scores(runs_by_arm, scores)
    return report
