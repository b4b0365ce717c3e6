"""Reading a run folder into what the report shows: the config, and one view per neuron.

Everything comes from the run folder (:class:`agent.run_folder.RunFolder`): the config, one
record per neuron (:class:`agent.record.NeuronRecord`: its concepts, confirmation, verdict,
concept groups in the analysis's order and, for ``line demo``, the planted truth) and the
outputs of the evaluations that ran on it. A unit of the config without a record has not
finished (the run is going on, or was interrupted); it is listed as ``unfinished``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.record import (
    FAULT_COUNTERS,
    ConceptEntry,
    ConceptGroupRecord,
    Confirmation,
    EditExperiment,
    NeuronRecord,
    NeuronResult,
    SummaryStep,
)
from agent.run_folder import OutageRecord, RecordError, RunFolder, read_record_file
from agent.runner import thread_id
from analysis.groundtruth import attribute_match
from evals.ablation import read_ablation as evals_read_ablation
from evals.cosy_eval import read_cosy_csv
from evals.tables import read_rows
from inference.bases import BasisError, load_basis
from prompts.variant import load_variant
from toyworld.latents import toy_basis_truth
from toyworld.truth import PlantedUnit, planted_ground_truth

STATUS_ORDER = ("done", "dead", "failed", "unfinished")
"""Statuses shown in the report, in the order the index's filter lists them."""


class ReportError(ValueError):
    """A report that cannot be built; the message says what to do."""


@dataclass
class ImageView:
    """One generated image of a concept with the neuron's activation on it."""

    image_id: str
    activation: float | None
    prompt: str
    seed: int | None
    concept: str
    iteration: int


@dataclass
class EntryView:
    """One tried concept: its score and images, in the order tried."""

    index: int
    concept: str
    score: float | None
    iteration: int
    source: str
    images: list[ImageView]
    best_so_far: float | None = None
    new_best: bool = False


@dataclass
class EditPair:
    """One image the agent edited (``edit_images``): before and after, and the drop (1: down
    to the unit's typical level, 0: unchanged; None: it was not above that level)."""

    source: ImageView
    edited: ImageView
    drop: float | None


@dataclass
class EditView:
    """One ``edit_images`` experiment of the agent, after ``after_iteration`` measurements."""

    index: int
    instruction: str
    after_iteration: int
    pairs: list[EditPair]
    mean_drop: float | None


@dataclass
class CosyRow:
    """One CoSy evaluation of a concept for a neuron (a row of ``cosy.csv``)."""

    concept: str
    auc: float | None
    mad: float | None
    p: float | None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class ConfirmationView:
    """One candidate the confirmation re-checked on fresh images."""

    concept: str
    source: str
    auc: float | None
    mean: float | None
    search_score: float | None
    kept: bool
    note: str
    chosen: bool


def confirmation_views(confirmation: Confirmation | None) -> list[ConfirmationView]:
    """The confirmation's candidates, best AUC first (the chosen one marked)."""
    if confirmation is None:
        return []
    views = [
        ConfirmationView(
            concept=candidate.concept,
            source=candidate.source,
            auc=finite(candidate.auc),
            mean=finite(candidate.mean),
            search_score=finite(candidate.search_score),
            kept=candidate.kept,
            note=candidate.note,
            chosen=candidate.concept == confirmation.label,
        )
        for candidate in confirmation.candidates
    ]
    return sorted(views, key=lambda view: -(view.auc if view.auc is not None else -1.0))


@dataclass
class NeuronView:
    """Everything the report shows about one neuron."""

    layer: str
    unit: int
    slug: str
    status: str
    reason: str = ""
    label: str = ""
    score: float | None = None
    selective: bool | None = None
    """The verdict on the label (None: a run from before verdicts, or a failed neuron)."""
    verdict: str = ""
    """``selective``, ``weak`` or ``none`` (:mod:`analysis.selectivity`); empty before verdicts."""
    score_low: float | None = None
    score_high: float | None = None
    """The confirmed AUC's 95% interval."""
    mean_activation: float | None = None
    search_score: float | None = None
    """The label's score in the search (None: an ablation the search never tried)."""
    choice: str = ""
    """Why the confirmation chose the label."""
    inhibitor: str = ""
    """The concept that drives the unit lowest against the control set (confirmed)."""
    inhibitor_score: float | None = None
    inhibitor_verdict: str = ""
    confirmation: list[ConfirmationView] = field(default_factory=list)
    confirmation_images: int = 0
    control_images: int = 0
    label_source: str = ""
    summary_concept: str = ""
    summary_text: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    entries: list[EntryView] = field(default_factory=list)
    seed_concepts: list[str] = field(default_factory=list)
    llm_log: list[dict[str, Any]] = field(default_factory=list)
    edits: list[EditView] = field(default_factory=list)
    cosy: list[CosyRow] = field(default_factory=list)
    truth: str | None = None
    match: str | None = None
    groups: list[ConceptGroupRecord] | None = None
    groups_note: str = ""
    record_signature: str = ""
    ablation: list[AblationView] = field(default_factory=list)

    @property
    def has_page(self) -> bool:
        """Whether the neuron has a record (and so a page of its own)."""
        return self.status != "unfinished"

    @property
    def llm_calls(self) -> int:
        """LLM calls spent on the neuron."""
        return int(self.counters.get("llm_calls", 0))

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return int(self.counters.get("input_tokens", 0)) + int(
            self.counters.get("output_tokens", 0)
        )

    @property
    def faults(self) -> int:
        """Rate limits, server errors, timeouts, unusable answers and tool errors."""
        return sum(int(self.counters.get(key, 0)) for key in FAULT_COUNTERS)

    @property
    def label_cosy(self) -> CosyRow | None:
        """The CoSy row of the final label (else the first one)."""
        for row in self.cosy:
            if normalise(row.concept) == normalise(self.label):
                return row
        return self.cosy[0] if self.cosy else None

    def images(self) -> list[ImageView]:
        """Every image of the record, each once."""
        seen: dict[str, ImageView] = {}
        for entry in self.entries:
            for image in entry.images:
                seen.setdefault(image.image_id, image)
        return list(seen.values())

    def top_images(self, count: int) -> list[ImageView]:
        """The images that activate the neuron most, highest first."""
        scored = [(image.activation, image) for image in self.images()]
        ranked = sorted(
            ((value, image) for value, image in scored if value is not None), key=lambda p: -p[0]
        )
        return [image for _, image in ranked[:count]]


@dataclass(frozen=True)
class AblationView:
    """One ablated image of a neuron (``ablation.json``): the source, the label edited out and
    a random concept edited out, each with the neuron's activation."""

    source: ImageView
    edited: ImageView
    control: ImageView


@dataclass
class EvaluationView:
    """An evaluation that has run on the folder: its table, summary text and figure."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, str]]
    summary: str
    figure: Path | None


@dataclass
class RunView:
    """A run folder as the report sees it."""

    path: Path
    config: dict[str, Any]
    neurons: list[NeuronView]
    score_kind: str = "mean"
    has_cosy: bool = False
    has_truth: bool = False
    evaluations: list[EvaluationView] = field(default_factory=list)
    outages: list[OutageRecord] = field(default_factory=list)
    """Times the inference server or the LLM endpoint stopped answering (``outages.json``)."""

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.resolve().name


def normalise(text: str | None) -> str:
    """Lower case with single spaces, for comparing concepts."""
    return " ".join(str(text or "").lower().split())


def float_or_none(value: Any) -> float | None:
    """A float (infinities kept), or None for blanks, NaN and text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def finite(value: Any) -> float | None:
    """A finite float, or None for blanks, NaN, infinities and text."""
    number = float_or_none(value)
    return number if number is not None and math.isfinite(number) else None


def read_config(folder: RunFolder) -> dict[str, Any]:
    """The run's config as a dict; ``ReportError`` when the folder is not a run."""
    path = folder.config
    if not path.is_file():
        raise ReportError(
            f"{folder.path} is not a LINE run folder (no {path.name}); pass the folder given to "
            "`line run --out DIR` or `line demo --out DIR`"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error}); is the run folder damaged?"
        ) from error
    if not isinstance(config, dict) or "target" not in config or "layer" not in config:
        raise ReportError(f"{path} has no target and layer; is it a LINE run folder?")
    return config


def read_evaluations(folder: RunFolder) -> list[EvaluationView]:
    """Every evaluation of the run folder (``RunFolder.evaluations``) as the index shows it."""
    views = []
    for files in folder.evaluations():
        rows = read_rows(files.csv)
        summary = files.summary.read_text(errors="replace") if files.summary.is_file() else ""
        views.append(
            EvaluationView(
                files.name,
                files.title,
                list(rows[0]) if rows else [],
                rows,
                summary,
                files.figure if files.figure.is_file() else None,
            )
        )
    return views


def read_ablation(folder: RunFolder) -> dict[str, list[AblationView]]:
    """The ablated images per neuron (keyed by ``thread_id``), read with
    :func:`evals.ablation.read_ablation`; empty without an ablation."""
    rows, pairs = evals_read_ablation(folder.evaluation("ablation"))
    labels = {
        thread_id(row["layer"], int(row["unit"])): (row["label"], row["control_concept"])
        for row in rows
    }
    views: dict[str, list[AblationView]] = {}
    for neuron, items in pairs.items():
        label, control = labels.get(neuron, ("", ""))

        def picture(image_id: str, value: float, concept: str) -> ImageView:
            return ImageView(image_id, float_or_none(value), "", None, concept, 0)

        views[neuron] = [
            AblationView(
                picture(item.source, item.before, "before"),
                picture(item.edited, item.after, f"{label} removed"),
                picture(item.control_edited, item.control_after, f"{control} removed"),
            )
            for item in items
        ]
    return views


COSY_KNOWN = {"layer", "unit", "concept", "auc", "mad", "p", "neuron"}
"""The CoSy columns the report shows by name; the others are listed as extras."""


def read_cosy(folder: RunFolder) -> dict[tuple[str, int], list[CosyRow]]:
    """The CoSy table's rows by (layer, unit), read with :func:`evals.cosy_eval.read_cosy_csv`
    (column names case-insensitive: ``AUC``/``auc``); empty when no CoSy evaluation ran."""
    out: dict[tuple[str, int], list[CosyRow]] = {}
    for row in read_cosy_csv(folder.cosy_csv()):
        out.setdefault((str(row.get("layer", "")), row["unit"]), []).append(
            CosyRow(
                concept=str(row.get("concept", "")),
                auc=finite(row.get("auc")),
                mad=finite(row.get("mad")),
                p=finite(row.get("p")),
                extra={k: v for k, v in row.items() if k not in COSY_KNOWN and k and v},
            )
        )
    return out


def toy_world_truth(config: Mapping[str, Any]) -> dict[int, PlantedUnit]:
    """Planted units (or a toy basis's latents) by index when the run's target is the toy
    world's planted model."""
    if not str(config.get("target", "")).startswith("planted:"):
        return {}
    units = planted_ground_truth()
    if config.get("basis"):  # a toy basis's latents (toyworld.latents)
        try:
            units = toy_basis_truth(load_basis(str(config["basis"]))) or []
        except BasisError:  # the file moved: no truth column
            units = []
    return {unit.unit: unit for unit in units if unit.layer == config["layer"]}


def truth_columns(
    record: NeuronRecord, planted: PlantedUnit | None
) -> tuple[str | None, str | None]:
    """(truth, match) from the record where the run checked it (``line demo``), else from the
    toy world's planted unit; match is ``True``, ``False`` or ``-`` (a unit with no concept)."""
    if record.truth is not None:
        match = record.truth.match
        return record.truth.concept, "-" if match is None else str(match)
    if planted is None:
        return None, None
    match_text: str | None = None
    if record.status == "done":
        matched = attribute_match(record.label, planted)
        match_text = "-" if matched is None else str(bool(matched))
    return planted.concept, match_text


def entry_views(entries: Iterable[ConceptEntry]) -> list[EntryView]:
    """A record's entries as views, with the best score so far after each."""
    views = []
    best: float | None = None
    for index, entry in enumerate(entries):
        score = finite(entry.score)
        images = [
            ImageView(
                image_id=image_id,
                activation=finite(entry.activations[i]) if i < len(entry.activations) else None,
                prompt=entry.prompts[i] if i < len(entry.prompts) else "",
                seed=entry.seeds[i] if i < len(entry.seeds) else None,
                concept=entry.concept,
                iteration=entry.iteration,
            )
            for i, image_id in enumerate(entry.image_ids)
        ]
        new_best = score is not None and (best is None or score > best)
        if new_best:
            best = score
        views.append(
            EntryView(
                index=index,
                concept=entry.concept,
                score=score,
                iteration=entry.iteration,
                source=entry.source,
                images=images,
                best_so_far=best,
                new_best=new_best,
            )
        )
    return views


def edit_views(edits: Iterable[EditExperiment]) -> list[EditView]:
    """The agent's ``edit_images`` experiments of a record as views."""
    views = []
    for index, edit in enumerate(edits):
        iteration = edit.after_iteration
        instruction = edit.instruction
        pairs = [
            EditPair(
                ImageView(source, finite(before), "", None, concept, iteration),
                ImageView(edited, finite(after), instruction, seed, instruction, iteration),
                finite(drop),
            )
            for source, edited, before, after, drop, concept, seed in zip(
                edit.source_ids,
                edit.edited_ids,
                edit.before,
                edit.after,
                edit.drops,
                edit.source_concepts,
                edit.seeds,
                strict=False,
            )
        ]
        views.append(EditView(index, instruction, iteration, pairs, finite(edit.mean_drop)))
    return views


def group_views(record: NeuronRecord) -> tuple[list[ConceptGroupRecord] | None, str]:
    """The record's concept groups in the order the analysis gave them (best first), or
    ``(None, why)`` when the run did not group this neuron's concepts."""
    if record.groups is not None:
        return list(record.groups), ""
    if record.groups_note:
        return None, record.groups_note
    return None, (
        "concepts were not grouped: the run was made with --no-groups (or before LINE stored "
        "groups in its records)"
    )


def neuron_from_record(record: NeuronRecord, slug: str) -> NeuronView:
    """A neuron's view from its record (``slug``: the record's file stem, which names its
    report page too)."""
    result = record.result or NeuronResult()
    summary = record.summary or SummaryStep()
    confirmation = record.confirmation
    groups, groups_note = group_views(record)
    return NeuronView(
        layer=record.layer,
        unit=record.unit,
        slug=slug,
        status=record.status,
        reason=record.reason,
        label=result.label,
        score=finite(result.score),
        selective=result.selective,
        verdict=result.verdict,
        score_low=finite(result.score_low),
        score_high=finite(result.score_high),
        mean_activation=finite(result.mean_activation),
        search_score=finite(result.search_score),
        choice=result.choice,
        inhibitor=result.inhibitor,
        inhibitor_score=finite(result.inhibitor_score),
        inhibitor_verdict=result.inhibitor_verdict,
        confirmation=confirmation_views(confirmation),
        confirmation_images=confirmation.images_per_candidate if confirmation else 0,
        control_images=confirmation.control_images if confirmation else 0,
        label_source=result.label_source,
        summary_concept=result.summary_concept or summary.concept or "",
        summary_text=result.summary_text or summary.text,
        counters={k: int(v) for k, v in record.counters.items()},
        entries=entry_views(record.entries),
        seed_concepts=list(record.neuron.seed_concepts),
        llm_log=list(record.llm_log),
        edits=edit_views(record.edits),
        groups=groups,
        groups_note=groups_note,
    )


def file_signature(path: Path) -> str:
    """Changes whenever the file is rewritten (modification time and size)."""
    stat = path.stat()
    return f"{stat.st_mtime_ns}:{stat.st_size}"


def run_units(config: Mapping[str, Any], folder: RunFolder) -> list[tuple[str, int]]:
    """The run's (layer, unit) pairs: the config's units, plus any other record on disk."""
    layer = str(config["layer"])
    pairs = [(layer, int(unit)) for unit in config.get("units") or []]
    known = {folder.record_path(*pair).stem for pair in pairs}
    extra = []
    for path in folder.record_paths():
        name, separator, unit = path.stem.rpartition("__")
        if separator and unit.isdigit() and path.stem not in known:
            extra.append((name, int(unit)))
    return pairs + sorted(extra)


def score_kind(config: Mapping[str, Any]) -> str:
    """What a score is in this run: ``mean``, ``mad`` or ``auc``."""
    overrides = config.get("variant_overrides") or {}
    if overrides.get("score"):
        return str(overrides["score"])
    try:
        return load_variant(str(config.get("prompts") or "paper"), **overrides).settings.score
    except Exception:  # a variant folder that moved: the report still builds
        return "mean"


def load_run(run_dir: str | Path) -> RunView:
    """Read a run folder (no server needed): the config, each neuron's record, the
    evaluations' outputs."""
    folder = RunFolder(run_dir)
    config = read_config(folder)
    cosy = read_cosy(folder)
    ablation = read_ablation(folder)
    planted = toy_world_truth(config)
    views = []
    for layer, unit in run_units(config, folder):
        path = folder.record_path(layer, unit)
        slug = path.stem
        record = None
        signature = ""
        try:
            signature = file_signature(path)
            record = read_record_file(path)
        except OSError:  # no record yet (or being replaced right now: the next build reads it)
            record = None
        except RecordError as error:
            raise ReportError(str(error)) from error
        if record is not None:
            view = neuron_from_record(record, slug)
            view.layer, view.unit = layer, unit
        else:
            view = NeuronView(layer=layer, unit=unit, slug=slug, status="unfinished")
            record = NeuronRecord.unfinished(str(config["target"]), layer, unit)
        view.record_signature = signature
        view.cosy = cosy.get((layer, unit), [])
        view.ablation = ablation.get(thread_id(layer, unit), [])
        planted_unit = planted.get(unit) if layer == config["layer"] else None
        view.truth, view.match = truth_columns(record, planted_unit)
        views.append(view)
    return RunView(
        path=folder.path,
        config=config,
        neurons=views,
        score_kind=score_kind(config),
        has_cosy=any(view.cosy for view in views),
        has_truth=any(view.truth is not None for view in views),
        evaluations=read_evaluations(folder),
        outages=folder.read_outages(),
    )
