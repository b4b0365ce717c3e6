"""Comparing methods' labels with CoSy on the same neurons: the paper's main table.

Every method (a LINE run folder, or a labels file written by another tool) names labels for
neurons of one target. All of them are scored like ``line eval cosy`` scores one: with the
reference run's generator, run seed and CoSy template, the same control set, and the same images
for the same label (a label's images render once, whichever methods and neurons name it). The
table gives, per method and layer, the neurons scored, mean ± std of AUC and MAD and, with a
vocabulary, the share of labels outside it (the paper's "new concepts"); paired Wilcoxon tests
compare every two methods over the neurons both labelled.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from agent.run_folder import EvaluationFiles, RunFolder, RunSettings
from evals.baseline import concept_discovery
from evals.cosy_eval import (
    CosyNeuron,
    Notes,
    cosy_neurons,
    known_neurons,
    read_label_csv,
    score_neurons,
    search_seeds,
    summarize_cosy,
    target_layers,
    write_cosy_csv,
)
from evals.defaults import DEFAULT_COSY_TEMPLATE
from evals.tables import format_cell, markdown_table, text_table, write_rows
from evals.variants import paired_wilcoxon
from tools.client import InferenceClient
from tools.controlset import ControlSet

METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

TABLE_COLUMNS = [
    ("method", "method"), ("layer", "layer"), ("neurons", "neurons"), ("auc", "AUC"),
    ("mad", "MAD"), ("new_concepts", "new concepts"),
]  # fmt: skip
"""The comparison table as shown (``auc`` and ``mad`` are ``mean ± std``)."""
CSV_COLUMNS = ["method", "layer", "neurons", "auc_mean", "auc_std", "mad_mean", "mad_std",
               "new_concepts", "source"]  # fmt: skip
PAIR_COLUMNS = [
    ("layer", "layer"), ("metric", "metric"), ("a", "a"), ("b", "b"), ("neurons", "neurons"),
    ("mean_difference", "mean difference (a - b)"), ("wilcoxon_w", "Wilcoxon W"), ("p", "p"),
]  # fmt: skip


@dataclass
class Method:
    """One method's labels: from a LINE run folder (``run``) or a labels file."""

    name: str
    source: Path
    neurons: list[CosyNeuron]
    run: RunFolder | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class MethodComparison:
    """The CoSy rows of every method (``rows[name]``, one per scored label) and their tables."""

    methods: list[Method]
    rows: dict[str, list[dict]]
    table: list[dict]
    pairs: list[dict]


def parse_method_sources(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` specs as (name, path); names must be distinct and paths must exist."""
    sources: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path:
            raise ValueError(
                f"--labels {spec!r} needs a name and a path: NAME=PATH, e.g. line=runs/r50 or "
                "clip-dissect=cd.csv"
            )
        if not METHOD_NAME.fullmatch(name):
            raise ValueError(
                f"method name {name!r} must start with a letter or digit and hold only letters, "
                "digits and _ . + - (it names the method's files)"
            )
        if name in sources:
            raise ValueError(
                f"two --labels are named {name!r} ({sources[name]} and {path}); give each "
                "method its own name"
            )
        source = Path(path).expanduser()
        if not source.exists():
            raise FileNotFoundError(f"--labels {name}={path}: {path} does not exist")
        sources[name] = source
    if not sources:
        raise ValueError("name at least one method: --labels NAME=RUN_DIR|LABELS.csv")
    return list(sources.items())


def _run_method(name: str, path: Path, target: str | None) -> Method:
    folder = RunFolder(path)
    settings = folder.read_settings()
    if target is not None and settings.target != target:
        raise ValueError(
            f"{name}'s run {path} explains {settings.target}, not {target}; compare methods "
            "on one target"
        )
    if not folder.results_csv.is_file():
        raise ValueError(
            f"{name}'s run {path} has no {folder.results_csv.name} yet; finish it with "
            f"`line run --resume {path}`"
        )
    neurons, notes = cosy_neurons(folder)
    if not neurons:
        raise ValueError(
            f"{name}'s run {path} has no finished neuron with a label; finish it with "
            f"`line run --resume {path}`"
        )
    return Method(name, path, neurons, folder, notes)


def load_methods(sources: Sequence[tuple[str, Path]]) -> tuple[RunFolder, list[Method]]:
    """The reference run (the first LINE run folder among the sources: its target, generator,
    run seed and layer define the evaluation) and every method's labels."""
    reference_path = next((path for _, path in sources if path.is_dir()), None)
    if reference_path is None:
        raise ValueError(
            "name at least one LINE run folder (--labels line=RUN_DIR): its target, generator "
            "and seed define the evaluation, and labels files without a layer use its layer"
        )
    reference = RunFolder(reference_path)
    target = reference.read_settings().target
    methods = []
    for name, path in sources:
        if path.is_dir():
            methods.append(_run_method(name, path, target))
            continue
        labels, notes = read_label_csv(path)
        neurons, more = cosy_neurons(reference, labels)
        methods.append(Method(name, path, neurons, None, notes + more))
    return reference, methods


async def compare_methods(
    client: InferenceClient,
    reference: RunFolder,
    methods: Sequence[Method],
    control: ControlSet,
    n_images: int = 50,
    template: str = DEFAULT_COSY_TEMPLATE,
    *,
    vocabulary: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    concurrency: int = 16,
    notes: Notes | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> MethodComparison:
    """Score every method's labels (see the module doc); ``notes`` gets one line per label not
    scored (units or layers the target lacks), prefixed with the method's name."""
    settings = reference.read_settings()
    layers = await target_layers(client, settings.target)
    kept: dict[str, list[CosyNeuron]] = {}
    for method in methods:
        kept[method.name], skipped = known_neurons(layers, settings.target, method.neurons)
        for text in skipped:
            if notes:
                notes(f"{method.name}: {text}")
    exclude: set[int] = set()
    for method in methods:
        if method.run is not None:
            exclude |= search_seeds(method.run)
    union = list(dict.fromkeys(neuron for neurons in kept.values() for neuron in neurons))
    scored = await score_neurons(
        client, settings.target, settings.generator, settings.seed, union, control, n_images,
        template, exclude=exclude, cache_dir=cache_dir, server_id=server_id,
        concurrency=concurrency, notes=notes, on_progress=on_progress,
    )  # fmt: skip
    by_neuron = {(row["layer"], row["unit"], row["concept"]): row for row in scored}
    rows = {
        name: [by_neuron[n.layer, n.unit, n.label] for n in neurons if (n.layer, n.unit, n.label)
               in by_neuron]
        for name, neurons in kept.items()
    }  # fmt: skip
    return MethodComparison(
        list(methods),
        rows,
        method_table(rows, {m.name: m.source for m in methods}, vocabulary),
        method_tests(rows),
    )


def method_table(
    rows: dict[str, list[dict]],
    sources: dict[str, Path] | None = None,
    vocabulary: Sequence[str] | None = None,
) -> list[dict]:
    """One row per method and layer: neurons, AUC and MAD mean and std (ddof=1), and with a
    ``vocabulary`` the share of labels outside it (``new_concepts``)."""
    table = []
    for method, method_rows in rows.items():
        for layer, stats in summarize_cosy(method_rows).items():
            row: dict[str, object] = {"method": method, "layer": layer, **stats}
            for key in ("auc", "mad"):
                mean, std = stats[f"{key}_mean"], stats[f"{key}_std"]
                row[key] = f"{format_cell(mean, 3)} ± {format_cell(std, 3)}"
            if vocabulary is not None:
                labels = [r["concept"] for r in method_rows if r["layer"] == layer]
                row["new_concepts"] = concept_discovery(labels, vocabulary)
            if sources is not None:
                row["source"] = str(sources[method])
            table.append(row)
    return table


def method_tests(rows: dict[str, list[dict]]) -> list[dict]:
    """Paired Wilcoxon signed-rank tests of AUC and MAD between every two methods, per layer,
    over the units both labelled."""
    values = {
        method: {(row["layer"], row["unit"]): row for row in method_rows}
        for method, method_rows in rows.items()
    }
    layers = list(
        dict.fromkeys(row["layer"] for method_rows in rows.values() for row in method_rows)
    )
    tests = []
    for layer in layers:
        for first, second in itertools.combinations(rows, 2):
            shared = sorted(
                key for key in values[first] if key[0] == layer and key in values[second]
            )
            for metric in ("auc", "mad"):
                a = [values[first][key][metric] for key in shared]
                b = [values[second][key][metric] for key in shared]
                statistic, p = paired_wilcoxon(a, b)
                tests.append(
                    {
                        "layer": layer,
                        "metric": metric.upper(),
                        "a": first,
                        "b": second,
                        "neurons": len(shared),
                        "mean_difference": float(np.mean(np.subtract(a, b)))
                        if shared
                        else math.nan,
                        "wilcoxon_w": statistic,
                        "p": p,
                    }
                )
    return tests


def table_columns(table: Sequence[dict]) -> list[tuple[str, str]]:
    """The columns of the comparison table that its rows have."""
    return [(key, header) for key, header in TABLE_COLUMNS if any(key in row for row in table)]


def plot_method_comparison(rows: dict[str, list[dict]], path: Path) -> None:
    """A PNG with two panels, AUC and MAD (on a symmetric log scale), each a box plot per method
    (and layer)."""
    groups = {
        f"{method}\n{layer}" if len({r["layer"] for rs in rows.values() for r in rs}) > 1
        else method: [r for r in method_rows if r["layer"] == layer]
        for method, method_rows in rows.items()
        for layer in dict.fromkeys(r["layer"] for r in method_rows)
    }  # fmt: skip
    figure = Figure(figsize=(4 + 1.2 * len(groups), 4), dpi=120)
    for axes, metric in zip(figure.subplots(1, 2), ("auc", "mad"), strict=True):
        axes.boxplot([[r[metric] for r in group] for group in groups.values()])
        axes.set_xticks(range(1, len(groups) + 1), list(groups))
        axes.set_ylabel(f"CoSy {metric.upper()}" + (" (symlog)" if metric == "mad" else ""))
        if metric == "mad":  # a near-constant control set makes MAD huge for some units
            axes.set_yscale("symlog")
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle("CoSy of each method's labels")
    figure.tight_layout()
    figure.savefig(path)


def setup_line(settings: RunSettings, control: ControlSet, n_images: int, template: str) -> str:
    """How the labels were scored, for the summary."""
    return (
        f"CoSy on {settings.target}: {n_images} images per label ({template!r}, rendered with "
        f"{settings.generator or 'the server default generator'}, run seed {settings.seed}; the "
        f"same images for the same label across methods), control set {control.name}"
    )


def write_method_comparison(
    comparison: MethodComparison, out: RunFolder, setup: str
) -> EvaluationFiles:
    """``compare.csv`` (the table), ``compare.md`` (table, tests, setup), ``compare.png`` (the
    figure) and each method's per-label CoSy rows in ``cosy-<method>.csv``, all under ``out``."""
    files = out.evaluation("compare")
    out.path.mkdir(parents=True, exist_ok=True)
    write_rows(files.csv, comparison.table, CSV_COLUMNS)
    for name, rows in comparison.rows.items():
        if rows:
            write_cosy_csv(out.cosy_csv(name), rows)
    summary = [
        setup + ".",
        "",
        markdown_table(comparison.table, table_columns(comparison.table)),
    ]
    if comparison.pairs:
        summary += [
            "Paired Wilcoxon signed-rank tests over the neurons both methods labelled:",
            "",
            markdown_table(comparison.pairs, PAIR_COLUMNS),
        ]
    summary += ["Per-label scores: " + ", ".join(
        out.cosy_csv(name).name for name, rows in comparison.rows.items() if rows
    )]  # fmt: skip
    files.summary.write_text("\n".join(summary) + "\n")
    plot_method_comparison({k: v for k, v in comparison.rows.items() if v}, files.figure)
    return files


def comparison_text(comparison: MethodComparison) -> str:
    """The table and the tests for the terminal."""
    parts = [text_table(comparison.table, table_columns(comparison.table))]
    if comparison.pairs:
        parts += ["", text_table(comparison.pairs, PAIR_COLUMNS)]
    return "\n".join(parts)
