"""The agent's tools and the shared render-and-measure step behind them.

Each tool is a LangChain tool run by LangGraph's ``ToolNode``. The LLM sees its name, its
description and its argument schema only; the neuron, the budget and the server client come
from the run context (``ToolRuntime.context``, a :class:`NeuronContext`) and what was tried so
far from the graph state (``ToolRuntime.state``). The agentic tools change the state by
returning ``Command(update=...)``; :func:`agentic_tool_node` turns every failure into an error
message for the LLM, so a tool never raises into the graph.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

import numpy as np
from langchain_core.messages import AnyMessage, ToolCall, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.errors import GraphBubbleUp
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.prebuilt.tool_node import ToolCallRequest, ToolInvocationError
from langgraph.types import Command
from pydantic import BaseModel, Field

from inference.wire import DEFAULT_RENDER, RenderOptions
from prompts.variant import PromptVariant
from tools.availability import EndpointUnreachable
from tools.client import InferenceClient, LineServerError
from tools.llm_images import extreme_images
from tools.scoreboard import (
    ConceptEntry,
    Scoreboard,
    check_concept,
    format_score_lines,
    validate_concept,
)
from tools.scoring import normalised_drops, score_activations

MAX_IMAGES_PER_CALL = 16
MAX_EDITS_PER_CALL = 8
MAX_INSTRUCTION_WORDS = 20
MAX_INSTRUCTION_CHARS = 200


@dataclass(kw_only=True)
class NeuronContext:
    """What the tools need but the LLM never sees or chooses: the neuron, its budget (in the
    prompt variant) and the server client. LangGraph hands it to nodes and tools as the runtime
    context; it is not checkpointed."""

    client: InferenceClient
    variant: PromptVariant
    target: str
    layer: str
    unit: int
    render: RenderOptions = DEFAULT_RENDER  # the generator and its settings, for every image
    run_seed: int = 0
    control_activations: np.ndarray | None = None  # this unit on the control set, for MAD/AUC
    editor: str | None = None  # the server's image editor: the agentic edit_images tool
    llm_image_cache: dict[str, str] = field(default_factory=dict)  # image id -> base64 PNG


def image_seed(run_seed: int, ctx: NeuronContext, concept: str, index: int) -> int:
    """The seed of a concept's ``index``-th image: fixed by (run seed, neuron, concept, index)."""
    key = f"{run_seed}|{ctx.target}|{ctx.layer}|{ctx.unit}|{concept}|{index}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def concept_prompts(ctx: NeuronContext, concept: str, count: int) -> tuple[list[str], list[int]]:
    """The image prompts and seeds of ``count`` images of a concept for this neuron."""
    seeds = [image_seed(ctx.run_seed, ctx, concept, index) for index in range(count)]
    return [ctx.variant.image_prompt(concept, seed) for seed in seeds], seeds


def confirmation_seeds(run_seed: int, count: int) -> list[int]:
    """The seeds of the confirmation images: the same for every candidate and every neuron of
    a run (a paired comparison; a concept confirmed for one neuron costs the next nothing), and
    from another key space than the search's :func:`image_seed`, so no search round used them."""
    keys = (f"{run_seed}|confirmation|{index}" for index in range(count))
    return [int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) for key in keys]


async def probe_concept(
    ctx: NeuronContext, concept: str, seeds: Sequence[int]
) -> tuple[list[float], list[str], list[str]]:
    """Render a concept on the given seeds and read the unit, in one round trip
    (``POST /v1/probe``): activations, image ids and prompts."""
    prompts = [ctx.variant.image_prompt(concept, seed) for seed in seeds]
    probed = await ctx.client.probe(
        prompts, list(seeds), ctx.target, ctx.layer, units=[ctx.unit], options=ctx.render
    )
    values = [float(value) for value in probed.values[:, 0]]
    return values, [image.id for image in probed.images], prompts


async def render_concept(ctx: NeuronContext, concept: str, count: int) -> dict[str, list]:
    """Render ``count`` images of a concept through the server; prompts, seeds and ids."""
    prompts, seeds = concept_prompts(ctx, concept, count)
    images = await ctx.client.generate_images(prompts, seeds, ctx.render)
    return {"prompts": prompts, "seeds": seeds, "image_ids": [image.id for image in images]}


async def measure_concept(
    ctx: NeuronContext, concept: str, rendered: dict[str, list], iteration: int, source: str
) -> ConceptEntry:
    """Read the unit on a concept's images and score it."""
    result = await ctx.client.activations(
        ctx.target, ctx.layer, rendered["image_ids"], units=[ctx.unit]
    )
    return scored_entry(
        ctx, concept, result.values[:, 0], rendered["image_ids"], rendered["prompts"],
        rendered["seeds"], iteration, source,
    )  # fmt: skip


def scored_entry(
    ctx: NeuronContext,
    concept: str,
    values: Iterable[float],
    image_ids: Sequence[str],
    prompts: Sequence[str],
    seeds: Sequence[int],
    iteration: int,
    source: str,
) -> ConceptEntry:
    """A scoreboard entry of a concept's measured images, scored the variant's way."""
    activations = [float(value) for value in values]
    score = score_activations(ctx.variant.settings.score, activations, ctx.control_activations)
    return ConceptEntry(
        concept=concept,
        score=score,
        activations=activations,
        image_ids=list(image_ids),
        prompts=list(prompts),
        seeds=list(seeds),
        iteration=iteration,
        source=source,
    )


async def evaluate_concept(
    ctx: NeuronContext, concept: str, iteration: int, source: str
) -> ConceptEntry:
    """Render and measure a concept with the variant's number of images, in one round trip to
    the server (``POST /v1/probe``)."""
    _prompts, seeds = concept_prompts(ctx, concept, ctx.variant.settings.images_per_concept)
    values, image_ids, prompts = await probe_concept(ctx, concept, seeds)
    return scored_entry(ctx, concept, values, image_ids, prompts, seeds, iteration, source)


# ----- the state the tools read and write -----------------------------------------------------
def add_counters(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Reducer: counters add up key by key."""
    merged = dict(left or {})
    for key, value in (right or {}).items():
        merged[key] = merged.get(key, 0) + value
    return merged


def merge_dicts(left: dict | None, right: dict | None) -> dict:
    """Reducer: later keys win."""
    return {**(left or {}), **(right or {})}


class ToolState(TypedDict, total=False):
    """The part of a neuron's graph state the tools read and write, with its reducers."""

    messages: Annotated[list[AnyMessage], add_messages]  # the agentic conversation
    entries: Annotated[list[dict], operator.add]  # ConceptEntry rows, in the order tried
    counters: Annotated[dict[str, int], add_counters]
    generated: Annotated[dict[str, dict], merge_dicts]  # agentic: rendered, not yet measured
    edits: Annotated[list[dict], operator.add]  # agentic: edit_images experiments, in order
    iteration: int


NeuronToolRuntime = ToolRuntime[NeuronContext, ToolState]
"""What LangGraph hands each tool besides the LLM's arguments (hidden from the LLM)."""


# ----- argument schemas (what the LLM sees) ---------------------------------------------------
class ProposeConceptArgs(BaseModel):
    concept: str = Field(description="One new visual concept of one to three words.")


class SubmitExplanationArgs(BaseModel):
    concept: str = Field(description="The concept that best explains the unit (1-3 words).")
    summary: str = Field(description="One sentence on the evidence.")


class GenerateImagesArgs(BaseModel):
    concept: str = Field(description="A short visual concept (1-3 words).")
    n: int | None = Field(
        None,
        description=f"How many images, 1 to {MAX_IMAGES_PER_CALL} (default: the prompt "
        "variant's images per concept).",
    )


class MeasureActivationArgs(BaseModel):
    concept: str = Field(description="A concept whose images were generated with generate_images.")


class ReadScoreboardArgs(BaseModel):
    top_k: int = Field(10, description="How many of the best concepts to list.")


class EditImagesArgs(BaseModel):
    instruction: str = Field(
        description="What to change in the images, e.g. 'remove the stripes' or 'replace red "
        f"with blue' (at most {MAX_INSTRUCTION_WORDS} words)."
    )
    top_k: int = Field(
        4, description=f"How many of the unit's top images to edit, 1 to {MAX_EDITS_PER_CALL}."
    )


# ----- answer tools: the LLM answers a question by calling one --------------------------------
# Their result is the checked answer (the artifact of the tool message); a ValueError says why
# an answer cannot be used, and the graph sends that reason back with a re-ask.
async def _propose_concept(concept: str, runtime: NeuronToolRuntime) -> tuple[str, dict[str, str]]:
    """Propose the next concept to test on the unit."""
    concept = validate_concept(concept, runtime.context.variant.settings.max_concept_words)
    if Scoreboard.from_dicts(runtime.state.get("entries", [])).has(concept):
        raise ValueError(f"{concept!r} was already tried; propose a new one")
    return f"'{concept}' will be tested", {"concept": concept}


async def _submit_explanation(
    concept: str, summary: str, runtime: NeuronToolRuntime
) -> tuple[str, dict[str, str]]:
    """Give the final concept that explains the unit, with a one-sentence summary."""
    concept = validate_concept(concept, runtime.context.variant.settings.max_concept_words)
    return f"'{concept}' is the explanation", {"concept": concept, "summary": summary.strip()}


PROPOSE_CONCEPT = StructuredTool.from_function(
    coroutine=_propose_concept,
    name="propose_concept",
    args_schema=ProposeConceptArgs,
    response_format="content_and_artifact",
)
SUBMIT_EXPLANATION = StructuredTool.from_function(
    coroutine=_submit_explanation,
    name="submit_explanation",
    args_schema=SubmitExplanationArgs,
    response_format="content_and_artifact",
)


# ----- agentic tools: experiments the LLM runs, recorded in the state -------------------------
def _reply(runtime: NeuronToolRuntime, text: str, **update: Any) -> Command:
    """The tool's answer to the LLM plus its state update (ToolNode names the message)."""
    message = ToolMessage(text, tool_call_id=runtime.tool_call_id)
    return Command(update={"messages": [message], **update})


async def _generate_images(
    concept: str, runtime: NeuronToolRuntime, n: int | None = None
) -> Command:
    """Render n synthetic photographs of a concept (the variant's images per concept if n is
    not given)."""
    ctx, state = runtime.context, runtime.state
    if n is None:
        n = ctx.variant.settings.images_per_concept
    concept = validate_concept(concept, ctx.variant.settings.max_concept_words)
    if not 1 <= n <= MAX_IMAGES_PER_CALL:
        raise ValueError(f"n must be a whole number from 1 to {MAX_IMAGES_PER_CALL}, got {n!r}")
    left = ctx.variant.settings.max_images - state.get("counters", {}).get("images", 0)
    if n > left:
        raise ValueError(f"only {left} images are left in the budget; ask for fewer")
    if Scoreboard.from_dicts(state.get("entries", [])).has(concept):
        raise ValueError(f"{concept!r} was already measured; try a new concept")
    rendered = await render_concept(ctx, concept, n)
    ids = ", ".join(image_id[:12] for image_id in rendered["image_ids"])
    text = f"generated {n} images of '{concept}' (ids {ids}); now call {MEASURE_ACTIVATION.name}"
    return _reply(runtime, text, generated={concept: rendered}, counters={"images": n})


async def _measure_activation(concept: str, runtime: NeuronToolRuntime) -> str | Command:
    """Measure the unit on a concept's generated images; records and returns its score."""
    ctx, state = runtime.context, runtime.state
    concept = check_concept(concept)
    board = Scoreboard.from_dicts(state.get("entries", []))
    measured = next((entry for entry in board.entries if entry.concept == concept), None)
    if measured is not None:
        return f"{concept}: {measured.score:.4f}\n(already measured)"
    rendered = state.get("generated", {}).get(concept)
    if rendered is None:
        raise ValueError(f"no images of {concept!r} yet; call {GENERATE_IMAGES.name} first")
    if len(board.entries) >= ctx.variant.settings.max_concepts:
        raise ValueError("the concept budget is spent; stop calling tools")
    iteration = state.get("iteration", 0) + 1
    entry = await measure_concept(ctx, concept, rendered, iteration, "agent")
    values = ", ".join(f"{value:.4f}" for value in entry.activations)
    text = f"{concept}: {entry.score:.4f}\nper-image activations: {values}"
    return _reply(runtime, text, entries=[entry.to_dict()], iteration=iteration)


async def _read_scoreboard(runtime: NeuronToolRuntime, top_k: int = 10) -> str:
    """List the best concepts tried so far with their scores."""
    if top_k < 1:
        raise ValueError(f"top_k must be a positive whole number, got {top_k!r}")
    board = Scoreboard.from_dicts(runtime.state.get("entries", []))
    return format_score_lines(board.top(top_k)) or "(no concept measured yet)"


def edit_seed(run_seed: int, ctx: NeuronContext, instruction: str, image_id: str) -> int:
    """The seed of one edit: fixed by (run seed, neuron, instruction, source image)."""
    key = f"{run_seed}|{ctx.target}|{ctx.layer}|{ctx.unit}|edit|{instruction}|{image_id}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def check_instruction(instruction: str) -> str:
    """An edit instruction with its spaces tidied, or a ``ValueError`` saying what is wrong."""
    text = " ".join(str(instruction).split())
    if not text:
        raise ValueError("the instruction is empty; say what to change, e.g. 'remove the stripes'")
    if len(text.split()) > MAX_INSTRUCTION_WORDS or len(text) > MAX_INSTRUCTION_CHARS:
        raise ValueError(
            f"the instruction is too long; keep it to {MAX_INSTRUCTION_WORDS} words, e.g. "
            "'remove the stripes' or 'replace red with blue'"
        )
    return text


async def _edit_images(instruction: str, runtime: NeuronToolRuntime, top_k: int = 4) -> Command:
    """Edit the unit's most activating images with an instruction ('remove the stripes',
    'replace red with blue') and measure the unit again: a large drop means what was edited out
    drives the unit. Use it to test a hypothesis before you settle."""
    ctx, state = runtime.context, runtime.state
    if ctx.editor is None:
        raise ValueError(f"this run has no image editor; use {GENERATE_IMAGES.name} instead")
    instruction = check_instruction(instruction)
    if not 1 <= top_k <= MAX_EDITS_PER_CALL:
        raise ValueError(
            f"top_k must be a whole number from 1 to {MAX_EDITS_PER_CALL}, got {top_k!r}"
        )
    left = ctx.variant.settings.max_images - state.get("counters", {}).get("images", 0)
    if top_k > left:
        raise ValueError(f"only {left} images are left in the budget; edit fewer")
    sources = [
        (shown.image_id, shown.activation, shown.concept)
        for shown in extreme_images(state.get("entries", []), top_k)
        if shown.end == "most"
    ]
    if not sources:
        raise ValueError(
            f"nothing is measured yet: call {GENERATE_IMAGES.name} and {MEASURE_ACTIVATION.name} "
            "first; edit_images edits the unit's most activating images"
        )
    ids = [image_id for image_id, _value, _concept in sources]
    seeds = [edit_seed(ctx.run_seed, ctx, instruction, image_id) for image_id in ids]
    try:
        edited = await ctx.client.edit_images(ids, instruction, seeds, editor=ctx.editor)
    except LineServerError as error:
        if 400 <= error.status < 500:  # the editor cannot do this edit: the LLM may rephrase
            raise ValueError(f"the editor refused the instruction: {error.message}") from error
        raise
    edited_ids = [image.id for image in edited]
    measured = await ctx.client.activations(ctx.target, ctx.layer, edited_ids, units=[ctx.unit])
    before = np.array([value for _id, value, _concept in sources], dtype=float)
    after = np.asarray(measured.values[:, 0], dtype=float)
    control = ctx.control_activations
    floor = float(np.median(control)) if control is not None and len(control) else 0.0
    drops = [
        float(normalised_drops(before[i : i + 1], after[i : i + 1], floor)[0])
        if before[i] > floor + 1e-9
        else None
        for i in range(len(ids))
    ]
    scored = [drop for drop in drops if drop is not None]
    mean_drop = float(np.mean(scored)) if scored else None
    record = {
        "instruction": instruction,
        "editor": ctx.editor,
        "after_iteration": state.get("iteration", 0),
        "source_ids": ids,
        "source_concepts": [concept for _id, _value, concept in sources],
        "edited_ids": edited_ids,
        "seeds": seeds,
        "before": before.tolist(),
        "after": after.tolist(),
        "drops": drops,
        "mean_drop": mean_drop,
        "floor": floor,
    }
    lines = [
        f"edited the unit's {len(ids)} most activating images with '{instruction}' and measured "
        "them again (drop 1 = down to the unit's typical level "
        f"{floor:.4f}, 0 = unchanged, below 0 = it rose)",
        *(
            f"{index}. '{concept}' {value:.4f} -> {after[index - 1]:.4f}, drop "
            + ("n/a (not above the typical level)" if drop is None else f"{drop:.2f}")
            for index, ((_id, value, concept), drop) in enumerate(
                zip(sources, drops, strict=True), 1
            )
        ),
        f"mean activation {before.mean():.4f} -> {after.mean():.4f}, mean drop "
        + ("n/a" if mean_drop is None else f"{mean_drop:.2f}"),
    ]
    return _reply(
        runtime,
        "\n".join(lines),
        edits=[record],
        counters={"images": len(ids), "edited_images": len(ids), "edits": 1},
    )


GENERATE_IMAGES = StructuredTool.from_function(
    coroutine=_generate_images, name="generate_images", args_schema=GenerateImagesArgs
)
MEASURE_ACTIVATION = StructuredTool.from_function(
    coroutine=_measure_activation, name="measure_activation", args_schema=MeasureActivationArgs
)
READ_SCOREBOARD = StructuredTool.from_function(
    coroutine=_read_scoreboard, name="read_scoreboard", args_schema=ReadScoreboardArgs
)
EDIT_IMAGES = StructuredTool.from_function(
    coroutine=_edit_images, name="edit_images", args_schema=EditImagesArgs
)
AGENTIC_TOOLS = [GENERATE_IMAGES, MEASURE_ACTIVATION, READ_SCOREBOARD]
ALL_TOOLS = [PROPOSE_CONCEPT, SUBMIT_EXPLANATION, *AGENTIC_TOOLS]


def agentic_tools(ctx: NeuronContext | None) -> list[StructuredTool]:
    """The tools the agent is offered: :data:`AGENTIC_TOOLS`, and ``edit_images`` when the
    run has an image editor."""
    if getattr(ctx, "editor", None) is None:
        return list(AGENTIC_TOOLS)
    return [*AGENTIC_TOOLS, EDIT_IMAGES]


# ----- running them ----------------------------------------------------------------------------
def _tool_error(call: ToolCall, text: str) -> Command:
    """An error for the LLM, counted as a tool error."""
    message = ToolMessage(
        f"error: {text}", tool_call_id=call["id"], name=call["name"], status="error"
    )
    return Command(update={"messages": [message], "counters": {"tool_errors": 1}})


async def _answer_failures(
    request: ToolCallRequest, execute: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command]]
) -> ToolMessage | Command:
    """Run one tool call; an unknown tool, bad arguments or a failure become an error message."""
    call = request.tool_call
    name = call["name"]
    offered = [tool.name for tool in agentic_tools(request.runtime.context)]
    if request.tool is None or name not in offered:
        return _tool_error(call, f"there is no tool {name!r}; use one of: {', '.join(offered)}")
    try:
        return await execute(request)
    except (GraphBubbleUp, EndpointUnreachable):  # LangGraph's own control flow (interrupts),
        raise  # and an outage that outlasted the patience (the run stops) are no tool failures
    except ToolInvocationError as error:  # arguments the schema rejects
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or 'arguments'}: {problem['msg']}"
            for problem in error.filtered_errors or []
        )
        return _tool_error(call, f"bad arguments for {name}: {problems}")
    except ValueError as error:  # the LLM's mistake, explained by the tool
        return _tool_error(call, str(error))
    except Exception as error:  # a failing server or backend must not kill the run
        return _tool_error(call, f"{name} failed: {type(error).__name__}: {error}")


def agentic_tool_node() -> ToolNode:
    """LangGraph's tool executor for the agentic tools (``edit_images`` runs only where it is
    offered, :func:`agentic_tools`); every failure is answered as text."""
    return ToolNode(
        [*AGENTIC_TOOLS, EDIT_IMAGES], handle_tool_errors=False, awrap_tool_call=_answer_failures
    )
