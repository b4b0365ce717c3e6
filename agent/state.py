"""The LangGraph state of one neuron's explanation, and the run context its nodes read."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any

from agent.providers import LLMClient
from tools.agent_tools import NeuronContext, ToolState


class NeuronState(ToolState, total=False):
    """Everything checkpointed for one neuron (one LangGraph thread): what the tools read and
    write (:class:`tools.agent_tools.ToolState`) plus what only the graph's nodes use."""

    neuron: dict[str, Any]  # target, layer, unit, budgets
    llm_log: Annotated[list[dict], operator.add]  # every LLM exchange with its tokens
    pending: dict | None  # paper: the proposal waiting to be rendered and measured
    summary: dict | None  # {"concept", "text"}
    confirmation: dict | None  # the candidates re-checked on fresh images, and the choice
    result: dict | None  # the final label


@dataclass(kw_only=True)
class RunContext(NeuronContext):
    """The tools' neuron context plus the LLM the graph's nodes ask (not checkpointed)."""

    llm: LLMClient
