"""CoSy evaluation of a run's labels (or another method's labels), as ``line eval cosy`` runs it.

For each neuron: render ``n_images`` images of its label with CoSy's template and seeds that no
search image used, read the neuron on them and on a control set, and score with
:func:`evals.cosy.cosy_scores`. The control matrix of a layer is measured once (all units) and
cached on disk, so evaluating again sends no control image to the server.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from agent.run_folder import RunFolder, RunSettings
from agent.runner import thread_id
from evals.cosy import DEFAULT_COSY_TEMPLATE, cosy_prompt, cosy_scores, cosy_seeds
from prompts.variant import VariantError, load_variant
from tools.client import InferenceClient
from tools.controlset import (
    ControlActivations,
    ControlSet,
    cached_control_activations,
    measure_control,
)
from tools.server_session import check_layer_units

log = logging.getLogger("line.eval.cosy")

COSY_COLUMNS = ["neuron", "layer", "unit", "concept", "AUC", "U", "p", "MAD", "n_concept",
                "n_control"]  # fmt: skip
LabelMap = Mapping[int | tuple[str, int], str]
Notes = Callable[[str], None]


@dataclass(frozen=True)
class CosyNeuron:
    """A neuron to score and the label it is scored with."""

    layer: str
    unit: int
    label: str


class LabelRow(BaseModel):
    """One row of a ``--labels`` CSV."""

    unit: int = Field(ge=0)
    label: str
    layer: str | None = None

    @field_validator("label", "layer", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value


# ----- reading a run ------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        log.warning("cannot read %s (%s)", path, error)
        return None


def search_seeds(folder: RunFolder) -> set[int]:
    """Every image seed recorded in the run's neuron histories (all neurons, all entries)."""
    seeds: set[int] = set()
    for path in folder.history_paths():
        history = _read_json(path) or {}
        for entry in history.get("entries", []):
            seeds.update(int(seed) for seed in entry.get("seeds", []))
    return seeds


def _results_by_unit(folder: RunFolder) -> dict[int, dict]:
    return {int(row["unit"]): row for row in folder.read_results() if row.get("unit")}


def cosy_neurons(
    folder: RunFolder, labels: LabelMap | None = None
) -> tuple[list[CosyNeuron], list[str]]:
    """The neurons to score and a note for each one skipped.

    Without ``labels``: the run's final labels, skipping neurons that failed or have none.
    With ``labels`` (``{unit: label}`` on the run's layer, or ``{(layer, unit): label}``): those.
    """
    settings = folder.read_settings()
    if labels is not None:
        by_neuron: dict[tuple[str, int], str] = {}
        notes = []
        for key, label in labels.items():
            layer, unit = key if isinstance(key, tuple) else (settings.layer, key)
            label = str(label).strip()
            if not label:
                notes.append(f"{thread_id(layer, unit)}: empty label, not scored")
            elif by_neuron.setdefault((layer, int(unit)), label) != label:
                raise ValueError(
                    f"{thread_id(layer, unit)} has two labels ({by_neuron[layer, int(unit)]!r}, "
                    f"{label!r}); give one label per neuron"
                )
        neurons = [CosyNeuron(layer, unit, label) for (layer, unit), label in by_neuron.items()]
        return sorted(neurons, key=lambda n: (n.layer, n.unit)), notes
    results = _results_by_unit(folder)
    neurons, notes = [], []
    for unit in settings.units:
        name = thread_id(settings.layer, unit)
        row = results.get(unit)
        history = None
        if row is None and folder.history_path(settings.layer, unit).is_file():
            history = _read_json(folder.history_path(settings.layer, unit))
        if row is not None:
            status, reason = row.get("status", ""), row.get("reason", "")
            final_label = row.get("label")
        elif history is not None:
            status, reason = history.get("status", ""), history.get("reason", "")
            final_label = (history.get("result") or {}).get("label")
        else:
            notes.append(f"{name}: not explained yet, skipped (finish it with line run --resume)")
            continue
        final_label = (final_label or "").strip()
        if status != "done":
            why = reason or "no reason given"
            notes.append(f"{name}: {status or 'unfinished'} ({why}), skipped")
        elif not final_label:
            notes.append(f"{name}: no final label, skipped")
        else:
            neurons.append(CosyNeuron(settings.layer, unit, final_label))
    return neurons, notes


def cosy_template_of(settings: RunSettings) -> str:
    """The run's CoSy template: the variant's ``cosy_template`` setting if it has one."""
    try:
        variant = load_variant(settings.prompts, **settings.variant_overrides)
    except VariantError:
        return DEFAULT_COSY_TEMPLATE
    return getattr(variant.settings, "cosy_template", None) or DEFAULT_COSY_TEMPLATE


def read_label_csv(path: Path) -> tuple[dict[tuple[str, int] | int, str], list[str]]:
    """A CSV of labels from any method: columns ``unit,label`` and optionally ``layer``
    (``concept`` or ``description`` work for ``label``). Rows without a layer use the run's."""
    try:
        with Path(path).open(newline="") as stream:
            reader = csv.DictReader(stream)
            fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            label_field = next(
                (fields[c] for c in ("label", "concept", "description") if c in fields), None
            )
            if "unit" not in fields or label_field is None:
                raise ValueError(
                    f"{path} needs the columns unit and label (and optionally layer); it has "
                    f"{', '.join(fields) or 'no header'}"
                )
            labels: dict[tuple[str, int] | int, str] = {}
            notes = []
            for line, raw in enumerate(reader, start=2):
                record = {
                    "unit": raw.get(fields["unit"]),
                    "label": raw.get(label_field) or "",
                    "layer": (raw.get(fields["layer"]) or None) if "layer" in fields else None,
                }
                try:
                    row = LabelRow.model_validate(record)
                except ValidationError as error:
                    detail = error.errors()[0]
                    field = str(detail["loc"][0])
                    raise ValueError(
                        f"{path} line {line}: {field} {detail['msg'].lower()} "
                        f"(got {record[field]!r})"
                    ) from None
                if not row.label:
                    notes.append(f"{path.name} line {line}: unit {row.unit} has no label, skipped")
                    continue
                key = (row.layer, row.unit) if row.layer else row.unit
                if key in labels and labels[key] != row.label:
                    raise ValueError(
                        f"{path} gives unit {row.unit} two labels ({labels[key]!r}, "
                        f"{row.label!r}); keep one row per neuron"
                    )
                labels[key] = row.label
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file {path} does not exist") from None
    if not labels:
        raise ValueError(f"{path} holds no labels")
    return labels, notes


# ----- scoring ------------------------------------------------------------------------------
async def _check_neurons(client: InferenceClient, target: str, neurons: list[CosyNeuron]) -> None:

    models = await client.models()
    entry = next((t for t in models["targets"] if t["name"] == target), None)
    if entry is None:
        raise ValueError(
            f"the server at {client.base_url} does not serve target {target!r}; start one that "
            "does, or leave out --server"
        )
    layers = {layer["name"]: layer["units"] for layer in entry["layers"]}
    for layer in sorted({n.layer for n in neurons}):
        check_layer_units(layers, target, layer, [n.unit for n in neurons if n.layer == layer])


async def _render_and_read(
    client: InferenceClient,
    settings: RunSettings,
    neuron: CosyNeuron,
    prompt: str,
    seeds: list[int],
    batch: int,
) -> np.ndarray:
    values = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start : start + batch]
        images = await client.generate_images(
            [prompt] * len(chunk), chunk, generator=settings.generator
        )
        result = await client.activations(
            settings.target, neuron.layer, [image.id for image in images], units=[neuron.unit]
        )
        values.append(result.values[:, 0])
    return np.concatenate(values)


async def evaluate_cosy(
    folder: RunFolder,
    client: InferenceClient,
    control: ControlSet,
    n_images: int = 50,
    template: str = DEFAULT_COSY_TEMPLATE,
    labels: LabelMap | None = None,
    *,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    concurrency: int = 16,
    batch: int = 64,
    notes: Notes | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """CoSy scores of every labelled neuron of a run: one row per neuron (layer, unit, concept,
    auc, u, p, mad, n_concept, n_control), in (layer, unit) order.

    ``labels`` replaces the run's final labels (another method's output). With ``cache_dir`` the
    control matrix is read from / written to disk, keyed by ``server_id`` (a local server's store
    folder; the server URL by default). ``notes`` receives one line per skipped neuron or file.
    """
    if n_images < 1:
        raise ValueError(f"n_images is {n_images}; CoSy needs at least 1 image per label")
    cosy_prompt(template, "x")  # fail before any work on a template without {label}
    note = notes or (lambda text: log.warning("%s", text))
    settings = folder.read_settings()
    neurons, skipped = cosy_neurons(folder, labels)
    for text in skipped:
        note(text)
    if not neurons:
        return []
    await _check_neurons(client, settings.target, neurons)
    exclude = search_seeds(folder)
    controls: dict[str, ControlActivations] = {}
    for layer in sorted({neuron.layer for neuron in neurons}):
        if cache_dir is not None:
            measured = await cached_control_activations(
                client, control, settings.target, layer, cache_dir, server_id,
                settings.generator, batch,
            )  # fmt: skip
        else:
            measured = await measure_control(
                client, control, settings.target, layer, None, settings.generator, batch
            )
        for item in measured.skipped:
            note(f"control image {item.path} skipped: {item.reason}")
        controls[layer] = measured
    limit = asyncio.Semaphore(max(1, concurrency))
    finished = 0

    async def score(neuron: CosyNeuron) -> dict:
        nonlocal finished
        prompt = cosy_prompt(template, neuron.label)
        seeds = cosy_seeds(
            settings.seed, settings.target, neuron.layer, neuron.unit, neuron.label, n_images,
            exclude,
        )  # fmt: skip
        async with limit:
            concept = await _render_and_read(client, settings, neuron, prompt, seeds, batch)
        control_values = controls[neuron.layer].unit(neuron.unit)
        finished += 1
        if on_progress:
            on_progress(finished, len(neurons))
        return {
            "neuron": thread_id(neuron.layer, neuron.unit),
            "layer": neuron.layer,
            "unit": neuron.unit,
            "concept": neuron.label,
            **cosy_scores(control_values, concept),
            "n_concept": int(concept.size),
            "n_control": int(control_values.size),
            "prompt": prompt,
        }

    return list(await asyncio.gather(*(score(neuron) for neuron in neurons)))


def write_cosy_csv(path: Path, rows: list[dict]) -> None:
    """``cosy.csv``: neuron, layer, unit, concept, AUC, U, p, MAD, n_concept, n_control."""
    keys = {"AUC": "auc", "U": "u", "MAD": "mad"}
    partial = path.with_name(path.name + ".part")
    with partial.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COSY_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    f"{row[keys.get(c, c)]:.6g}" if isinstance(row[keys.get(c, c)], float)
                    else row[keys.get(c, c)]
                    for c in COSY_COLUMNS
                ]
            )  # fmt: skip
    partial.replace(path)


def summarize_cosy(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per layer: neurons, mean and standard deviation (ddof=1; 0 for one neuron) of AUC and MAD."""
    summary = {}
    for layer in dict.fromkeys(row["layer"] for row in rows):
        stats: dict[str, float] = {"neurons": 0}
        for key in ("auc", "mad"):
            values = np.array([row[key] for row in rows if row["layer"] == layer])
            stats["neurons"] = len(values)
            stats[f"{key}_mean"] = float(values.mean())
            stats[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[layer] = stats
    return summary


def control_spec_of(option: str | None, settings: RunSettings) -> str:
    """The control set to score a run with: ``option`` if given, else the run's own control set,
    else ``toy`` for the toy world; a run on a real target without one needs ``--control``."""
    if option:
        return option
    if settings.control:
        return settings.control
    if settings.target.startswith("planted:"):
        return "toy"
    raise ValueError(
        f"the run ({settings.target}) has no control set; pass --control PATH, a folder of natural "
        "images (flat or in class folders, e.g. ImageNet or Places365 validation images)"
    )
