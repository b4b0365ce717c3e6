"""Explaining many neurons at once: concurrent LangGraph threads, checkpoints, the run folder.

A run folder holds ``config.json`` (the resolved settings), ``checkpoints.sqlite`` (one LangGraph
thread per neuron), ``neurons/<layer>__<unit>.json`` (each neuron's record,
:class:`agent.record.NeuronRecord`), ``results.csv`` (one row per neuron, derived from the
records; plus ``results.parquet`` when pyarrow is installed) and, when an endpoint stopped
answering, ``outages.json``.

When the inference server or the LLM endpoint stops answering, every neuron waits for it
together (``tools.availability``): the progress says what is unreachable and since when, each
neuron counts the outages it waited for, and an outage that outlasts the run's
``outage_patience_s`` stops the run (:class:`RunStopped`): finished neurons are kept and the
others resume from their last checkpointed step with ``line run --resume``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from agent.graph import build_graph
from agent.providers import LLMCallError, LLMClient
from agent.record import ConceptGroupRecord, NeuronRecord, NeuronSpec, Status
from agent.run_folder import OutageRecord, RunFolder, RunSettings
from agent.state import NeuronState, RunContext
from inference.wire import RenderOptions
from prompts.variant import PromptVariant
from tools.agent_tools import add_counters
from tools.availability import (
    NEURON_WAITS,
    AvailabilityGate,
    EndpointUnreachable,
    OutageWaits,
    clock_time,
)
from tools.census import Census, take_census
from tools.client import InferenceClient
from tools.controlset import MIN_CONTROL_IMAGES, ControlSet, ControlSetError, measure_control

if TYPE_CHECKING:  # the sentence model loads only when groups are computed
    from analysis.similarity import SentenceEmbedder

log = logging.getLogger("line.run")


@dataclass
class RunProgress:
    """Live totals for a progress bar."""

    total: int
    done: int = 0
    failed: int = 0
    images: int = 0
    llm_calls: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    waiting: list[str] = field(default_factory=list)
    """What every neuron waits for now (``waiting for <endpoint> (down since HH:MM:SS)``)."""


class RunStopped(RuntimeError):
    """An endpoint stayed unreachable for the run's outage patience: the run stopped. The
    message names the endpoint and how to continue; ``rows`` are the results as they stand
    (``unfinished`` for the neurons the resumed run continues)."""

    def __init__(self, message: str, rows: list[dict], cause: EndpointUnreachable) -> None:
        super().__init__(message)
        self.rows = rows
        self.cause = cause


def thread_id(layer: str, unit: int, attempt: int = 1) -> str:
    """The LangGraph thread of a neuron's attempt (a failed neuron restarts on a new thread)."""
    return f"{layer}#{unit}" if attempt == 1 else f"{layer}#{unit}@{attempt}"


STEPS_PER_TURN = 16
"""Tool calls per agent turn the recursion limit allows for on average."""


def attempt_config(layer: str, unit: int, attempt: int, variant: PromptVariant) -> RunnableConfig:
    """The LangGraph config of one attempt at a neuron."""
    settings = variant.settings
    return {
        "configurable": {"thread_id": thread_id(layer, unit, attempt)},
        # an agent turn is one step plus one per tool call (each call runs as its own step)
        "recursion_limit": (2 + STEPS_PER_TURN) * settings.max_llm_turns
        + 10 * settings.iterations
        + 50,
    }


NeuronGraph = CompiledStateGraph[NeuronState, RunContext, NeuronState, NeuronState]


async def latest_attempt(graph: NeuronGraph, layer: str, unit: int) -> tuple[int, StateSnapshot]:
    """The neuron's latest attempt number and its checkpointed state (empty when new)."""
    attempt = 1
    snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id(layer, unit)}})
    while snapshot.values:
        later = await graph.aget_state(
            {"configurable": {"thread_id": thread_id(layer, unit, attempt + 1)}}
        )
        if not later.values:
            break
        attempt, snapshot = attempt + 1, later
    return attempt, snapshot


def cannot_continue(snapshot: StateSnapshot) -> bool:
    """An attempt that stopped where running again gives the same failure: it reached the
    final step without a single measured concept (every LLM answer was unusable)."""
    return tuple(snapshot.next) == ("confirm",) and not snapshot.values.get("entries")


BUDGET_COUNTERS = ("agent_turns", "images")  # spent per attempt; a new attempt gets them afresh


def carry_costs(start: NeuronState, failed: Mapping[str, Any], attempt: int) -> NeuronState:
    """A new attempt's first state, carrying the failed attempt's costs, faults and LLM log."""
    counters = {k: v for k, v in failed.get("counters", {}).items() if k not in BUDGET_COUNTERS}
    counters["restarts"] = attempt - 1
    return {**start, "counters": counters, "llm_log": list(failed.get("llm_log", []))}


def seed_concepts(
    labels: list[str | None], activations: np.ndarray, top: int, random_count: int, seed: int
) -> list[str]:
    """The paper's seeding: the ``top`` classes that activate the unit most, plus
    ``random_count`` other classes drawn with ``seed``. Empty without class labels."""
    classes = list(dict.fromkeys(label for label in labels if label))
    if not classes:
        return []
    labels_array = np.asarray(labels, dtype=object)
    means = {name: float(np.mean(activations[labels_array == name])) for name in classes}
    ranked = sorted(classes, key=lambda name: -means[name])
    rest = ranked[top:]
    drawn = random.Random(seed).sample(rest, min(random_count, len(rest)))
    return ranked[:top] + drawn


def initial_state(
    target: str, layer: str, unit: int, variant: PromptVariant, seeds: Sequence[str] = ()
) -> NeuronState:
    """A neuron's first state; budgets are part of it so routing reads state alone."""
    settings = variant.settings
    neuron = NeuronSpec(
        seed_concepts=list(seeds),
        target=target,
        layer=layer,
        unit=unit,
        iterations=settings.iterations,
        max_concepts=settings.max_concepts,
        max_images=settings.max_images,
        max_llm_turns=settings.max_llm_turns,
    )
    return {
        "neuron": neuron.model_dump(),
        "entries": [],
        "llm_log": [],
        "counters": {},
        "iteration": 0,
    }


def previous_failed_calls(
    folder: RunFolder, layer: str, unit: int, key: str = "failed_calls"
) -> dict[str, int]:
    """Faults of LLM calls that failed for good in earlier sessions of this neuron (a resumed
    run keeps counting them: they are in no checkpoint); with ``key="outage_waits"``, the
    outages it waited for in earlier sessions."""
    try:
        record = folder.read_record(layer, unit)
    except (OSError, ValueError):  # unreadable: nothing to carry over
        return {}
    if record is None:
        return {}
    return {name: int(value) for name, value in getattr(record, key).items()}


def wait_counters(waits: OutageWaits) -> dict[str, int]:
    """A neuron's outage waits as counters: ``outages`` and ``outage_ms``."""
    if not waits.count:
        return {}
    return {"outages": waits.count, "outage_ms": round(waits.seconds * 1000)}


def outage_records(
    gates: Sequence[AvailabilityGate], seen: Mapping[int, int], waits: Sequence[OutageWaits]
) -> list[OutageRecord]:
    """The outages of ``gates`` since ``seen`` (gate id -> outages before the run), with how
    many neurons waited for each."""
    waiting: dict[tuple[int, int], int] = {}
    for neuron in waits:
        for key in neuron.waited_s:
            waiting[key] = waiting.get(key, 0) + 1
    records = []
    for gate in gates:
        for outage in gate.outages[seen.get(id(gate), 0) :]:
            records.append(
                OutageRecord(
                    endpoint=outage.endpoint,
                    started=outage.started.isoformat(timespec="seconds"),
                    seconds=round(outage.seconds, 1),
                    outcome=outage.outcome,
                    probes=outage.probes,
                    waiting_neurons=waiting.get((id(gate), outage.check), 0),
                    error=outage.error,
                )
            )
    return sorted(records, key=lambda record: record.started)


RecordHook = Callable[[NeuronRecord], NeuronRecord]
"""Completes a neuron's record before it is written (e.g. a known truth); see
:func:`agent.launch.execute_run`."""


def add_groups(record: NeuronRecord, embedder: SentenceEmbedder | None = None) -> NeuronRecord:
    """The record with its polysemanticity groups in the analysis's order (best first): the
    one place a run's groups are computed (:func:`analysis.polysemanticity.analyse_entries`,
    with ``embedder`` or the default sentence model). Without the offline sentence-embedding
    model the record says why it has none (``groups_note``); a neuron that did not finish gets
    none."""
    from analysis.polysemanticity import analyse_entries  # loads scikit-learn
    from analysis.similarity import EmbedderUnavailable

    if record.status != "done" or not record.entries:
        return record
    try:
        found = analyse_entries(record.entries, embedder=embedder)
    except EmbedderUnavailable as error:
        log.warning("no concept groups: %s", error)
        return record.model_copy(update={"groups": None, "groups_note": f"not grouped: {error}"})
    groups = [
        ConceptGroupRecord(concepts=group.concepts, scores=group.scores, cores=group.cores)
        for group in found.groups
    ]
    return record.model_copy(update={"groups": groups, "groups_note": ""})


async def run_neurons(
    settings: RunSettings,
    folder: RunFolder,
    client: InferenceClient,
    llm: LLMClient,
    variant: PromptVariant,
    on_progress: Callable[[RunProgress], None] | None = None,
    control: ControlSet | None = None,
    complete: RecordHook | None = None,
) -> list[dict]:
    """Explain every unit of the run concurrently; writes each neuron's record as it ends
    (with its polysemanticity groups when ``settings.groups``; ``complete`` adds what the
    caller knows), then ``results.csv`` once, derived from the records; returns its rows (in
    unit order).

    Every unit is first read on the control set (once, batched; without one, on
    :meth:`ControlSet.random_concepts` of the run's generator): its classes seed the paper
    strategy, and its activations serve the MAD and AUC scores and the confirmation. A run in a
    unit basis first takes its census (``tools.census``): dead units are marked ``dead``, not
    explained.

    An endpoint that stops answering is waited for by every neuron together; its outages go
    to ``outages.json`` and each neuron's ``outages`` and ``outage_s``. One that stays down for
    ``settings.outage_patience_s`` (the clients' patience) raises :class:`RunStopped` after
    writing ``results.csv`` with the finished neurons and the ``unfinished`` others.
    """
    progress = RunProgress(total=len(settings.units))
    gates = [*client.gates, *llm.gates]
    seen = {id(gate): len(gate.outages) for gate in gates}
    waits: dict[int, OutageWaits] = {}
    records: dict[int, NeuronRecord] = {}

    def on_outage(_gate: AvailabilityGate) -> None:
        progress.waiting = [text for gate in gates if (text := gate.describe())]
        if on_progress:
            on_progress(progress)

    for gate in gates:
        gate.watch(on_outage)
    try:
        await _explain_units(
            settings,
            folder,
            client,
            llm,
            variant,
            control,
            progress,
            records,
            waits,
            on_progress,
            complete,
        )
    except EndpointUnreachable as error:
        outage = error.outage
        reason = (
            f"the run stopped before this neuron finished: the {error.endpoint} did not answer "
            f"for {outage.seconds:.0f} s; line run --resume continues it"
        )
        ordered = [
            records.get(unit)
            or NeuronRecord.unfinished(
                settings.target,
                settings.layer,
                unit,
                reason,
                wait_counters(waits.get(unit, OutageWaits())),
            )
            for unit in settings.units
        ]
        rows = folder.write_results(ordered)
        raise RunStopped(
            f"the run stopped: the {error.endpoint} has not answered since "
            f"{clock_time(outage.started)} ({outage.seconds:.0f} s, --outage-patience "
            f"{error.patience_s:g}; {outage.error}). Nothing is lost: {len(records)} of "
            f"{len(settings.units)} neurons are finished and the others continue from their "
            f"last step. Once it answers again, run: line run --resume {folder.path}",
            rows,
            error,
        ) from error
    finally:
        for gate in gates:
            gate.unwatch(on_outage)
        folder.add_outages(outage_records(gates, seen, list(waits.values())))
    return folder.write_results([records[unit] for unit in settings.units])


async def _explain_units(
    settings: RunSettings,
    folder: RunFolder,
    client: InferenceClient,
    llm: LLMClient,
    variant: PromptVariant,
    control: ControlSet | None,
    progress: RunProgress,
    records: dict[int, NeuronRecord],
    waits: dict[int, OutageWaits],
    on_progress: Callable[[RunProgress], None] | None,
    complete: RecordHook | None,
) -> None:
    """:func:`run_neurons`' work: the control set, the census, then every unit concurrently
    (each task counting the outages it waits for in ``waits``); the first
    :class:`EndpointUnreachable` cancels the other neurons (their checkpoints stay) and
    propagates."""
    if control is None:
        control = ControlSet.random_concepts(settings.generator, variant.image_prompt)
    measured = await measure_control(
        client, control, settings.target, settings.layer, settings.units, settings.generator
    )
    for skipped in measured.skipped:
        log.warning("control image skipped: %s", skipped)
    if len(measured.kept) < MIN_CONTROL_IMAGES:
        raise ControlSetError(
            f"control set {control.name!r} has {len(measured.kept)} usable images; the "
            f"confirmation's AUC needs at least {MIN_CONTROL_IMAGES}: pass a larger --control"
        )
    control_by_unit = {unit: measured.values[:, i] for i, unit in enumerate(settings.units)}
    labels = measured.labels
    census: Census | None = None
    if settings.basis:
        census = await take_census(
            client, settings.target, settings.layer, settings.units, settings.generator,
            control, measured,
        )  # fmt: skip
        files = folder.evaluation("census")
        census.write(files.csv, files.summary)
        log.warning("%s", census.summary())
    dead = set(census.with_status("dead")) if census else set()

    def completed(record: NeuronRecord) -> NeuronRecord:
        if settings.groups:
            record = add_groups(record)
        return complete(record) if complete else record

    limit = asyncio.Semaphore(max(1, settings.concurrency))
    async with AsyncSqliteSaver.from_conn_string(str(folder.checkpoints)) as saver:
        graph = build_graph(variant.settings.strategy).compile(checkpointer=saver)

        async def explain(unit: int) -> None:
            if census is not None and unit in dead:
                reason = census.dead_reason(unit)
                start = initial_state(settings.target, settings.layer, unit, variant)
                dead_state = {**start, "result": {"selective": False, "verdict": "none"}}
                record = NeuronRecord.from_state(
                    dead_state, "dead", reason, census=asdict(census.unit(unit))
                )
                record = completed(record)
                folder.write_record(record)
                records[unit] = record.for_results()
                progress.done += 1
                if on_progress:
                    on_progress(progress)
                return
            waited = waits[unit] = OutageWaits()
            NEURON_WAITS.set(waited)  # this task's context only: the gates count its waits
            ctx = RunContext(
                client=client,
                llm=llm,
                variant=variant,
                target=settings.target,
                layer=settings.layer,
                unit=unit,
                render=RenderOptions(generator=settings.generator),
                run_seed=settings.seed,
                control_activations=control_by_unit.get(unit),
                editor=settings.editor if variant.settings.strategy == "agentic" else None,
            )
            async with limit:
                status: Status = "done"
                reason = ""
                failed_calls = previous_failed_calls(folder, settings.layer, unit)
                attempt, snapshot = await latest_attempt(graph, settings.layer, unit)
                config = attempt_config(settings.layer, unit, attempt, variant)
                try:
                    if snapshot.values.get("result"):
                        state = snapshot.values
                    elif snapshot.values and not cannot_continue(snapshot):
                        state = await graph.ainvoke(None, config, context=ctx)
                    else:
                        seeds = []
                        if unit in control_by_unit and variant.settings.strategy == "paper":
                            seeds = seed_concepts(
                                labels,
                                control_by_unit[unit],
                                variant.settings.seed_top_classes,
                                variant.settings.seed_random_classes,
                                settings.seed * 1_000_003 + unit,
                            )
                        start = initial_state(settings.target, settings.layer, unit, variant, seeds)
                        if snapshot.values:  # a failed attempt: start over, keep its costs
                            attempt += 1
                            config = attempt_config(settings.layer, unit, attempt, variant)
                            start = carry_costs(start, snapshot.values, attempt)
                        state = await graph.ainvoke(start, config, context=ctx)
                    if not (state.get("result") or {}).get("label"):
                        raise RuntimeError("the neuron's graph ended without a label")
                except EndpointUnreachable:  # the run stops; this neuron resumes later
                    raise
                except Exception as error:
                    status, reason = "failed", f"{type(error).__name__}: {error}"
                    log.warning("neuron %s/%s failed: %s", settings.layer, unit, reason)
                    state = (await graph.aget_state(config)).values
                    if isinstance(error, LLMCallError):  # failed for good: its faults are in
                        spent = {**error.faults, "llm_calls_failed": 1}  # no checkpointed state
                        failed_calls = add_counters(failed_calls, spent)
                outage_waits = add_counters(
                    previous_failed_calls(folder, settings.layer, unit, "outage_waits"),
                    wait_counters(waited),
                )  # waits are in no checkpoint either
                counters = add_counters(state.get("counters"), failed_calls)
                state = {**state, "counters": add_counters(counters, outage_waits)}
                record = completed(
                    NeuronRecord.from_state(
                        state, status, reason, failed_calls=failed_calls, outage_waits=outage_waits
                    )
                )
            folder.write_record(record)
            records[unit] = record.for_results()  # the evidence stays on disk only
            progress.done += status == "done"
            progress.failed += status == "failed"
            progress.images += int(record.counter("images"))
            progress.llm_calls += int(record.counter("llm_calls"))
            progress.tokens += int(record.tokens)
            if on_progress:
                on_progress(progress)

        tasks = [asyncio.create_task(explain(unit)) for unit in settings.units]
        try:
            await asyncio.gather(*tasks)
        except EndpointUnreachable:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
