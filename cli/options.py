"""What the commands share: options declared once (``Annotated`` aliases) and the error exit.

A command takes an alias as its parameter's type and gives the default itself, e.g.
``device: LocalServerDevice = "auto"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

_LLM_SPEC = typer.Option(help="provider:model, openai-compatible:<model>, or offline:vocab.")

TargetSpec = Annotated[str, typer.Option(help="Target spec.")]
LayerName = Annotated[str, typer.Option(help="Layer name.")]
UnitsSpec = Annotated[str, typer.Option(help="Units: 0-99, 3,7,9.")]
ServerURL = Annotated[str | None, typer.Option(help="Inference server URL.")]
LocalServerDevice = Annotated[str, typer.Option(help="Device of a local server.")]
LocalServerStore = Annotated[Path | None, typer.Option(help="Store folder of a local server.")]
RunStore = Annotated[
    Path | None,
    typer.Option(help="Image store the run used (default: ~/.cache/line/store)."),
]
LLMSpec = Annotated[str, _LLM_SPEC]
OptionalLLMSpec = Annotated[str | None, _LLM_SPEC]
LLMBaseURL = Annotated[str | None, typer.Option(help="Base URL for openai-compatible servers.")]
OpenAICompatibleURL = Annotated[str | None, typer.Option(help="For openai-compatible.")]
PromptVariantName = Annotated[str, typer.Option(help="Prompt variant name or folder.")]
Concurrency = Annotated[int, typer.Option(help="Neurons explained at once.")]
NoProgressBar = Annotated[bool, typer.Option(help="No progress bar.")]
BasisSpec = Annotated[
    str | None,
    typer.Option(
        help="Explain a unit basis of the layer instead of its units: sae:PATH (a SAELens folder "
        "or .safetensors file) or directions:PATH (a K x d_in .npy or .safetensors matrix); "
        "--units then index its latents or rows."
    ),
]
PositionsRule = Annotated[
    str | None,
    typer.Option(
        help="How a layer with positions (a CNN map, ViT tokens) is read per image: cls, mean, "
        "max, patch-mean or patch-max of its units, or of the basis's at every position. "
        "Default: units and directions a map's mean and a ViT's CLS token; SAE latents max."
    ),
]
JSONOutput = Annotated[
    bool, typer.Option("--json", help="Print the results as JSON (for scripts).")
]
LLMImages = Annotated[
    int | None,
    typer.Option(
        help="Show a vision LLM the scoreboard's N most and N least activating images (small, "
        "labelled with concept and activation) with every proposal; refused for a model known "
        "to take text only [default: the variant's, 0 = text only].",
    ),
]
RunEditor = Annotated[
    str | None,
    typer.Option(
        help="Image editor for the agentic strategy's edit_images tool (edit the unit's top "
        "images, measure the drop): procedural:shapes in the toy world, or a diffusers "
        "image-editing pipeline such as timbrooks/instruct-pix2pix; with --server, one it "
        "serves [default: none (no tool); procedural:shapes for a toy-world variant that edits].",
    ),
]


EXIT_DONE = 0
"""Every neuron of the run is done (or dead: it fires on nothing, which is an answer too)."""
EXIT_COULD_NOT_START = 2
"""Nothing ran: bad options, an unreachable LLM or inference server, a refused resume."""
EXIT_NEURONS_FAILED = 3
"""The run finished, but some neurons failed (``--resume`` retries them)."""
EXIT_ENDPOINT_DOWN = 4
"""The run stopped: the inference server or the LLM endpoint stayed unreachable for
``--outage-patience``; ``--resume`` continues it once the endpoint is back."""


def exit_with_error(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with status 2 (a usage error, or a
    run that could not start: :data:`EXIT_COULD_NOT_START`)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_COULD_NOT_START)


OutagePatience = Annotated[
    float | None,
    typer.Option(
        help="Seconds to wait for an inference server or LLM endpoint that stopped answering "
        "(every neuron waits together) before the run stops, resumable [default: 300].",
    ),
]


def exit_stopped(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with :data:`EXIT_ENDPOINT_DOWN`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_ENDPOINT_DOWN)


def exit_status(rows: list[dict]) -> int:
    """The exit status of a finished run: :data:`EXIT_DONE` only when no neuron failed."""
    return EXIT_NEURONS_FAILED if any(row.get("status") == "failed" for row in rows) else EXIT_DONE


def warn(message: str) -> None:
    """Print a note in yellow on stderr."""
    typer.secho(message, fg=typer.colors.YELLOW, err=True)
