"""The LangGraph state of one neuron's explanation, and the run context its nodes read."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

from agent.providers import LLMClient
from tools.agent_tools import NeuronContext


def add_counters(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Reducer: counters add up key by key."""
    merged = dict(left or {})
    for key, value in (right or {}).items():
        merged[key] = merged.get(key, 0) + value
    return merged


def merge_dicts(left: dict | None, right: dict | None) -> dict:
    """Reducer: later keys win."""
    return {**(left or {}), **(right or {})}


class NeuronState(TypedDict, total=False):
    """Everything checkpointed for one neuron (one LangGraph thread)."""

    neuron: dict[str, Any]  # target, layer, unit
    entries: Annotated[list[dict], operator.add]  # ConceptEntry rows, in the order tried
    messages: Annotated[list[AnyMessage], add_messages]  # the agentic conversation
    llm_log: Annotated[list[dict], operator.add]  # every LLM exchange with its tokens
    counters: Annotated[dict[str, int], add_counters]
    generated: Annotated[dict[str, dict], merge_dicts]  # agentic: rendered, not yet measured
    iteration: int
    pending: dict | None  # paper: the proposal waiting to be rendered and measured
    summary: dict | None  # {"concept", "text"}
    result: dict | None  # the final label


@dataclass(kw_only=True)
class RunContext(NeuronContext):
    """The tools' neuron context plus the LLM the graph's nodes ask (not checkpointed)."""

    llm: LLMClient
