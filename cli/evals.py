"""``line eval``: score explanations the way the field does."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Annotated

import typer

from agent.launch import (
    RunSetupError,
    check_remote_server,
    execute_run,
    parse_units,
    settings_from_options,
    start_local_server,
)
from analysis.groundtruth import attribute_match
from evals.baseline import concept_discovery, read_vocabulary, vocabulary_baseline
from evals.cosy_eval import cosy_command, evaluate_cosy, write_cosy_csv
from evals.groundtruth import groundtruth_command
from evals.variants import (
    Arm,
    markdown_report,
    pairwise_tests,
    plot_convergence,
    run_arms,
    summarize,
    write_csv,
)
from inference.toyworld.truth import planted_ground_truth
from prompts.variant import VariantError, load_variant
from tools.client import LineClient
from tools.controlset import ControlSet, ControlSetError, control_activations

eval_app = typer.Typer(
    help="Evaluate explanations: CoSy, ground truth, variants, vocabulary baseline.",
    no_args_is_help=True,
)
eval_app.command("cosy")(cosy_command)
eval_app.command("groundtruth")(groundtruth_command)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@eval_app.command("vocab")
def vocab_command(
    vocabulary: Annotated[Path, typer.Option(help="Concepts, one per line.")],
    target: Annotated[str, typer.Option(help="Target spec.")],
    layer: Annotated[str, typer.Option(help="Layer name.")],
    units: Annotated[str, typer.Option(help="Units: 0-99, 3,7,9.")],
    out: Annotated[Path, typer.Option(help="Folder for vocab-labels.csv and vocab-scores.csv.")],
    generator: Annotated[
        str | None, typer.Option(help="Generator (a local server needs one).")
    ] = None,
    server: Annotated[str | None, typer.Option(help="Inference server URL.")] = None,
    prompts: Annotated[
        str, typer.Option(help="Variant whose template and scoring to use.")
    ] = "paper",
    control: Annotated[str | None, typer.Option(help="Control set for --score mad/auc.")] = None,
    score: Annotated[str | None, typer.Option(help="mean, mad or auc.")] = None,
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
    device: Annotated[str, typer.Option(help="Device of a local server.")] = "auto",
) -> None:
    """The vocabulary baseline: score every concept of a vocabulary, label each unit by the best."""

    try:
        concepts = read_vocabulary(vocabulary)
        unit_list = parse_units(units)
        variant = load_variant(prompts, score=score)
        control_set = ControlSet.resolve(control) if control else None
        if variant.settings.score != "mean" and control_set is None:
            raise RunSetupError(f"score {variant.settings.score!r} needs --control PATH|toy")
        local = None
        if server:
            asyncio.run(check_remote_server(server, target, layer, unit_list, generator))
            url = server
        elif generator is None:
            raise RunSetupError("without --server, pass --generator SPEC to start a local server")
        else:
            local = start_local_server(target, layer, unit_list, generator, device)
            url = local.url
    except (OSError, ValueError, VariantError, ControlSetError) as error:
        _fail(str(error))

    async def go():
        async with LineClient(url) as client:
            matrix = None
            if control_set is not None:
                matrix = await control_activations(
                    client, control_set, target, layer, unit_list, generator
                )
            return await vocabulary_baseline(
                client, target, layer, unit_list, concepts, variant, generator, seed, matrix
            )

    try:
        result = asyncio.run(go())
    finally:
        if local is not None:
            local.stop()
    out.mkdir(parents=True, exist_ok=True)
    result.write_labels(out / "vocab-labels.csv")
    with (out / "vocab-scores.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["concept", *[f"unit_{u}" for u in result.units]])
        for concept, row in zip(result.concepts, result.scores, strict=True):
            writer.writerow([concept, *[f"{v:.6g}" for v in row]])
    for unit, label, value in result.labels():
        typer.echo(f"{unit:>6}  {label:<30}  {value:.4f}")
    typer.echo(f"wrote {out / 'vocab-labels.csv'} and {out / 'vocab-scores.csv'}")


@eval_app.command("discovery")
def discovery_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its results.csv).")],
    vocabulary: Annotated[Path, typer.Option(help="E.g. the ImageNet class names.")],
) -> None:
    """Concept discovery: the share of final labels not in a vocabulary."""

    results = run_dir / "results.csv"
    if not results.is_file():
        _fail(f"{run_dir} has no results.csv; finish the run first (line run --resume {run_dir})")
    try:
        concepts = read_vocabulary(vocabulary)
    except (OSError, ValueError) as error:
        _fail(str(error))
    with results.open() as stream:
        labels = [row["label"] for row in csv.DictReader(stream) if row["status"] == "done"]
    share = concept_discovery(labels, concepts)
    typer.echo(
        f"{share:.1%} of {len(labels)} labels are not in {vocabulary.name} "
        f"({len(concepts)} concepts)"
    )


async def _cosy_of_run(folder, server: str, control: str, n_images: int) -> list[dict]:
    """CoSy rows of a finished run (written to its cosy.csv as well)."""

    async with LineClient(server) as client:
        rows = await evaluate_cosy(folder, client, ControlSet.resolve(control), n_images)
    write_cosy_csv(folder.path / "cosy.csv", rows)
    return rows


@eval_app.command("variants")
def variants_command(
    variants: Annotated[str, typer.Option(help="Comma-separated variants, e.g. paper,agentic.")],
    target: Annotated[str, typer.Option(help="Target spec.")],
    layer: Annotated[str, typer.Option(help="Layer name.")],
    units: Annotated[str, typer.Option(help="Units: 0-99, 3,7,9.")],
    out: Annotated[Path, typer.Option(help="Folder for the runs and the comparison.")],
    llm: Annotated[
        list[str] | None, typer.Option(help="LLM spec (repeatable: every LLM is an arm).")
    ] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="For openai-compatible.")] = None,
    generator: Annotated[str | None, typer.Option(help="Generator of a local server.")] = None,
    server: Annotated[str | None, typer.Option(help="Inference server URL.")] = None,
    repeats: Annotated[int, typer.Option(help="Runs per arm (repeat k uses seed k).")] = 3,
    iterations: Annotated[int | None, typer.Option(help="Override every variant's.")] = None,
    control: Annotated[str | None, typer.Option(help="Control set: adds CoSy AUC and MAD.")] = None,
    n_images: Annotated[int, typer.Option(help="CoSy images per label (with --control).")] = 50,
    concurrency: Annotated[int, typer.Option(help="Neurons at once per run.")] = 64,
    device: Annotated[str, typer.Option(help="Device of a local server.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="Print only the table.")] = False,
) -> None:
    """Compare prompt variants (and LLMs): scores with 95% CIs, paired Wilcoxon tests, a plot."""

    arms = [
        Arm(variant.strip(), spec)
        for spec in (llm or ["offline:vocab"])
        for variant in variants.split(",")
        if variant.strip()
    ]
    if repeats < 1:
        _fail("--repeats must be at least 1")
    if out.exists() and any(out.iterdir()):
        _fail(f"{out} is not empty; choose a new --out folder")
    options = dict(
        target=target, layer=layer, units=units, generator=generator, llm_base_url=llm_base_url,
        server=server, concurrency=concurrency, temperature=None, iterations=iterations,
        resume=None, control=control,
    )  # fmt: skip
    local = None
    try:
        unit_list = parse_units(units)
        for arm in arms:  # every arm's variant and LLM are checked before anything loads
            settings_from_options(**{**options, "llm": arm.llm, "prompts": arm.variant,
                                     "out": out / "check", "seed": 0})  # fmt: skip
        if server is None:
            if generator is None:
                raise RunSetupError("without --server, pass --generator SPEC")
            local = start_local_server(target, layer, unit_list, generator, device)
            options["server"] = local.url
    except RunSetupError as error:
        _fail(str(error))

    truth = {}
    if target == "planted:shapes":
        truth = {u.unit: u for u in planted_ground_truth() if u.layer == layer}

    def run_one(arm, repeat, folder):
        settings, run_folder = settings_from_options(
            **{**options, "llm": arm.llm, "prompts": arm.variant, "out": folder, "seed": repeat}
        )
        rows = execute_run(settings, run_folder)
        if control:
            cosy[folder] = asyncio.run(
                _cosy_of_run(run_folder, options["server"], control, n_images)
            )
        if not quiet:
            typer.echo(f"{arm.name} repeat {repeat}: {sum(r['status'] == 'done' for r in rows)}"
                       f"/{len(rows)} neurons")  # fmt: skip
        return rows

    cosy: dict[Path, list[dict]] = {}
    try:
        runs = run_arms(arms, repeats, out, run_one)
    finally:
        if local is not None:
            local.stop()
    for arm_runs in runs.values():
        for run in arm_runs:
            for row in cosy.get(run.folder, []):
                run.extra.setdefault(int(row["unit"]), {}).update(auc=row["auc"], mad=row["mad"])
    if truth:
        for arm_runs in runs.values():
            for run in arm_runs:
                for row in run.rows:
                    unit = truth.get(int(row["unit"]))
                    matched = attribute_match(row["label"], unit) if unit else None
                    if matched is not None:
                        run.extra.setdefault(int(row["unit"]), {})["match"] = float(matched)
    table = summarize(runs)
    pairs = pairwise_tests(runs, "score")
    report = markdown_report(table, pairs)
    write_csv(out / "comparison.csv", table)
    write_csv(out / "pairwise.csv", pairs)
    (out / "comparison.md").write_text(report)
    plot_convergence(runs, out / "convergence.png")
    typer.echo(report)
    typer.echo(f"wrote {out}/comparison.md, comparison.csv, pairwise.csv, convergence.png")
