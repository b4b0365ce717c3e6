"""The agent's tools and the shared render-and-measure step behind them.

The LLM sees tool schemas only; the neuron, the budget and the server client come from the run
context. A tool never raises into the graph: bad arguments and failures come back as text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from prompts.variant import PromptVariant
from tools.client import LineClient
from tools.scoreboard import (
    ConceptEntry,
    Scoreboard,
    check_concept,
    format_score_lines,
)
from tools.scoring import score_activations

MAX_IMAGES_PER_CALL = 16


@dataclass(kw_only=True)
class NeuronContext:
    """What the tools need but the LLM never sees or chooses: the neuron, its budget (in the
    prompt variant) and the server client. LangGraph hands it to nodes and tools as the runtime
    context; it is not checkpointed."""

    client: LineClient
    variant: PromptVariant
    target: str
    layer: str
    unit: int
    generator: str | None = None
    run_seed: int = 0
    control_activations: np.ndarray | None = None  # this unit on the control set, for MAD/AUC


def image_seed(run_seed: int, ctx: NeuronContext, concept: str, index: int) -> int:
    """The seed of a concept's ``index``-th image: fixed by (run seed, neuron, concept, index)."""
    key = f"{run_seed}|{ctx.target}|{ctx.layer}|{ctx.unit}|{concept}|{index}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


async def render_concept(ctx: NeuronContext, concept: str, count: int) -> dict[str, list]:
    """Render ``count`` images of a concept through the server; prompts, seeds and ids."""
    seeds = [image_seed(ctx.run_seed, ctx, concept, index) for index in range(count)]
    prompts = [ctx.variant.image_prompt(concept, seed) for seed in seeds]
    images = await ctx.client.generate_images(prompts, seeds, generator=ctx.generator)
    return {"prompts": prompts, "seeds": seeds, "image_ids": [image.id for image in images]}


async def measure_concept(
    ctx: NeuronContext, concept: str, rendered: dict[str, list], iteration: int, source: str
) -> ConceptEntry:
    """Read the unit on a concept's images and score it."""
    result = await ctx.client.activations(
        ctx.target, ctx.layer, rendered["image_ids"], units=[ctx.unit]
    )
    activations = [float(value) for value in result.values[:, 0]]
    score = score_activations(ctx.variant.settings.score, activations, ctx.control_activations)
    return ConceptEntry(
        concept=concept,
        score=score,
        activations=activations,
        image_ids=list(rendered["image_ids"]),
        prompts=list(rendered["prompts"]),
        seeds=list(rendered["seeds"]),
        iteration=iteration,
        source=source,
    )


async def evaluate_concept(
    ctx: NeuronContext, concept: str, iteration: int, source: str
) -> ConceptEntry:
    """Render and measure a concept with the variant's number of images."""
    rendered = await render_concept(ctx, concept, ctx.variant.settings.images_per_concept)
    return await measure_concept(ctx, concept, rendered, iteration, source)


# ----- tool schemas --------------------------------------------------------------------------
class ProposeConceptArgs(BaseModel):
    concept: str = Field(description="One new visual concept of one to three words.")


class SubmitExplanationArgs(BaseModel):
    concept: str = Field(description="The concept that best explains the unit (1-3 words).")
    summary: str = Field(description="One sentence on the evidence.")


class GenerateImagesArgs(BaseModel):
    concept: str = Field(description="A short visual concept (1-3 words).")
    n: int = Field(5, description=f"How many images, 1 to {MAX_IMAGES_PER_CALL}.")


class MeasureActivationArgs(BaseModel):
    concept: str = Field(description="A concept whose images were generated with generate_images.")


class ReadScoreboardArgs(BaseModel):
    top_k: int = Field(10, description="How many of the best concepts to list.")


def _schema_only(name: str, description: str, args: type[BaseModel]) -> StructuredTool:
    """A LangChain tool whose schema the LLM sees; the graph executes it with the run context."""

    def refuse(**_kwargs: Any) -> str:
        raise RuntimeError(f"{name} runs inside the LINE graph, not on its own")

    return StructuredTool.from_function(
        refuse, name=name, description=description, args_schema=args
    )


PROPOSE_CONCEPT = _schema_only(
    "propose_concept", "Propose the next concept to test on the unit.", ProposeConceptArgs
)
SUBMIT_EXPLANATION = _schema_only(
    "submit_explanation",
    "Give the final concept that explains the unit, with a one-sentence summary.",
    SubmitExplanationArgs,
)
GENERATE_IMAGES = _schema_only(
    "generate_images", "Render n synthetic photographs of a concept.", GenerateImagesArgs
)
MEASURE_ACTIVATION = _schema_only(
    "measure_activation",
    "Measure the unit on a concept's generated images; records and returns its score.",
    MeasureActivationArgs,
)
READ_SCOREBOARD = _schema_only(
    "read_scoreboard", "List the best concepts tried so far with their scores.", ReadScoreboardArgs
)
AGENTIC_TOOLS = [GENERATE_IMAGES, MEASURE_ACTIVATION, READ_SCOREBOARD]


class AgentToolbox:
    """Runs the agentic tools for one neuron against the current state.

    Each call returns ``(text for the LLM, state update)``; errors are text too.
    """

    def __init__(self, ctx: NeuronContext, state: dict) -> None:
        self.ctx = ctx
        self.board = Scoreboard.from_dicts(state.get("entries", []))
        self.generated: dict[str, dict] = dict(state.get("generated", {}))
        self.images_used = int(state.get("counters", {}).get("images", 0))
        self.iteration = int(state.get("iteration", 0))

    @property
    def settings(self):
        return self.ctx.variant.settings

    async def call(self, name: str, args: dict) -> tuple[str, dict]:
        """Execute one tool call; never raises."""
        handlers = {
            "generate_images": self.generate_images,
            "measure_activation": self.measure_activation,
            "read_scoreboard": self.read_scoreboard,
        }
        if name not in handlers:
            return (
                f"error: there is no tool {name!r}; use one of: {', '.join(handlers)}",
                {"counters": {"tool_errors": 1}},
            )
        try:
            return await handlers[name](**args)
        except TypeError as error:
            return f"error: bad arguments for {name}: {error}", {"counters": {"tool_errors": 1}}
        except ValueError as error:
            return f"error: {error}", {"counters": {"tool_errors": 1}}
        except Exception as error:  # a failing server or backend must not kill the run
            return (
                f"error: {name} failed: {type(error).__name__}: {error}",
                {"counters": {"tool_errors": 1}},
            )

    async def generate_images(self, concept: str, n: int = 5) -> tuple[str, dict]:
        concept = check_concept(concept)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_CALL:
            raise ValueError(f"n must be a whole number from 1 to {MAX_IMAGES_PER_CALL}, got {n!r}")
        left = self.settings.max_images - self.images_used
        if n > left:
            raise ValueError(f"only {left} images are left in the budget; ask for fewer")
        if self.board.has(concept):
            raise ValueError(f"{concept!r} was already measured; try a new concept")
        rendered = await render_concept(self.ctx, concept, n)
        self.images_used += n
        self.generated[concept] = rendered
        ids = ", ".join(image_id[:12] for image_id in rendered["image_ids"])
        text = f"generated {n} images of '{concept}' (ids {ids}); now call measure_activation"
        return text, {"generated": {concept: rendered}, "counters": {"images": n}}

    async def measure_activation(self, concept: str) -> tuple[str, dict]:
        concept = check_concept(concept)
        if self.board.has(concept):
            entry = next(e for e in self.board.entries if e.concept == concept)
            return f"{concept}: {entry.score:.4f}\n(already measured)", {}
        if concept not in self.generated:
            raise ValueError(f"no images of {concept!r} yet; call generate_images first")
        if len(self.board.entries) >= self.settings.max_concepts:
            raise ValueError("the concept budget is spent; stop calling tools")
        self.iteration += 1
        entry = await measure_concept(
            self.ctx, concept, self.generated[concept], self.iteration, "agent"
        )
        self.board.entries.append(entry)
        values = ", ".join(f"{value:.4f}" for value in entry.activations)
        text = f"{concept}: {entry.score:.4f}\nper-image activations: {values}"
        return text, {"entries": [entry.to_dict()], "iteration": self.iteration}

    async def read_scoreboard(self, top_k: int = 10) -> tuple[str, dict]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive whole number, got {top_k!r}")
        lines = format_score_lines(self.board.top(top_k))
        return lines or "(no concept measured yet)", {}
