"""The run record: one typed record per neuron, and the results table derived from it.

A run folder keeps one :class:`NeuronRecord` per neuron (``neurons/<layer>__<unit>.json``).
The runner writes it when the neuron ends; the report, the evaluations and the analyses read it
through :meth:`agent.run_folder.RunFolder.read_record`, never as a raw dict. ``results.csv`` is
derived from the records in one place: :data:`RESULT_FIELDS` (column -> value of a record).

Histories written before this model existed (``record_version`` 1: the same JSON keys, some
missing) are upgraded when read (:meth:`NeuronRecord._upgrade`): every field added later has a
default; a file that is no neuron record is refused with a message saying what to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from analysis.confirmation import ConfirmedCandidate
from tools.retry import FaultKind
from tools.scoreboard import ConceptEntry

RECORD_VERSION = 2
"""1: the histories written before the typed record (upgraded when read); 2: this model."""

Status = Literal["done", "dead", "failed", "unfinished"]
"""A neuron's status: explained, dead in the basis census, failed (``--resume`` retries it),
not finished when the run stopped."""
STATUSES: tuple[Status, ...] = get_args(Status)


class _Part(BaseModel):
    """A part of a record: unknown keys of older or newer records are kept, not refused;
    NaN and infinite scores are written as such (JSON's ``NaN``, ``Infinity``)."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    @field_validator("*", mode="before")
    @classmethod
    def _no_text_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        """A text field the graph (or an older version) left ``null`` reads as ``""``."""
        field = cls.model_fields.get(info.field_name or "")
        return "" if value is None and field is not None and field.annotation is str else value


class NeuronSpec(_Part):
    """Which neuron, and the search budget it ran with."""

    target: str = ""
    layer: str = ""
    unit: int = -1
    iterations: int = 0
    max_concepts: int = 0
    max_images: int = 0
    max_llm_turns: int = 0
    seed_concepts: list[str] = Field(default_factory=list)


class Confirmation(_Part):
    """The confirmation step: every candidate (:class:`analysis.confirmation.ConfirmedCandidate`),
    the label and inhibitor it chose, and why."""

    label: str = ""
    best: str = ""
    reason: str = ""
    margin: float | None = None
    images_per_candidate: int = 0
    control_images: int = 0
    candidates: list[ConfirmedCandidate] = Field(default_factory=list)
    inhibitor: str | None = None
    """The confirmed inhibitor (None: the run checked none, or none stood out)."""
    inhibitor_candidates: list[ConfirmedCandidate] = Field(default_factory=list)


class NeuronResult(_Part):
    """The neuron's answer: the confirmed label with its score, interval and verdict."""

    label: str = ""
    score: float | None = None
    score_low: float | None = None
    score_high: float | None = None
    verdict: str = ""
    selective: bool | None = None
    mean_activation: float | None = None
    inhibitor: str = ""
    inhibitor_score: float | None = None
    inhibitor_low: float | None = None
    inhibitor_high: float | None = None
    inhibitor_verdict: str = ""
    search_score: float | None = None
    candidates: int | None = None
    choice: str = ""
    label_source: str = ""
    summary_concept: str = ""
    summary_text: str = ""


class SummaryStep(_Part):
    """The search's summary step (its concept is scored like any other)."""

    concept: str | None = None
    """None: the LLM gave no usable summary and nothing was measured."""
    text: str = ""
    fallback: bool = False
    """The LLM gave no usable summary; the best-scoring concept stands."""


class EditExperiment(_Part):
    """One ``edit_images`` call of the agent: its most activating images edited with an
    instruction and measured again (``tools.agent_tools``)."""

    instruction: str = ""
    editor: str = ""
    after_iteration: int = 0
    source_ids: list[str] = Field(default_factory=list)
    source_concepts: list[str] = Field(default_factory=list)
    edited_ids: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    before: list[float] = Field(default_factory=list)
    after: list[float] = Field(default_factory=list)
    drops: list[float | None] = Field(default_factory=list)
    """1: down to the unit's typical level (``floor``), 0: unchanged; None: the image was not
    above that level."""
    mean_drop: float | None = None
    floor: float = 0.0


class ConceptGroupRecord(_Part):
    """One meaning among the high-scoring concepts (polysemanticity), best concept first."""

    concepts: list[str]
    scores: list[float]
    cores: list[str] = Field(default_factory=list)

    @property
    def best_concept(self) -> str:
        """The group's best-scoring concept."""
        return self.concepts[0] if self.concepts else ""

    @property
    def best_score(self) -> float:
        """The group's best score."""
        return self.scores[0] if self.scores else float("nan")

    @property
    def members(self) -> list[tuple[str, float]]:
        """(concept, score) pairs, best first."""
        return list(zip(self.concepts, self.scores, strict=True))


class TruthCheck(_Part):
    """The label against a known truth (the toy world's planted units)."""

    concept: str
    """The planted concept (``none`` for a unit with no concept)."""
    match: bool | None = None
    """Whether the label names it; None where the unit has no concept to name."""
    verdict_right: bool | None = None
    """Whether the verdict (selective or not) is right."""


class NeuronRecord(BaseModel):
    """Everything one neuron's explanation left: the run folder's unit of record."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")

    record_version: int = RECORD_VERSION
    neuron: NeuronSpec = Field(default_factory=NeuronSpec)
    status: Status = "unfinished"
    reason: str = ""
    result: NeuronResult | None = None
    summary: SummaryStep | None = None
    confirmation: Confirmation | None = None
    counters: dict[str, int | float] = Field(default_factory=dict)
    entries: list[ConceptEntry] = Field(default_factory=list)
    """Every concept the search rendered and measured, in the order tried
    (:class:`tools.scoreboard.ConceptEntry`)."""
    llm_log: list[dict[str, Any]] = Field(default_factory=list)
    edits: list[EditExperiment] = Field(default_factory=list)
    """The agent's ``edit_images`` experiments."""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    """The agentic conversation (role, content)."""
    census: dict[str, Any] | None = None
    """The basis census of a dead unit."""
    failed_calls: dict[str, int] = Field(default_factory=dict)
    """Faults of LLM calls that failed for good (in no checkpoint; a resume keeps counting)."""
    outage_waits: dict[str, int | float] = Field(default_factory=dict)
    """The outages this neuron waited for, over every session of the run."""
    groups: list[ConceptGroupRecord] | None = None
    """Polysemanticity groups, best first; None: not computed (see ``groups_note``)."""
    groups_note: str = ""
    truth: TruthCheck | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Upgrade a history written before this model (no ``record_version``: version 1):
        a status it lacks is ``done`` with a result, else ``failed``; a status this version
        does not know is ``failed``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a neuron record is a JSON object, not {type(data).__name__}")
        if "record_version" in data:
            return data
        upgraded = {**data, "record_version": RECORD_VERSION}
        if "status" in data or "result" in data:
            status = data.get("status") or ("done" if data.get("result") else "failed")
            upgraded["status"] = status if status in STATUSES else "failed"
        return upgraded

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], status: Status, reason: str = "", **extra: Any
    ) -> NeuronRecord:
        """The record of a neuron's graph state (a LangGraph state dict); ``extra`` sets the
        fields no state holds (``failed_calls``, ``outage_waits``, ``census``)."""
        messages = [
            {"role": message.type, "content": message.content}
            for message in state.get("messages") or []
        ]
        return cls.model_validate(
            {
                "neuron": state.get("neuron") or {},
                "status": status,
                "reason": reason,
                "result": state.get("result"),
                "summary": state.get("summary"),
                "confirmation": state.get("confirmation"),
                "counters": state.get("counters") or {},
                "entries": state.get("entries") or [],
                "llm_log": state.get("llm_log") or [],
                "edits": state.get("edits") or [],
                "messages": messages,
                **extra,
            }
        )

    @classmethod
    def unfinished(
        cls,
        target: str,
        layer: str,
        unit: int,
        reason: str = "",
        counters: Mapping[str, int | float] | None = None,
    ) -> NeuronRecord:
        """The record of a neuron that has not finished (nothing written for it yet)."""
        return cls(
            neuron=NeuronSpec(target=target, layer=layer, unit=unit),
            status="unfinished",
            reason=reason,
            counters=dict(counters or {}),
        )

    @property
    def layer(self) -> str:
        """The neuron's layer."""
        return self.neuron.layer

    @property
    def unit(self) -> int:
        """The neuron's unit index."""
        return self.neuron.unit

    def for_results(self) -> NeuronRecord:
        """The record without its evidence (concept entries, LLM log, messages, edits, the
        confirmation): what ``results.csv`` needs. The runner keeps this of each
        finished neuron, so the evidence of 1,000 neurons is on disk, not in memory."""
        return self.model_copy(
            update={"entries": [], "llm_log": [], "messages": [], "edits": [], "confirmation": None}
        )

    @property
    def label(self) -> str:
        """The final label ('' while there is none)."""
        return self.result.label if self.result else ""

    def counter(self, name: str) -> int | float:
        """One counter (0 when never counted)."""
        return self.counters.get(name, 0)

    @property
    def tokens(self) -> int | float:
        """Input plus output tokens spent on the neuron."""
        return self.counter("input_tokens") + self.counter("output_tokens")

    @property
    def faults(self) -> int | float:
        """Failed LLM requests, unusable answers and tool errors (:data:`FAULT_COUNTERS`)."""
        return sum(self.counter(key) for key in FAULT_COUNTERS)

    def groups_text(self, digits: int = 2) -> str:
        """``star (1.02) | cross (0.93)``; empty for no group."""
        return " | ".join(
            f"{group.best_concept} ({group.best_score:.{digits}f})" for group in self.groups or []
        )


# what ``faults`` adds up: failed LLM requests (retried), unusable answers (re-asked) and
# tool calls the agent got wrong (answered with an error)
FAULT_COUNTERS = (*(kind.value for kind in FaultKind), "reasks", "tool_errors")


def _result(field: str) -> Callable[[NeuronRecord], object]:
    """A column that is one field of the record's result ('' without a result)."""

    def value(record: NeuronRecord) -> object:
        found = getattr(record.result, field, None) if record.result else None
        if found is None or (isinstance(found, float) and math.isnan(found)):
            return ""
        return found

    return value


def _counter(name: str) -> Callable[[NeuronRecord], object]:
    """A column that is one counter."""
    return lambda record: record.counter(name)


RESULT_FIELDS: dict[str, Callable[[NeuronRecord], object]] = {
    "target": lambda record: record.neuron.target,
    "layer": lambda record: record.neuron.layer,
    "unit": lambda record: record.neuron.unit,
    "label": _result("label"),
    "score": _result("score"),
    "score_low": _result("score_low"),
    "score_high": _result("score_high"),
    "verdict": _result("verdict"),
    "selective": _result("selective"),
    "mean_activation": _result("mean_activation"),
    "inhibitor": _result("inhibitor"),
    "inhibitor_score": _result("inhibitor_score"),
    "inhibitor_verdict": _result("inhibitor_verdict"),
    "search_score": _result("search_score"),
    "candidates": _result("candidates"),
    "choice": _result("choice"),
    "status": lambda record: record.status,
    "reason": lambda record: record.reason,
    "summary": _result("summary_text"),
    "llm_calls": _counter("llm_calls"),
    "tokens": lambda record: record.tokens,
    "llm_images": _counter("llm_images"),
    "images": _counter("images"),
    "edits": _counter("edits"),
    "confirmation_images": _counter("confirmation_images"),
    "reasks": _counter("reasks"),
    "faults": lambda record: record.faults,
    **{kind.value: _counter(kind.value) for kind in FaultKind},
    "tool_errors": _counter("tool_errors"),
    "lost_rounds": _counter("lost_rounds"),
    "restarts": _counter("restarts"),
    "outages": _counter("outages"),
    "outage_s": lambda record: round(record.counter("outage_ms") / 1000, 1),
}
"""``results.csv``'s columns, each a value of the neuron's record. ``outages``: how many outages
of the inference server or the LLM endpoint the neuron waited for (every neuron waits for the
same outage together); ``outage_s``: the seconds it waited."""

GROUP_FIELDS: dict[str, Callable[[NeuronRecord], object]] = {
    "groups": lambda record: "" if record.groups is None else len(record.groups),
    "group_concepts": lambda record: record.groups_text(),
}
"""Columns added where the run computed polysemanticity groups: how many meanings score high,
and each one's best concept."""

TRUTH_FIELDS: dict[str, Callable[[NeuronRecord], object]] = {
    "truth": lambda record: record.truth.concept if record.truth else "",
    "match": lambda record: (
        "" if record.truth is None else "-" if record.truth.match is None else record.truth.match
    ),
    "verdict_right": lambda record: "" if record.truth is None else record.truth.verdict_right,
}
"""Columns added where the records carry a known truth (the demo, planted units)."""

RESULT_COLUMNS = list(RESULT_FIELDS)
GROUP_COLUMNS = list(GROUP_FIELDS)
TRUTH_COLUMNS = list(TRUTH_FIELDS)


def result_fields(records: Sequence[NeuronRecord]) -> dict[str, Callable[[NeuronRecord], object]]:
    """The columns of these records' results table: always :data:`RESULT_FIELDS`, then the
    group and truth columns where any record has them."""
    fields = dict(RESULT_FIELDS)
    if any(record.groups is not None for record in records):
        fields.update(GROUP_FIELDS)
    if any(record.truth is not None for record in records):
        fields.update(TRUTH_FIELDS)
    return fields


def result_row(
    record: NeuronRecord, fields: Mapping[str, Callable[[NeuronRecord], object]] | None = None
) -> dict[str, Any]:
    """One row of ``results.csv`` (every column of ``fields``, default :data:`RESULT_FIELDS`
    plus the group and truth columns this record has)."""
    if fields is None:
        fields = result_fields([record])
    return {column: value(record) for column, value in fields.items()}
