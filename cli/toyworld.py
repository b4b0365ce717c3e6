"""``line toyworld``: the offline toy world (ground truth, dissection, training, sample renders)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.options import exit_with_error
from toyworld.defaults import TrainConfig

if TYPE_CHECKING:  # each command imports what it runs (a CLI that answers at once)
    from toyworld.truth import PlantedUnit

toyworld_app = typer.Typer(
    help="The offline toy world: procedural:shapes generator, planted:shapes and learned:shapes "
    "targets.",
    no_args_is_help=True,
)


@toyworld_app.callback()
def _toyworld() -> None:
    """The offline toy world: procedural:shapes generator, planted:shapes and learned:shapes
    targets."""


DEFAULT_RENDER_PATH = Path("toyworld.png")
DEFAULT_WEIGHTS_PATH = Path("learned_shapes.safetensors")
PLANTED_TARGET = "planted:shapes"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns, the first row a header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            typer.echo("  ".join("-" * width for width in widths))


@toyworld_app.command("truth")
def truth(
    target: Annotated[
        str,
        typer.Option(help="planted:shapes (its planted truth) or learned:shapes (dissection)."),
    ] = PLANTED_TARGET,
    layer: Annotated[
        str | None, typer.Option(help="Only this layer [default: every layer with a truth].")
    ] = None,
    dissect: Annotated[
        bool,
        typer.Option(
            help="planted:shapes: print its dissection (a cross-check of the planted truth)."
        ),
    ] = False,
    as_json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON list of {layer, unit, concept, kind, attributes, ...}.",
        ),
    ] = False,
    basis: Annotated[
        str | None,
        typer.Option(
            help="A toy basis (sae:PATH or directions:PATH as `line toyworld bases` writes them): "
            "print its latents' known concepts."
        ),
    ] = None,
) -> None:
    """Print the units' known concepts: planted, or from dissection over scenes whose
    attributes are known (the reference concept, or none when no concept reaches AUC 0.85),
    or the latents of a toy basis (--basis, the files `line toyworld bases` writes)."""
    from toyworld.truth import as_json, inhibited_ground_truth, planted_ground_truth

    if basis is not None and (target != PLANTED_TARGET or dissect):
        exit_with_error(f"--basis reads the toy bases of {PLANTED_TARGET}, without --dissect")
    if target == PLANTED_TARGET and not dissect:
        units = (
            [*planted_ground_truth(), *inhibited_ground_truth()]
            if basis is None
            else _toy_basis_truth(basis)
        )
        if layer is not None:
            units = [u for u in units if u.layer == layer] or units
        layers = sorted({u.layer for u in units})
        if layer is not None and layer not in layers:
            exit_with_error(
                f"{target} has planted units in layer {', '.join(layers)} only; use --dissect "
                "to dissect its other layers"
            )
        if as_json_output:
            typer.echo(as_json(units))
            return
        rows: list[tuple[str, ...]] = [
            ("layer", "unit", "kind", "concept", "attributes", "inhibitor", "how it computes")
        ]
        rows += [
            (u.layer, str(u.unit), u.kind, u.concept, ", ".join(u.attributes) or "-",
             u.inhibitor or "-", u.note)
            for u in units
        ]  # fmt: skip
        _print_table(rows)
        return
    from toyworld.dissection import (
        SELECTIVE_AUC,
        DissectionError,
        cached_dissection,
        load_toy_world_target,
    )

    try:
        model = load_toy_world_target(target)
        typer.secho("dissecting (cached after the first time)...", err=True)
        dissected = cached_dissection(model, layer)
    except DissectionError as error:
        exit_with_error(str(error))
    if as_json_output:
        typer.echo(json.dumps([asdict(u) for u in dissected], indent=2))
        return
    table: list[tuple[str, ...]] = [
        ("layer", "unit", "kind", "concept", "attributes", "AUC", "best candidate")
    ]
    table += [
        (u.layer, str(u.unit), u.kind, u.concept, ", ".join(u.attributes) or "-",
         f"{u.auc:.3f}", u.best)
        for u in dissected
    ]  # fmt: skip
    _print_table(table)
    selective = sum(u.selective for u in dissected)
    typer.echo(
        f"{selective} of {len(dissected)} units have a reference concept (AUC >= {SELECTIVE_AUC})"
    )


def _toy_basis_truth(spec: str) -> list[PlantedUnit]:
    """The truth of a toy basis's latents, or an error exit for any other basis."""
    from inference.bases import BasisError, load_basis
    from toyworld.latents import toy_basis_truth

    try:
        truth = toy_basis_truth(load_basis(spec))
    except BasisError as error:
        exit_with_error(str(error))
    if truth is None:
        exit_with_error(
            f"{spec} is not one of the toy world's bases, so its latents have no known concepts; "
            "`line toyworld bases --out DIR` writes those"
        )
    return truth


@toyworld_app.command("bases")
def bases(
    out: Annotated[Path, typer.Option(help="Folder to write them into.")] = Path("toy-bases"),
) -> None:
    """Write the toy world's known bases for planted:shapes's planted layer: an SAE (SAELens
    format) and a directions matrix whose latents are known combinations of planted units."""
    from toyworld.latents import write_toy_bases

    specs = write_toy_bases(out)
    for kind, spec in specs.items():
        typer.echo(f"{kind}: {spec}")
    typer.echo(
        f"their truth: line toyworld truth --basis {specs['sae']}\nexplain them: line run "
        f"--target {PLANTED_TARGET} --layer planted --basis {specs['sae']} --units 0-7 "
        "--generator procedural:shapes --llm offline:vocab --out runs/toy-sae"
    )


@toyworld_app.command("train")
def train(
    target: Annotated[str, typer.Option(help="The network to train.")] = "learned:shapes",
    out: Annotated[Path, typer.Option(help="Weights file to write.")] = DEFAULT_WEIGHTS_PATH,
    seed: Annotated[int, typer.Option(help="Seed of the scenes, the weights and the order.")] = 0,
    scenes: Annotated[int, typer.Option(help="Training scenes.")] = TrainConfig.train_scenes,
    held_out: Annotated[
        int, typer.Option(help="Held-out scenes for the accuracy figures.")
    ] = TrainConfig.held_out_scenes,
    epochs: Annotated[int, typer.Option(help="Passes over the training scenes.")] = (
        TrainConfig.epochs
    ),
) -> None:
    """Train learned:shapes from scratch on procedural:shapes scenes (seeded, reproducible on
    one machine; the defaults made the shipped weights, a few minutes on 2 CPU cores)."""
    from toyworld.learned import (
        TARGET_NAMES,
        WEIGHTS_PATH,
        save_weights,
        train_learned_shapes,
    )

    family, _, name = target.partition(":")
    if family != "learned" or name not in TARGET_NAMES:
        valid = ", ".join(f"learned:{n}" for n in TARGET_NAMES)
        exit_with_error(f"cannot train {target!r}; trainable targets: {valid}")
    if min(scenes, held_out, epochs) < 1:
        exit_with_error("--scenes, --held-out and --epochs must be at least 1")
    config = TrainConfig(seed=seed, train_scenes=scenes, held_out_scenes=held_out, epochs=epochs)
    model, result = train_learned_shapes(config, progress=typer.echo)
    save_weights(model, result, out)
    typer.echo(
        f"wrote {out}: held-out accuracy {result.held_out_accuracy:.4f}, macro AUC "
        f"{result.held_out_auc:.4f} (learned:shapes serves the weights at {WEIGHTS_PATH})"
    )


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
    from toyworld.procedural import render_prompt

    rendered = render_prompt(prompt, seed, size, size)
    rendered.image.save(out)
    understood = ", ".join(rendered.understood or []) or "(nothing: random distractors)"
    typer.echo(f"wrote {out}; understood: {understood}")
