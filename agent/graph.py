"""The LangGraph state machines that explain one neuron: ``paper`` and ``agentic``.

paper:    [seed: control-set classes] -> propose -> evaluate -> ... (iterations)
          -> summarize -> score_summary -> confirm -> finish
agentic:  agent -> tools, one call after the other (-> malformed) -> agent ... (until the
          budget is spent or the agent stops) -> summarize -> ... finish

The search (everything before ``confirm``) only explores; ``confirm`` re-checks its best
concepts on fresh images against the control set and chooses the label
(:mod:`analysis.confirmation`).

Every node returns a partial state update, checkpointed after it runs, so an interrupted run
resumes at the node it stopped in and no finished step is repeated. The LLM's tool calls run
in LangGraph's ``ToolNode``; the tools themselves are in :mod:`tools.agent_tools`.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

import numpy as np
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.tools import BaseTool, ToolException
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent.answers import (
    UnusableAnswer,
    concept_from_text,
    extract_tool_call,
    required_args_of,
)
from agent.providers import LLMReply, count_tokens, trim_to_fit
from agent.record import Confirmation, NeuronResult, SummaryStep
from agent.state import NeuronState, RunContext
from analysis.confirmation import (
    ConfirmedCandidate,
    ablations,
    choose_inhibitor,
    choose_label,
    duplicates,
    missing_union,
)
from analysis.selectivity import Verdict
from tools.agent_tools import (
    GENERATE_IMAGES,
    MEASURE_ACTIVATION,
    PROPOSE_CONCEPT,
    SUBMIT_EXPLANATION,
    agentic_tool_node,
    agentic_tools,
    confirmation_seeds,
    evaluate_concept,
    probe_concept,
)
from tools.llm_images import count_image_blocks, scoreboard_image_blocks, without_image_data
from tools.scoreboard import (
    MAX_CONCEPT_WORDS,
    Scoreboard,
    check_concept,
    format_score_lines,
    format_tried_lines,
)
from tools.scoring import auc_interval, auc_score

MAX_NUDGES = 2  # reminders when the agent stops calling tools too early
MIN_CONCEPTS = 3  # ...that is, before measuring this many concepts
ABLATION_ROUNDS = 3  # confirmation: how often the contenders' parts are added and re-checked
MAX_CONTENDERS = 3  # ...of at most this many contenders (the best AUCs within the margin)


def _message_record(message: BaseMessage) -> dict[str, Any]:
    """A message as the history's LLM log keeps it: role, content (an image without its
    data), tool calls or call id."""
    record: dict[str, Any] = {"role": message.type, "content": without_image_data(message.content)}
    if isinstance(message, AIMessage) and message.tool_calls:
        record["tool_calls"] = [
            {"name": call["name"], "args": call["args"]} for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage) and message.tool_call_id:
        record["tool_call_id"] = message.tool_call_id
    return record


def _reply_accounting(
    step: str, attempt: int, messages: list, reply: LLMReply
) -> tuple[dict, dict]:
    """A log row and counter increments for one LLM exchange (``llm_images``: the images it
    sent, none for a cache hit)."""
    log = {
        "step": step,
        "attempt": attempt,
        "request": [_message_record(message) for message in messages],
        "response": _message_record(reply.message),
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "cached": reply.cached,
        "attempts": reply.attempts,
    }
    counters = reply.counters()
    images = 0 if reply.cached else count_image_blocks(messages)
    if images:
        counters["llm_images"] = images
    return log, counters


REASK_ECHO_CHARS = 300
"""How much of an unusable plain-text answer a re-ask quotes back to the model."""


def _reask_messages(
    reply_message: AIMessage, reason: str, max_words: int = MAX_CONCEPT_WORDS
) -> list:
    """Messages that tell the LLM why its answer could not be used: its answer (long text cut
    to :data:`REASK_ECHO_CHARS`) and the reason, with the answer format restated."""
    text = (
        f"That answer could not be used: {reason}. Please answer again as asked: one concept, "
        f"a short noun phrase of at most {max_words} words, with no numbers, scores, quotes or "
        "explanation."
    )
    content = reply_message.content
    if isinstance(content, str) and len(content) > REASK_ECHO_CHARS:
        cut = f"{content[:REASK_ECHO_CHARS]} [... {len(content) - REASK_ECHO_CHARS} characters]"
        reply_message = reply_message.model_copy(update={"content": cut})
    calls = getattr(reply_message, "tool_calls", None) or []
    if calls:
        return [reply_message, *(ToolMessage(text, tool_call_id=call["id"]) for call in calls)]
    return [reply_message, HumanMessage(text)]


async def _checked_answer(tool: BaseTool, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """Run an answer tool on the LLM's arguments in LangGraph's ToolNode (inside the node that
    asked, on its state and context): the checked answer, or ``ValueError`` /
    ``ToolException`` saying why it cannot be used."""
    call = ToolCall(name=tool.name, args=args, id=call_id, type="tool_call")
    output = await ToolNode([tool], handle_tool_errors=False).ainvoke([call], get_config())
    return dict(output["messages"][0].artifact)


async def _ask_for_concept(
    ctx: RunContext,
    step: str,
    messages: list,
    tool: BaseTool,
) -> tuple[dict | None, list[dict], dict[str, int]]:
    """Ask until a usable concept comes back (at most ``max_reasks`` re-asks).

    An answer is a call of ``tool`` or, for models without tools, a concept in plain text; the
    concept must be a short noun phrase (:func:`tools.scoreboard.validate_concept`, at most the
    variant's ``max_concept_words``) and the answer tool checks it further (``propose_concept``
    refuses a concept already tried). A re-ask replaces the previous one: the question, the
    last answer and why it failed, so the conversation never grows past one exchange and fits
    a small context window however often the model misses. Returns the checked answer
    (``None`` if every answer was unusable), log rows and counters.
    """
    logs: list[dict] = []
    counters: dict[str, int] = {}
    max_words = ctx.variant.settings.max_concept_words
    conversation = list(messages)
    for attempt in range(ctx.variant.settings.max_reasks + 1):
        reply = await ctx.llm.invoke(conversation, tools=[tool])
        log, spent = _reply_accounting(step, attempt, conversation, reply)
        for key, value in spent.items():
            counters[key] = counters.get(key, 0) + value
        try:
            try:
                _name, args = extract_tool_call(
                    reply.message, [tool.name], max_concept_words=max_words
                )
                call_id = reply.message.tool_calls[0]["id"] or "answer"
            except UnusableAnswer:
                if getattr(reply.message, "tool_calls", None):
                    raise
                # a plain-text answer gives the concept only; other arguments stay empty
                text = concept_from_text(reply.message.text, max_words)
                required = required_args_of([tool])[tool.name]
                args, call_id = {**dict.fromkeys(required, ""), "concept": text}, "text-answer"
            answer = await _checked_answer(tool, args, call_id)
        except (UnusableAnswer, ValueError, ToolException) as error:
            log["unusable"] = str(error)
            logs.append(log)
            counters["reasks"] = counters.get("reasks", 0) + 1
            conversation = [*messages, *_reask_messages(reply.message, str(error), max_words)]
            continue
        logs.append(log)
        return answer, logs, counters
    counters["lost_rounds"] = counters.get("lost_rounds", 0) + 1
    return None, logs, counters


# ----- paper strategy ------------------------------------------------------------------------
async def seed(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Score the seed concepts (control-set classes) before the LLM's first proposal."""
    ctx = runtime.context
    concepts = [check_concept(c) for c in state["neuron"].get("seed_concepts", [])]
    concepts = list(dict.fromkeys(concepts))
    entries = await asyncio.gather(
        *(evaluate_concept(ctx, concept, 0, "seed") for concept in concepts)
    )
    return {
        "entries": [entry.to_dict() for entry in entries],
        "counters": {"images": sum(len(entry.image_ids) for entry in entries)},
    }


def after_start(state: NeuronState) -> str:
    if state["neuron"].get("seed_concepts") and not state.get("entries"):
        return "seed"
    return "propose" if _rounds_left(state) else "summarize"


async def propose(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Ask the LLM for the next concept, given the scoreboard and the tried list."""
    ctx = runtime.context
    settings = ctx.variant.settings
    board = Scoreboard.from_dicts(state.get("entries", []))
    iteration = state.get("iteration", 0)
    prompt = ctx.variant.render(
        "proposal",
        iteration=iteration,
        iterations=settings.iterations,
        scoreboard=format_score_lines(board.top(settings.scoreboard_size)) or "(empty)",
        tried=format_tried_lines(board.tried()) or "(none yet)",
    )
    content: str | list[str | dict] = prompt
    shown: list[dict] = []
    if settings.llm_images:  # a vision LLM sees the scoreboard's extreme images too
        blocks, shown = await scoreboard_image_blocks(
            ctx.client, state.get("entries", []), settings.llm_images, ctx.llm_image_cache
        )
        content = [{"type": "text", "text": prompt}, *blocks] if blocks else prompt
    messages = [SystemMessage(ctx.variant.render("system")), HumanMessage(content)]
    args, logs, counters = await _ask_for_concept(ctx, "propose", messages, PROPOSE_CONCEPT)
    for log in logs if shown else ():
        log["images"] = shown
    update: dict[str, Any] = {"llm_log": logs, "counters": counters}
    if args is None:  # the round is lost, the run goes on
        update["iteration"] = iteration + 1
        update["pending"] = None
    else:
        update["pending"] = {"concept": args["concept"], "source": "proposal"}
    return update


async def evaluate(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Render and measure the pending concept and put it on the scoreboard."""
    ctx = runtime.context
    pending = state.get("pending") or {}
    iteration = state.get("iteration", 0) + 1
    entry = await evaluate_concept(ctx, pending["concept"], iteration, pending["source"])
    return {
        "entries": [entry.to_dict()],
        "iteration": iteration,
        "pending": None,
        "counters": {"images": len(entry.image_ids)},
    }


def after_propose(state: NeuronState) -> str:
    if state.get("pending"):
        return "evaluate"
    return "propose" if _rounds_left(state) else "summarize"


def _rounds_left(state: NeuronState) -> bool:
    return state.get("iteration", 0) < state["neuron"]["iterations"]


def after_evaluate(state: NeuronState) -> str:
    return "propose" if _rounds_left(state) else "summarize"


# ----- agentic strategy ----------------------------------------------------------------------
def _budget_left(state: NeuronState) -> str | None:
    """Why the agentic budget is spent, or ``None`` while it lasts (budgets live in the state)."""
    neuron = state["neuron"]
    counters = state.get("counters", {})
    if len(state.get("entries", [])) >= neuron["max_concepts"]:
        return "concept budget spent"
    if counters.get("images", 0) >= neuron["max_images"]:
        return "image budget spent"
    if counters.get("agent_turns", 0) >= neuron["max_llm_turns"]:
        return "LLM turn budget spent"
    return None


def _fit_conversation(ctx: RunContext, state: NeuronState, messages: list, budget: int) -> list:
    """The agentic conversation as sent: all of it while it fits ``budget`` tokens; else the
    system prompt, the task, a note with the scoreboard so far (standing in for the
    experiments left out) and the latest turns that fit (whole: a tool result keeps its
    call). The state keeps the whole conversation."""
    if count_tokens(messages) <= budget:
        return messages
    board = Scoreboard.from_dicts(state.get("entries", []))
    scores = format_score_lines(board.top(ctx.variant.settings.scoreboard_size)) or "(none yet)"
    tried = format_tried_lines(board.tried()) or "(none yet)"
    note = HumanMessage(
        "Earlier experiments are left out to fit the context window. The scoreboard so far "
        f"(concept: score, best first):\n{scores}\n\nConcepts already tried (never repeat "
        f"one):\n{tried}"
    )
    kept = trim_to_fit(messages, max(0, budget - count_tokens([note])), keep_first=2)
    return [*kept[:2], note, *kept[2:]]


async def agent(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """One agent turn: the LLM reads the conversation and may call tools. With the variant's
    ``llm_images``, the turn also shows the scoreboard's extreme images, in a message sent with
    this turn only (the state keeps the conversation without it)."""
    ctx = runtime.context
    settings = ctx.variant.settings
    update: dict[str, Any] = {}
    messages = list(state.get("messages", []))
    if not messages:
        board = Scoreboard.from_dicts(state.get("entries", []))
        values = {
            "max_concepts": settings.max_concepts,
            "max_images": settings.max_images,
            "scoreboard": format_score_lines(board.top(settings.scoreboard_size)) or "(none yet)",
        }
        messages = [
            SystemMessage(ctx.variant.render("system", **values)),
            HumanMessage(ctx.variant.render("task", **values)),
        ]
        update["messages"] = messages
    sent, shown = messages, list[dict]()
    if settings.llm_images and state.get("entries"):
        blocks, shown = await scoreboard_image_blocks(
            ctx.client, state["entries"], settings.llm_images, ctx.llm_image_cache
        )
        if blocks:
            sent = [*messages, HumanMessage(list[str | dict](blocks))]
    fit = functools.partial(_fit_conversation, ctx, state)
    reply = await ctx.llm.invoke(sent, tools=agentic_tools(ctx), fit=fit)
    log, counters = _reply_accounting("agent", 0, sent[-2:] if shown else messages[-1:], reply)
    if shown:
        log["images"] = shown
    counters["agent_turns"] = 1
    if reply.left_out:
        log["left_out"] = reply.left_out
        counters["trimmed_turns"] = 1
    message = reply.message
    if not isinstance(message, AIMessage):
        message = AIMessage(content=str(message.content))
    update["messages"] = [*update.get("messages", []), message]
    update["llm_log"] = [log]
    update["counters"] = counters
    return update


def _unanswered_calls(state: NeuronState) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """The last agent message's tool calls and malformed calls that have no answer yet.

    Calls are answered in order, valid ones first, so the answers after the message count
    them off.
    """
    answered = 0
    for message in reversed(state["messages"]):
        if isinstance(message, AIMessage):
            break
        answered += isinstance(message, ToolMessage)
    else:
        return [], []
    calls, invalid = list(message.tool_calls), list(message.invalid_tool_calls)
    return calls[answered:], invalid[max(0, answered - len(calls)) :]


def next_tool_step(state: NeuronState) -> Send | str:
    """The next tool call goes to the ``tools`` node alone, the malformed calls after them.

    ``ToolNode`` runs the calls it is given concurrently on one snapshot of the state; sending
    it one call at a time keeps the calls of one message in order, each seeing what the calls
    before it did (a ``measure_activation`` the images its message's ``generate_images`` just
    rendered), and checkpoints each call on its own.
    """
    calls, invalid = _unanswered_calls(state)
    if calls:
        return Send("tools", [calls[0]])
    if invalid:
        return "malformed"
    return "summarize" if _budget_left(state) else "agent"


async def malformed(state: NeuronState) -> dict:
    """Answer the calls whose arguments were not valid JSON; each counts as a tool error."""
    _calls, invalid = _unanswered_calls(state)
    replies = [
        ToolMessage(
            f"error: malformed arguments for {call.get('name')!r}: {call.get('error')}",
            tool_call_id=call.get("id") or "invalid",
            status="error",
        )
        for call in invalid
    ]
    return {"messages": replies, "counters": {"tool_errors": len(replies)}}


async def nudge(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """The agent answered without tools: remind it once or twice, then summarise."""
    text = (
        f"Keep experimenting with {GENERATE_IMAGES.name} and {MEASURE_ACTIVATION.name} while the "
        "budget lasts; stop calling tools only when you are confident."
    )
    return {"messages": [HumanMessage(text)], "counters": {"nudges": 1}}


def after_agent(state: NeuronState) -> Send | str:
    """Tools when the agent called some; a nudge when it stopped too early; else the summary."""
    last = state["messages"][-1]
    if getattr(last, "tool_calls", None) or getattr(last, "invalid_tool_calls", None):
        return next_tool_step(state)
    if _budget_left(state) is None and len(state.get("entries", [])) < MIN_CONCEPTS:
        if state.get("counters", {}).get("nudges", 0) < MAX_NUDGES:
            return "nudge"
    return "summarize"


# ----- shared ending --------------------------------------------------------------------------
async def summarize(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Ask the LLM for the final concept and a one-sentence summary."""
    ctx = runtime.context
    board = Scoreboard.from_dicts(state.get("entries", []))
    prompt = ctx.variant.render(
        "summary", scoreboard=format_score_lines(board.ranked()) or "(nothing was measured)"
    )
    system = ctx.variant.render(
        "system",
        max_concepts=ctx.variant.settings.max_concepts,
        max_images=ctx.variant.settings.max_images,
    )
    messages = [SystemMessage(system), HumanMessage(prompt)]
    args, logs, counters = await _ask_for_concept(ctx, "summarize", messages, SUBMIT_EXPLANATION)
    if args is None:
        best = board.best()
        summary = {
            "concept": best.concept if best else None,
            "text": "the LLM gave no usable summary; the best-scoring concept stands",
            "fallback": True,
        }
    else:
        summary = {"concept": args["concept"], "text": args["summary"]}
    return {"summary": summary, "llm_log": logs, "counters": counters}


async def score_summary(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Score the summary concept like any other (once: a tried concept keeps its score)."""
    concept = (state.get("summary") or {}).get("concept")
    board = Scoreboard.from_dicts(state.get("entries", []))
    if not concept or board.has(concept):
        return {}
    iteration = state.get("iteration", 0) + 1
    entry = await evaluate_concept(runtime.context, concept, iteration, "summary")
    return {
        "entries": [entry.to_dict()],
        "iteration": iteration,
        "counters": {"images": len(entry.image_ids)},
    }


async def confirm(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """Re-check the search's best distinct concepts on fresh images and choose the label
    (:mod:`analysis.confirmation`).

    The top ``confirm_candidates`` concepts of the history are rendered on
    ``confirm_images`` seeds shared by every candidate and never used in the search, and scored
    by their AUC against the run's control set. Then, up to :data:`ABLATION_ROUNDS` times, the
    parts of the best :data:`MAX_CONTENDERS` contenders (within the margin of the best) that
    are not measured yet (the
    label without each attribute, an OR's alternatives) are measured too; when two candidates
    that share no attribute both fire, their OR is measured as well (a unit that fires on either
    is not explained by one of them). Then the rule chooses. Last, the ``confirm_inhibitors``
    lowest concepts of the search are measured on the same images, and the concept that drives
    the unit lowest against the control set is its inhibitor
    (:func:`analysis.confirmation.choose_inhibitor`).
    """
    ctx = runtime.context
    settings = ctx.variant.settings
    control = ctx.control_activations
    if control is None or len(control) == 0:
        raise RuntimeError(
            "confirmation needs the unit's activations on a control set, and the run has none"
        )
    board = Scoreboard.from_dicts(state.get("entries", []))
    ranked = [entry for entry in board.ranked() if math.isfinite(entry.score)]
    search_scores = {entry.concept: entry.score for entry in reversed(ranked)}
    top = list(dict.fromkeys(entry.concept for entry in ranked))[: settings.confirm_candidates]
    if not top:
        raise RuntimeError(
            "no concept could be measured for this neuron (every LLM answer was unusable); "
            "check the LLM and run again with --resume"
        )
    seeds = confirmation_seeds(ctx.run_seed, settings.confirm_images)
    measured: dict[str, ConfirmedCandidate] = {}

    async def measure(concept: str, source: str) -> None:
        values, image_ids, prompts = await probe_concept(ctx, concept, seeds)
        rank = top.index(concept) if concept in top else len(top) + len(measured)
        measured[concept] = ConfirmedCandidate(
            concept=concept,
            source=source,
            auc=auc_score(values, control),
            auc_low=math.nan,
            auc_high=math.nan,
            mean=float(np.mean(values)),
            search_score=search_scores.get(concept),
            search_rank=rank,
            activations=values,
            image_ids=image_ids,
            seeds=list(seeds),
            prompts=prompts,
        )

    await asyncio.gather(*(measure(concept, "search") for concept in top))
    for _round in range(ABLATION_ROUNDS):
        twins = duplicates(list(measured.values()))
        distinct = [c for c in measured.values() if c.concept not in twins]
        best = max(candidate.auc for candidate in distinct)
        contenders = sorted(
            (c for c in distinct if c.auc >= best - settings.confirm_margin),
            key=lambda c: (-c.auc, c.search_rank),
        )[:MAX_CONTENDERS]
        parts = {
            part: f"ablation of '{candidate.concept}'"
            for candidate in contenders
            for part in ablations(candidate.concept)
            if part not in measured
        }
        if not parts:
            break
        await asyncio.gather(*(measure(part, source) for part, source in parts.items()))
    union = missing_union(list(measured.values()))
    if union is not None:
        await measure(*union)
    candidates = sorted(measured.values(), key=lambda c: c.search_rank)
    choice = choose_label(candidates, settings.confirm_margin)
    chosen = measured[choice.label]
    chosen.auc, chosen.auc_low, chosen.auc_high = await asyncio.to_thread(
        auc_interval, chosen.activations, control
    )
    # the inhibitor: the search's lowest concepts, re-checked on the same fresh images
    label_candidates = set(measured)
    lowest = list(dict.fromkeys(entry.concept for entry in reversed(ranked)))
    lowest = [c for c in lowest[: settings.confirm_inhibitors] if c not in measured]
    await asyncio.gather(*(measure(concept, "search (lowest)") for concept in lowest))
    silencers = [c for c in measured.values() if c.concept not in duplicates(candidates)]
    inhibitor = choose_inhibitor(silencers, settings.confirm_margin)
    if inhibitor is not None and settings.confirm_inhibitors:
        inhibitor.auc, inhibitor.auc_low, inhibitor.auc_high = await asyncio.to_thread(
            auc_interval, inhibitor.activations, control
        )
    confirmation = {
        "label": choice.label,
        "reason": choice.reason,
        "best": choice.best,
        "margin": choice.margin,
        "images_per_candidate": len(seeds),
        "control_images": len(control),
        "candidates": [candidate.to_dict() for candidate in candidates],
        "inhibitor": inhibitor.concept if inhibitor and settings.confirm_inhibitors else None,
        "inhibitor_candidates": [
            measured[concept].to_dict() for concept in measured if concept not in label_candidates
        ],
    }
    images = len(seeds) * len(measured)
    return {"confirmation": confirmation, "counters": {"confirmation_images": images}}


async def finish(state: NeuronState, runtime: Runtime[RunContext]) -> dict:
    """The final label: the confirmation's choice, its AUC on the confirmation images with the
    interval, and the verdict from the same images (:class:`analysis.selectivity.Verdict`);
    the state's ``result`` is a :class:`agent.record.NeuronResult`."""
    confirmation = Confirmation.model_validate(state.get("confirmation") or {})
    summary = SummaryStep.model_validate(state.get("summary") or {})
    chosen = next(c for c in confirmation.candidates if c.concept == confirmation.label)
    verdict = Verdict(chosen.auc, chosen.auc_low, chosen.auc_high)
    everything = [*confirmation.candidates, *confirmation.inhibitor_candidates]
    silencer = next((c for c in everything if c.concept == confirmation.inhibitor), None)
    result = NeuronResult(
        label=chosen.concept,
        score=chosen.auc,
        score_low=chosen.auc_low,
        score_high=chosen.auc_high,
        verdict=verdict.outcome,
        selective=verdict.selective,
        mean_activation=chosen.mean,
        search_score=chosen.search_score,
        label_source=chosen.source,
        choice=confirmation.reason,
        candidates=len(confirmation.candidates),
        summary_concept=summary.concept or "",
        summary_text=summary.text,
    )
    if silencer is not None:
        judged = Verdict(silencer.auc, silencer.auc_low, silencer.auc_high).inhibitor()
        result.inhibitor = silencer.concept
        result.inhibitor_score = silencer.auc
        result.inhibitor_low = silencer.auc_low
        result.inhibitor_high = silencer.auc_high
        result.inhibitor_verdict = judged.outcome
    return {"result": result.model_dump()}


def build_graph(strategy: str) -> StateGraph[NeuronState, RunContext, NeuronState, NeuronState]:
    """The uncompiled graph of a strategy (compile it with a checkpointer)."""
    graph = StateGraph(NeuronState, context_schema=RunContext)
    graph.add_node("summarize", summarize)
    graph.add_node("score_summary", score_summary)
    graph.add_node("confirm", confirm)
    graph.add_node("finish", finish)
    graph.add_edge("summarize", "score_summary")
    graph.add_edge("score_summary", "confirm")
    graph.add_edge("confirm", "finish")
    graph.add_edge("finish", END)
    if strategy == "paper":
        graph.add_node("seed", seed)
        graph.add_node("propose", propose)
        graph.add_node("evaluate", evaluate)
        graph.add_conditional_edges(START, after_start, ["seed", "propose", "summarize"])
        graph.add_conditional_edges(
            "seed",
            lambda s: "propose" if _rounds_left(s) else "summarize",
            ["propose", "summarize"],
        )
        graph.add_conditional_edges("propose", after_propose, ["evaluate", "propose", "summarize"])
        graph.add_conditional_edges("evaluate", after_evaluate, ["propose", "summarize"])
    elif strategy == "agentic":
        graph.add_node("agent", agent)
        graph.add_node("tools", agentic_tool_node())
        graph.add_node("malformed", malformed)
        graph.add_node("nudge", nudge)
        graph.add_edge(START, "agent")
        graph.add_conditional_edges(
            "agent", after_agent, ["tools", "malformed", "nudge", "summarize"]
        )
        after_tool_step = ["tools", "malformed", "agent", "summarize"]
        graph.add_conditional_edges("tools", next_tool_step, after_tool_step)
        graph.add_conditional_edges("malformed", next_tool_step, after_tool_step)
        graph.add_edge("nudge", "agent")
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use 'paper' or 'agentic'")
    return graph
