"""CoSy evaluation of a run's labels (or another method's labels), as ``line eval cosy`` runs it.

For each neuron: render ``n_images`` images of its label with CoSy's template and seeds that no
search image used, read the neuron on them and on a control set, and score with
:func:`evals.cosy.cosy_scores`. The control matrix of a layer is measured once (all units) and
cached on disk, so evaluating again sends no control image to the server.
"""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from agent.run_folder import RunFolder, RunSettings, read_record_file
from agent.runner import thread_id
from evals.cosy import cosy_prompt, cosy_scores, cosy_seeds
from evals.defaults import DEFAULT_COSY_TEMPLATE
from evals.tables import read_rows
from inference.store import default_cache_dir
from inference.wire import RenderOptions
from prompts.variant import VariantError, load_variant
from tools.client import InferenceClient
from tools.controlset import (
    ControlActivations,
    ControlSet,
    cached_control_activations,
    measure_control,
)
from tools.server_session import ServerSession

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
def search_seeds(folder: RunFolder) -> set[int]:
    """Every image seed recorded in the run's neuron records (all neurons, all entries)."""
    return {
        seed
        for path in folder.record_paths()
        for entry in read_record_file(path).entries
        for seed in entry.seeds
    }


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
    neurons, notes = [], []
    for unit in settings.units:
        name = thread_id(settings.layer, unit)
        record = folder.read_record(settings.layer, unit)
        if record is None:
            notes.append(f"{name}: not explained yet, skipped (finish it with line run --resume)")
        elif record.status != "done":
            why = record.reason or "no reason given"
            notes.append(f"{name}: {record.status} ({why}), skipped")
        elif not record.label.strip():
            notes.append(f"{name}: no final label, skipped")
        else:
            neurons.append(CosyNeuron(settings.layer, unit, record.label.strip()))
    return neurons, notes


def cosy_template_of(settings: RunSettings) -> str:
    """The run's CoSy template: the variant's ``cosy_template`` setting if it has one."""
    try:
        variant = load_variant(settings.prompts, **settings.variant_overrides)
    except VariantError:
        return DEFAULT_COSY_TEMPLATE
    return getattr(variant.settings, "cosy_template", None) or DEFAULT_COSY_TEMPLATE


LABEL_FORMATS = (
    "unit,label[,layer] (LINE, line eval vocab)",
    "layer,unit,description[,similarity] (CLIP-Dissect)",
    "neuron,concept[,...] (CoSy's explanation files, e.g. INVERT)",
)
"""The label files :func:`read_label_csv` reads, by their columns."""
UNIT_COLUMNS = ("unit", "neuron")
LABEL_COLUMNS = ("label", "concept", "description")


def _neuron_key(raw: str | None, layer: str | None) -> dict[str, object]:
    """A ``neuron`` cell as unit and layer: ``12``, or ``layer4#12`` as written in ``cosy.csv``."""
    text = (raw or "").strip()
    named_layer, sep, unit = text.rpartition("#")
    if sep and named_layer:
        return {"unit": unit, "layer": named_layer}
    return {"unit": text, "layer": layer}


def read_label_csv(path: Path) -> tuple[dict[tuple[str, int] | int, str], list[str]]:
    """Labels of any method from a CSV in one of :data:`LABEL_FORMATS`: a unit column (``unit``,
    or ``neuron`` as a number or ``layer#unit``), a label column (``label``, ``concept`` or
    ``description``) and optionally ``layer``. Rows without a layer use the run's."""
    path = Path(path)
    try:
        with path.open(newline="") as stream:
            reader = csv.DictReader(stream)
            fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            unit_field = next((fields[c] for c in UNIT_COLUMNS if c in fields), None)
            label_field = next((fields[c] for c in LABEL_COLUMNS if c in fields), None)
            if unit_field is None or label_field is None:
                raise ValueError(
                    f"{path} has the columns {', '.join(fields) or '(no header)'}; a labels "
                    f"file needs one of: {'; '.join(LABEL_FORMATS)}"
                )
            labels: dict[tuple[str, int] | int, str] = {}
            notes = []
            for line, raw in enumerate(reader, start=2):
                layer = (raw.get(fields["layer"]) or None) if "layer" in fields else None
                record = {
                    **_neuron_key(raw.get(unit_field), layer),
                    "label": raw.get(label_field) or "",
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
async def target_layers(client: InferenceClient, target: str) -> dict[str, int]:
    """The target's layers and their unit counts, as the server reports them."""
    models = await client.models()
    entry = next((t for t in models["targets"] if t["name"] == target), None)
    if entry is None:
        raise ValueError(
            f"the server at {client.base_url} does not serve target {target!r}; start one that "
            "does, or leave out --server"
        )
    return {layer["name"]: layer["units"] for layer in entry["layers"]}


def _unit_list(units: Sequence[int], shown: int = 10) -> str:
    """``unit 3`` or ``units 3, 4 and 9 more``."""
    text = ", ".join(str(unit) for unit in units[:shown])
    more = f" and {len(units) - shown} more" if len(units) > shown else ""
    return f"unit{'s' * (len(units) > 1)} {text}{more}"


def known_neurons(
    layers: Mapping[str, int], target: str, neurons: Sequence[CosyNeuron]
) -> tuple[list[CosyNeuron], list[str]]:
    """The neurons that ``target`` has (``layers``: name -> units), and one note per layer
    listing the units it lacks (they are not scored)."""
    kept: list[CosyNeuron] = []
    missing: dict[str, list[int]] = {}
    for neuron in neurons:
        if neuron.layer in layers and 0 <= neuron.unit < layers[neuron.layer]:
            kept.append(neuron)
        else:
            missing.setdefault(neuron.layer, []).append(neuron.unit)
    notes = []
    for layer, units in missing.items():
        if layer not in layers:
            notes.append(
                f"{target} has no layer {layer!r} (its layers: {', '.join(layers)}); labels not "
                f"scored: {_unit_list(units)}"
            )
        else:
            notes.append(
                f"layer {layer!r} of {target} has units 0 to {layers[layer] - 1}; labels "
                f"not scored: {_unit_list(units)}"
            )
    return kept, notes


async def _render_label(
    client: InferenceClient, generator: str | None, prompt: str, seeds: list[int], batch: int
) -> list[str]:
    """The ids of a label's CoSy images, rendered ``batch`` at a time."""
    ids: list[str] = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start : start + batch]
        images = await client.generate_images(
            [prompt] * len(chunk), chunk, RenderOptions(generator=generator)
        )
        ids += [image.id for image in images]
    return ids


async def _read_units(
    client: InferenceClient, target: str, layer: str, units: list[int], ids: list[str], batch: int
) -> np.ndarray:
    """``[images, units]`` activations of ``units`` on the images ``ids``."""
    blocks = []
    for start in range(0, len(ids), batch):
        result = await client.activations(target, layer, ids[start : start + batch], units=units)
        blocks.append(result.values)
    return np.concatenate(blocks)


async def measure_control_layers(
    client: InferenceClient,
    control: ControlSet,
    target: str,
    layers: Iterable[str],
    generator: str | None,
    *,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    batch: int = 64,
    notes: Notes | None = None,
) -> dict[str, ControlActivations]:
    """Every unit of each layer on the control set, by layer (from ``cache_dir`` when given and
    measured before); ``notes`` receives one line per skipped control file."""
    note = notes or (lambda text: log.warning("%s", text))
    controls: dict[str, ControlActivations] = {}
    for layer in sorted(set(layers)):
        if cache_dir is not None:
            measured = await cached_control_activations(
                client, control, target, layer, cache_dir, server_id, generator, batch
            )
        else:
            measured = await measure_control(client, control, target, layer, None, generator, batch)
        for item in measured.skipped:
            note(f"control image {item.path} skipped: {item.reason}")
        controls[layer] = measured
    return controls


async def score_neurons(
    client: InferenceClient,
    target: str,
    generator: str | None,
    run_seed: int,
    neurons: Sequence[CosyNeuron],
    control: ControlSet,
    n_images: int = 50,
    template: str = DEFAULT_COSY_TEMPLATE,
    *,
    exclude: Iterable[int] = (),
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    concurrency: int = 16,
    batch: int = 64,
    notes: Notes | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """CoSy rows (layer, unit, concept, auc, u, p, mad, n_concept, n_control, prompt, and
    ``activations``: the neuron on the label's images) of ``neurons``, in (layer, unit, label)
    order; a neuron may appear with several labels.

    Each distinct label's ``n_images`` images render once (seeds from ``run_seed`` and the label,
    none in ``exclude``) with ``generator``, and every neuron of a layer with that label is read
    on them at once. Neurons the target lacks are noted and left out. ``cache_dir`` and
    ``server_id``: see :func:`tools.controlset.cached_control_activations`.
    """
    if n_images < 1:
        raise ValueError(f"n_images is {n_images}; CoSy needs at least 1 image per label")
    cosy_prompt(template, "x")  # fail before any work on a template without {label}
    note = notes or (lambda text: log.warning("%s", text))
    known, skipped = known_neurons(await target_layers(client, target), target, neurons)
    for text in skipped:
        note(text)
    unique = sorted(set(known), key=lambda n: (n.layer, n.unit, n.label))
    if not unique:
        return []
    banned = set(exclude)
    controls = await measure_control_layers(
        client, control, target, {neuron.layer for neuron in unique}, generator,
        cache_dir=cache_dir, server_id=server_id, batch=batch, notes=note,
    )  # fmt: skip
    by_label: dict[str, list[CosyNeuron]] = {}
    for neuron in unique:
        by_label.setdefault(cosy_prompt(template, neuron.label), []).append(neuron)
    limit = asyncio.Semaphore(max(1, concurrency))
    finished = 0
    scored: dict[CosyNeuron, dict] = {}

    async def score(prompt: str, labelled: list[CosyNeuron]) -> None:
        nonlocal finished
        seeds = cosy_seeds(run_seed, labelled[0].label, n_images, banned)
        async with limit:
            ids = await _render_label(client, generator, prompt, seeds, batch)
            for layer in dict.fromkeys(neuron.layer for neuron in labelled):
                in_layer = [neuron for neuron in labelled if neuron.layer == layer]
                units = list(dict.fromkeys(neuron.unit for neuron in in_layer))
                values = await _read_units(client, target, layer, units, ids, batch)
                for neuron in in_layer:
                    concept = values[:, units.index(neuron.unit)]
                    control_values = controls[layer].unit(neuron.unit)
                    scored[neuron] = {
                        "neuron": thread_id(layer, neuron.unit),
                        "layer": layer,
                        "unit": neuron.unit,
                        "concept": neuron.label,
                        **cosy_scores(control_values, concept),
                        "n_concept": int(concept.size),
                        "n_control": int(control_values.size),
                        "prompt": prompt,
                        "activations": concept,
                    }
        finished += len(labelled)
        if on_progress:
            on_progress(finished, len(unique))

    await asyncio.gather(*(score(prompt, labelled) for prompt, labelled in by_label.items()))
    return [scored[neuron] for neuron in unique]


async def evaluate_cosy(
    folder: RunFolder,
    client: InferenceClient,
    control: ControlSet,
    n_images: int = 50,
    template: str = DEFAULT_COSY_TEMPLATE,
    labels: LabelMap | None = None,
    *,
    generator: str | None = None,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    concurrency: int = 16,
    batch: int = 64,
    notes: Notes | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """CoSy scores of every labelled neuron of a run: one row per neuron (layer, unit, concept,
    auc, u, p, mad, n_concept, n_control), in (layer, unit) order (see :func:`score_neurons`).

    ``labels`` replaces the run's final labels (another method's output); ``generator`` the
    run's generator. With ``cache_dir`` the control matrix is read from / written to disk, keyed
    by ``server_id`` (a local server's store folder; the server URL by default). ``notes``
    receives one line per skipped neuron or file.
    """
    if n_images < 1:
        raise ValueError(f"n_images is {n_images}; CoSy needs at least 1 image per label")
    cosy_prompt(template, "x")
    note = notes or (lambda text: log.warning("%s", text))
    settings = folder.read_settings()
    neurons, skipped = cosy_neurons(folder, labels)
    for text in skipped:
        note(text)
    if not neurons:
        return []
    return await score_neurons(
        client, settings.target, generator or settings.generator, settings.seed, neurons,
        control, n_images, template, exclude=search_seeds(folder), cache_dir=cache_dir,
        server_id=server_id, concurrency=concurrency, batch=batch, notes=note,
        on_progress=on_progress,
    )  # fmt: skip


def control_cache(session: ServerSession, cache_dir: Path | None = None) -> tuple[Path, str]:
    """Where to cache control matrices and under which server id: a local server's store folder
    (``STORE/control``), else ``$LINE_CACHE/control`` keyed by the first server's URL."""
    if session.local_store is not None:
        return cache_dir or session.local_store / "control", f"store:{session.local_store}"
    return cache_dir or default_cache_dir() / "control", session.urls[0]


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


def read_cosy_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CoSy table (``cosy.csv`` as :func:`write_cosy_csv` writes it, or CoSy's
    own output) with lower-case keys (``auc``, ``u``, ``p``, ``mad``, ...) and an integer
    ``unit``; rows without a unit number are skipped, empty when there is no table."""
    rows = []
    for raw in read_rows(path):
        row: dict[str, Any] = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
        try:
            row["unit"] = int(row.get("unit", ""))
        except ValueError:
            continue
        rows.append(row)
    return rows


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
