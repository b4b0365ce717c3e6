"""Simulation scoring: does a neuron's label predict its activations on the control images?

A simulator (:mod:`analysis.simulators`) turns (label, control image) into a predicted
activation. Per neuron, label and simulator, against the neuron's real activations on the same
control images:

- ``pearson`` and ``spearman``: the correlation of prediction and activation;
- ``auprc``: the average precision (``sklearn.metrics.average_precision_score``) with which the
  prediction ranks the neuron's **top activations** first. The top activations are the control
  images at or above the neuron's 90th percentile on the control set (:data:`TOP_QUANTILE`) and
  above its minimum there, so a neuron silent on most images counts its active ones; ``n_top``
  gives their number (a ranking by chance scores about ``n_top / n_images``).

A figure is blank (NaN) when it is undefined: a constant prediction or activation, or no top
image; ``note`` says which.

**The missing-labels check** (Neuron_Eval, ICML 2025): correlation and AUPRC should punish a
label that explains only part of a neuron. For every label that names alternatives ("star or
cross", "cats / dogs"), each half alone is scored too (``role`` ``half``), and the summary counts
how often the full label beats every half.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score

from agent.run_folder import RunFolder
from analysis.simulator_specs import CLIP_PREFIX, EXACT
from analysis.simulators import (
    SimulatedImage,
    Simulator,
    SimulatorError,
    check_simulator_spec,
)
from evals.cosy_eval import (
    LabelMap,
    Notes,
    cosy_neurons,
    known_neurons,
    measure_control_layers,
    target_layers,
)
from evals.tables import markdown_table
from inference.wire import RenderOptions
from tools.client import InferenceClient
from tools.controlset import ControlActivations, ControlSet

log = logging.getLogger("line.eval.simulation")

TOP_QUANTILE = 0.9
"""Control images at or above this quantile of a neuron's activations are its top ones."""
SIMULATION_COLUMNS = ("layer", "unit", "label", "role", "simulator", "pearson", "spearman",
                      "auprc", "n_images", "n_top", "note")  # fmt: skip
"""The columns of ``simulation.csv``."""
SIMULATION_TABLE = [
    ("layer", "layer"),
    ("unit", "unit"),
    ("label", "label"),
    ("role", "role"),
    ("simulator", "simulator"),
    ("pearson", "Pearson"),
    ("spearman", "Spearman"),
    ("auprc", "AUPRC"),
    ("n_top", "top"),
    ("note", "note"),
]
"""How the rows are shown (terminal and Markdown)."""
FINAL, HALF = "final", "half"
_ALTERNATIVES = re.compile(r"\s+or\s+|\s*/\s*", re.IGNORECASE)


def top_activations(activations: np.ndarray, quantile: float = TOP_QUANTILE) -> np.ndarray:
    """Which images hold the neuron's top activations (module doc): a boolean mask."""
    values = np.asarray(activations, dtype=np.float64)
    return (values >= np.quantile(values, quantile)) & (values > values.min())


def simulation_scores(activations: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Pearson, Spearman, AUPRC of the top activations, ``n_images``, ``n_top`` and a ``note``
    when a figure is undefined (module doc)."""
    actual = np.asarray(activations, dtype=np.float64)
    guess = np.asarray(predicted, dtype=np.float64)
    top = top_activations(actual)
    row: dict[str, object] = {
        "pearson": math.nan,
        "spearman": math.nan,
        "auprc": math.nan,
        "n_images": int(actual.size),
        "n_top": int(top.sum()),
        "note": "",
    }
    if np.ptp(actual) == 0:
        row["note"] = "the neuron's activation is the same on every control image"
        return row
    if np.ptp(guess) == 0:
        row["note"] = "the simulator predicts the same value for every control image"
        return row
    row["pearson"] = float(pearsonr(guess, actual).statistic)
    row["spearman"] = float(spearmanr(guess, actual).statistic)
    row["auprc"] = float(average_precision_score(top, guess))
    return row


def half_labels(label: str) -> list[str]:
    """The alternatives a label names ("star or cross" -> star, cross); empty when it names
    none."""
    parts = [part.strip() for part in _ALTERNATIVES.split(label.strip()) if part.strip()]
    return parts if len(parts) > 1 else []


async def _sources(
    client: InferenceClient, control: ControlSet, kept: Sequence[int], generator: str | None
) -> list[Path | bytes]:
    """Where the kept control images' pixels are: files on disk, or toy scenes' PNG bytes from
    the server."""
    images = [control.images[index] for index in kept]
    if not control.is_toy:
        return [image.file() for image in images]
    scenes = [image.scene() for image in images]
    entries = await client.generate_images(
        [prompt for prompt, _ in scenes],
        [seed for _, seed in scenes],
        RenderOptions(generator=generator),
    )  # already rendered for the activations: the server's store answers
    return list(await asyncio.gather(*(client.image_png(entry.id) for entry in entries)))


async def simulated_images(
    client: InferenceClient,
    control: ControlSet,
    measured: ControlActivations,
    generator: str | None,
    pixels: bool,
) -> list[SimulatedImage]:
    """What simulators may read of the measured control images (pixels only when asked)."""
    images = [control.images[index] for index in measured.kept]
    scenes = [image.scene() if control.is_toy else None for image in images]
    sources = await _sources(client, control, measured.kept, generator) if pixels else None
    return [
        SimulatedImage(source=sources[i] if sources else None, scene=scenes[i])
        for i in range(len(images))
    ]


def default_simulator(control: ControlSet) -> str:
    """``exact`` for a toy control set; a folder of images needs a simulator named."""
    if control.is_toy:
        return EXACT
    raise SimulatorError(
        f"name a simulator for the images of {control.name}, e.g. --simulator "
        f"{CLIP_PREFIX}openai/clip-vit-base-patch32 ({EXACT} knows toy-world scenes only)"
    )


def check_simulation_inputs(
    specs: Sequence[str], control: ControlSet, generator: str | None
) -> list[str]:
    """The simulator specs, checked against the control set and the run's generator before
    anything loads: the exact simulator knows toy scenes as ``procedural:shapes`` renders them."""
    checked = [check_simulator_spec(spec) for spec in specs]
    if EXACT in checked and not control.is_toy:
        raise SimulatorError(
            f"the {EXACT} simulator knows the attributes of toy-world scenes only, not the files "
            f"of {control.name}; use --control toy (or toy:N), or a {CLIP_PREFIX}MODEL simulator"
        )
    if EXACT in checked and generator is not None and not generator.startswith("procedural:"):
        raise SimulatorError(
            f"the {EXACT} simulator knows the scenes of procedural:shapes only, but this run's "
            f"generator is {generator!r}; use a {CLIP_PREFIX}MODEL simulator"
        )
    return checked


async def evaluate_simulation(
    folder: RunFolder,
    client: InferenceClient,
    control: ControlSet,
    simulators: Sequence[Simulator],
    labels: LabelMap | None = None,
    *,
    generator: str | None = None,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    batch: int = 64,
    notes: Notes | None = None,
) -> list[dict]:
    """Simulation rows (:data:`SIMULATION_COLUMNS`) of every labelled neuron of a run, for every
    simulator: the final label (``role`` final) followed by its halves (``role`` half).

    ``labels`` replaces the run's final labels; ``generator`` the run's generator (it renders
    toy control sets). ``cache_dir``/``server_id``: see
    :func:`evals.cosy_eval.measure_control_layers`.
    """
    if not simulators:
        raise ValueError("no simulator given; name at least one (e.g. exact, clip:MODEL)")
    note = notes or (lambda text: log.warning("%s", text))
    settings = folder.read_settings()
    generator = generator or settings.generator
    check_simulation_inputs([simulator.name for simulator in simulators], control, generator)
    neurons, skipped = cosy_neurons(folder, labels)
    known, unknown = known_neurons(await target_layers(client, settings.target), settings.target,
                                   neurons)  # fmt: skip
    for text in [*skipped, *unknown]:
        note(text)
    if not known:
        return []
    controls = await measure_control_layers(
        client, control, settings.target, {n.layer for n in known}, generator,
        cache_dir=cache_dir, server_id=server_id, batch=batch, notes=note,
    )  # fmt: skip
    wants_pixels = any(simulator.reads_pixels for simulator in simulators)
    rows: list[dict] = []
    for layer, measured in controls.items():
        images = await simulated_images(client, control, measured, generator, wants_pixels)
        in_layer = [neuron for neuron in known if neuron.layer == layer]
        scored = [
            (neuron, text, role)
            for neuron in in_layer
            for text, role in [
                (neuron.label, FINAL),
                *((h, HALF) for h in half_labels(neuron.label)),
            ]
        ]
        texts = list(dict.fromkeys(text for _, text, _ in scored))
        for simulator in simulators:
            predicted = simulator.simulate(texts, images)
            for neuron, text, role in scored:
                rows.append(
                    {
                        "layer": layer,
                        "unit": neuron.unit,
                        "label": text,
                        "role": role,
                        "simulator": simulator.name,
                        **simulation_scores(
                            measured.unit(neuron.unit), predicted[texts.index(text)]
                        ),
                    }
                )
    order = {simulator.name: index for index, simulator in enumerate(simulators)}
    return sorted(rows, key=lambda r: (order[r["simulator"]], r["layer"], r["unit"]))


def missing_label_checks(rows: Sequence[dict]) -> list[dict]:
    """Per simulator and neuron whose label names alternatives: the full label's Pearson, its
    best half's, and whether the full label scores higher."""
    checks = []
    finals = [row for row in rows if row["role"] == FINAL]
    for final in finals:
        halves = [
            row
            for row in rows
            if row["role"] == HALF
            and (row["simulator"], row["layer"], row["unit"])
            == (final["simulator"], final["layer"], final["unit"])
        ]
        if not halves:
            continue
        best = max(halves, key=lambda r: -math.inf if math.isnan(r["pearson"]) else r["pearson"])
        full, half = final["pearson"], best["pearson"]
        passed = None if math.isnan(full) or math.isnan(half) else full > half
        checks.append(
            {
                "simulator": final["simulator"],
                "layer": final["layer"],
                "unit": final["unit"],
                "label": final["label"],
                "pearson": full,
                "best_half": best["label"],
                "half_pearson": half,
                "passed": passed,
            }
        )
    return checks


def _mean(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def simulation_summary_rows(rows: Sequence[dict]) -> list[dict]:
    """Per simulator: neurons, mean Pearson, Spearman and AUPRC of the final labels (undefined
    figures left out), and the missing-labels check's tally."""
    checks = missing_label_checks(rows)
    summary = []
    for simulator in dict.fromkeys(row["simulator"] for row in rows):
        finals = [r for r in rows if r["simulator"] == simulator and r["role"] == FINAL]
        own = [c for c in checks if c["simulator"] == simulator]
        summary.append(
            {
                "simulator": simulator,
                "neurons": len(finals),
                "defined": sum(not math.isnan(r["pearson"]) for r in finals),
                "pearson": _mean([r["pearson"] for r in finals]),
                "spearman": _mean([r["spearman"] for r in finals]),
                "auprc": _mean([r["auprc"] for r in finals]),
                "missing_check": (
                    f"{sum(c['passed'] is True for c in own)} of {len(own)}" if own else "-"
                ),
            }
        )
    return summary


SIMULATION_SUMMARY_TABLE = [
    ("simulator", "simulator"),
    ("neurons", "neurons"),
    ("defined", "with a defined Pearson"),
    ("pearson", "mean Pearson"),
    ("spearman", "mean Spearman"),
    ("auprc", "mean AUPRC"),
    ("missing_check", "full label beats its halves"),
]
CHECK_TABLE = [
    ("simulator", "simulator"),
    ("unit", "unit"),
    ("label", "label"),
    ("pearson", "Pearson"),
    ("best_half", "best half"),
    ("half_pearson", "its Pearson"),
    ("passed", "full label higher"),
]


def simulation_markdown(rows: Sequence[dict], control: str) -> str:
    """The Markdown summary: what was measured, per-simulator means, the missing-labels check."""
    n_images = rows[0]["n_images"] if rows else 0
    text = [
        f"Simulation scoring on control set `{control}` ({n_images} images): how well each "
        "simulator's prediction from the label alone matches the neuron's activations. Top "
        f"activations: the images at or above the neuron's {TOP_QUANTILE:.0%} quantile (and "
        "above its minimum); AUPRC by chance is about top / images.",
        "",
        markdown_table(simulation_summary_rows(rows), SIMULATION_SUMMARY_TABLE),
    ]
    checks = missing_label_checks(rows)
    if checks:
        text += [
            "Missing-labels check: each label that names alternatives against its best half "
            "alone (Pearson); a sound score puts the full label higher.",
            "",
            markdown_table(checks, CHECK_TABLE),
        ]
    return "\n".join(text)
