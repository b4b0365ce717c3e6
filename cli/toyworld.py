"""``line toyworld``: inspect the offline toy world (ground truth, sample renders)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inference.toyworld.procedural import render_prompt
from inference.toyworld.truth import as_json, planted_ground_truth

toyworld_app = typer.Typer(
    help="The offline toy world: procedural:shapes generator and planted:shapes target.",
    no_args_is_help=True,
)


@toyworld_app.callback()
def _toyworld() -> None:
    """The offline toy world: procedural:shapes generator and planted:shapes target."""


DEFAULT_RENDER_PATH = Path("toyworld.png")


@toyworld_app.command("truth")
def truth(
    as_json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print a JSON list of {layer, unit, concept, kind, attributes}."
        ),
    ] = False,
) -> None:
    """Print the planted units of planted:shapes and their known concepts."""
    units = planted_ground_truth()
    if as_json_output:
        typer.echo(as_json(units))
        return
    rows = [("layer", "unit", "kind", "concept", "attributes", "how it computes")]
    rows += [
        (u.layer, str(u.unit), u.kind, u.concept, ", ".join(u.attributes) or "-", u.note)
        for u in units
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            typer.echo("  ".join("-" * width for width in widths))


@toyworld_app.command("render")
def render(
    prompt: Annotated[
        str, typer.Argument(help='What to draw, e.g. "three striped blue triangles".')
    ],
    seed: Annotated[int, typer.Option(help="Seed: layout, unspecified attributes, noise.")] = 0,
    size: Annotated[int, typer.Option(help="Width and height in pixels.")] = 224,
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")] = DEFAULT_RENDER_PATH,
) -> None:
    """Render one prompt with procedural:shapes and say which words it understood."""

    rendered = render_prompt(prompt, seed, size, size)
    rendered.image.save(out)
    understood = ", ".join(rendered.understood or []) or "(nothing: random distractors)"
    typer.echo(f"wrote {out}; understood: {understood}")
