"""The ``line`` command."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.evals import eval_app
from cli.options import (
    BasisSpec,
    Concurrency,
    JSONOutput,
    LLMBaseURL,
    LLMImages,
    LocalServerDevice,
    LocalServerStore,
    NoProgressBar,
    OpenAICompatibleURL,
    OptionalLLMSpec,
    OutagePatience,
    PositionsRule,
    RunEditor,
    RunStore,
    exit_status,
    exit_stopped,
    exit_with_error,
    warn,
)
from cli.progress import run_progress
from cli.toyworld import toyworld_app
from inference.settings import DEFAULT_BATCHING, DEFAULT_HOST, DEFAULT_LIMITS, DEFAULT_PORT

if TYPE_CHECKING:  # each command imports what it runs (a CLI that answers at once)
    from agent.run_folder import RunFolder

app = typer.Typer(
    help="LINE: LLM-based iterative neuron explanations for vision models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(toyworld_app, name="toyworld")
app.add_typer(eval_app, name="eval")


@app.command()
def serve(
    generator: Annotated[
        list[str] | None,
        typer.Option(
            help="Generator spec (repeatable; the first is the default): tiny-sd, "
            "procedural:shapes, a diffusers hub id or folder."
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Target spec (repeatable): torchvision:<arch>[:<weights>|random], "
            "places365:<checkpoint>, python:<file.py>:<factory>, planted:shapes."
        ),
    ] = None,
    editor: Annotated[
        list[str] | None,
        typer.Option(
            help="Image editor spec (repeatable; the first is the default) for POST /v1/edits "
            "and `line eval ablation`: procedural:shapes (toy world), tiny-pix2pix, or a "
            "diffusers image-editing pipeline (instruction, image-to-image or inpainting) by hub "
            "id or folder."
        ),
    ] = None,
    basis: Annotated[
        list[str] | None,
        typer.Option(
            help="Unit basis NAME=SPEC (repeatable), SPEC sae:PATH or directions:PATH: requests "
            "read layer L in it as L@NAME. A server on loopback also loads bases runs name."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; non-loopback needs --token.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to bind.")] = DEFAULT_PORT,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    max_batch: Annotated[
        int, typer.Option(help="A batch closes at this many items.")
    ] = DEFAULT_BATCHING.max_batch,
    max_wait_ms: Annotated[
        float, typer.Option(help="...or this long after its first item.")
    ] = DEFAULT_BATCHING.max_wait_ms,
    store: Annotated[
        Path | None, typer.Option(help="Image store folder [default: ~/.cache/line/store].")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="LINE_SERVER_TOKEN", help="Require 'Authorization: Bearer TOKEN'."),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Generator dtype: float32, float16, bfloat16.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Default diffusion steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Default guidance scale.")] = None,
    width: Annotated[int | None, typer.Option(help="Default image width.")] = None,
    height: Annotated[int | None, typer.Option(help="Default image height.")] = None,
    max_images_per_request: Annotated[
        int, typer.Option(help="Cap per request.")
    ] = DEFAULT_LIMITS.max_images_per_request,
    trust_checkpoints: Annotated[
        bool,
        typer.Option(help="Unpickle arbitrary objects in checkpoint files (only files you trust)."),
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve through Ray Serve: model replicas (one per GPU) behind the same HTTP "
            "API. Needs the ray extra: pip install line-agent\\[ray].",
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(help="--ray: model replicas.")] = 1,
    gpus_per_replica: Annotated[
        float, typer.Option(help="--ray: GPUs per replica (0 runs the replicas on CPUs).")
    ] = 1.0,
    cpus_per_replica: Annotated[
        float, typer.Option(help="--ray: CPUs per replica (also its torch threads).")
    ] = 1.0,
    ray_address: Annotated[
        str | None,
        typer.Option(help="--ray: join this Ray cluster (auto, or host:port); default: local."),
    ] = None,
) -> None:
    """Run the batched inference server (image generation and activation measurement)."""
    from inference.config import ServeConfig, ServeConfigError, build_service
    from inference.registry import BackendSpecError, GeneratorOptions
    from inference.settings import BatchingConfig, ServiceLimits

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = ServeConfig(
        generators=generator or [],
        targets=target or [],
        editors=editor or [],
        host=host,
        port=port,
        device=device,
        token=token,
        generator_options=GeneratorOptions(dtype, steps, guidance, width, height),
        batching=BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
        limits=ServiceLimits(max_images_per_request=max_images_per_request),
        trust_checkpoints=trust_checkpoints,
        bases=basis or [],
    )
    if store is not None:
        config.store = store
    if ray:
        if replicas < 1:
            exit_with_error("--replicas must be at least 1")
        from inference.ray_serve import serve_with_ray

        try:
            serve_with_ray(config, replicas, gpus_per_replica, cpus_per_replica, ray_address)
        except (ServeConfigError, BackendSpecError, OSError) as error:
            exit_with_error(str(error))
        return
    import uvicorn

    from inference.app import create_app

    try:
        service = build_service(config)
    except (ServeConfigError, BackendSpecError, OSError) as error:
        exit_with_error(str(error))
    typer.echo(
        f"LINE server on http://{host}:{port} (store {config.store}); "
        f"generators: {', '.join(service.generators) or '-'}; "
        f"targets: {', '.join(service.targets) or '-'}"
        + (f"; editors: {', '.join(service.editors)}" if service.editors else "")
        + "".join(
            f"; basis {name}: {service.bases.get(name).describe()}" for name in service.bases.names
        ),
        err=True,
    )
    uvicorn.run(create_app(service, token), host=host, port=port, log_level=log_level.lower())


@app.command()
def layers(
    target: Annotated[str, typer.Argument(help="Target spec, e.g. torchvision:resnet50.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "cpu",
    trust_checkpoints: Annotated[bool, typer.Option(help="See `line serve`.")] = False,
    basis: BasisSpec = None,
) -> None:
    """List a target model's layers and unit counts (and a basis's unit spaces and size)."""
    from inference.bases import BasisError, BasisRegistry, load_basis
    from inference.registry import BackendSpecError, load_target

    try:
        model = load_target(target, device, trust_checkpoints)
        unit_basis = load_basis(basis) if basis is not None else None
    except (BackendSpecError, BasisError) as error:
        exit_with_error(str(error))
    widths = {layer.name: layer.units for layer in model.layers()}
    rows: list[dict[str, object]] = [
        {"layer": info.name, "units": info.units, "positions": info.positions}
        for info in model.layers()
    ]
    if unit_basis is not None:
        registry = BasisRegistry()
        registry.add(unit_basis)
        spaces = registry.unit_spaces(widths)
        if not spaces:
            exit_with_error(
                f"basis {unit_basis.source} reads {unit_basis.d_in}-wide vectors, but no layer of "
                f"{target} has {unit_basis.d_in} units"
            )
        about = unit_basis.describe()
        rows += [{"layer": s["name"], "units": s["units"], "basis": about} for s in spaces]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(str(row["layer"])) for row in rows)
    for row in rows:
        about = f"  {row['basis']}" if "basis" in row else ""
        if row.get("positions"):  # a CNN map or ViT tokens: read by a rule (--positions)
            about += f"  positions: {row['positions']}"
        typer.echo(f"{row['layer']!s:<{width}}  {row['units']}{about}")


def _print_results(
    rows: list[dict], folder: RunFolder, extra: tuple[str, ...] = (), limit: int = 40
) -> None:
    """The results table (first ``limit`` neurons), totals and the failed neurons' reasons."""
    from analysis.selectivity import shown_label

    columns = ["unit", "label", "score", "status", *extra]
    shown = [{**row, "label": shown_label(row["label"], row.get("selective"))} for row in rows]
    table = [columns] + [
        [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        for row in shown[:limit]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for index, line in enumerate(table):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            typer.echo("  ".join("-" * width for width in widths))
    if len(rows) > limit:
        typer.echo(f"... {len(rows) - limit} more in {folder.results_csv.name}")
    done = sum(row["status"] == "done" for row in rows)
    failed = [row for row in rows if row["status"] == "failed"]
    dead = sum(row["status"] == "dead" for row in rows)
    selective = sum(row.get("selective") is True for row in rows)
    typer.echo(
        f"{done} of {len(rows)} neurons explained ({selective} with a selective concept"
        + (f"; {dead} dead, not explained" if dead else "")
        + "); "
        f"{sum(row['llm_calls'] for row in rows)} LLM calls, "
        f"{sum(row['tokens'] for row in rows)} tokens, {sum(row['images'] for row in rows)} images"
    )
    for row in failed[:10]:
        typer.secho(f"unit {row['unit']} failed: {row['reason']}", fg=typer.colors.YELLOW)
    if failed:
        typer.echo("rerun with --resume to retry the failed neurons")
    for outage in folder.read_outages():
        typer.secho(
            f"outage: the {outage.endpoint} did not answer from {outage.started} for "
            f"{outage.seconds:.0f} s ({outage.outcome}; {outage.waiting_neurons} neurons waited "
            "for it together)",
            fg=typer.colors.YELLOW,
        )


@app.command()
def run(
    target: Annotated[
        str | None, typer.Option(help="Target spec, e.g. torchvision:resnet50.")
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Layer name (see `line layers`).")] = None,
    units: Annotated[str | None, typer.Option(help="Units: 0-99, 3,7,9 or 0-3,10.")] = None,
    generator: Annotated[
        str | None, typer.Option(help="Generator spec (a local server needs one).")
    ] = None,
    llm: OptionalLLMSpec = None,
    llm_base_url: LLMBaseURL = None,
    llm_context: Annotated[
        int | None,
        typer.Option(
            help="The LLM's context window in tokens; every request is fitted to it "
            "[default: what the server states (vLLM, llama.cpp, LM Studio), else not fitted]."
        ),
    ] = None,
    llm_max_tokens: Annotated[
        int | None,
        typer.Option(
            help="The longest LLM answer in tokens [default: what the context window leaves, "
            "at most a quarter of it; unbounded when the window is unknown]."
        ),
    ] = None,
    prompts: Annotated[
        str | None, typer.Option(help="Prompt variant name or folder [default: paper].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder to create.")] = None,
    server: Annotated[
        list[str] | None,
        typer.Option(
            help="Inference server URL; repeat it to spread the work over several servers "
            "(least outstanding requests). Without it one is started."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Neurons explained at once [default: 64].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed (image seeds derive from it).")] = 0,
    temperature: Annotated[float | None, typer.Option(help="Override the variant's.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override the variant's.")] = None,
    device: LocalServerDevice = "auto",
    store: LocalServerStore = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this folder; --llm, --llm-base-url, --llm-context, "
            "--llm-max-tokens, --concurrency and --server may change (recorded in config.json)."
        ),
    ] = None,
    allow_variant_change: Annotated[
        bool,
        typer.Option(
            help="--resume: go on although the prompt variant changed since the run started "
            "(recorded; the report says so)."
        ),
    ] = False,
    control: Annotated[
        str | None,
        typer.Option(
            help="Control set: a folder of images (class folders seed the search) or toy."
        ),
    ] = None,
    score: Annotated[
        str | None, typer.Option(help="Override the variant's score: mean, mad, auc.")
    ] = None,
    llm_cache: Annotated[
        Path | None,
        typer.Option(help="Cache LLM answers in this folder: a repeated run costs nothing."),
    ] = None,
    basis: BasisSpec = None,
    positions: PositionsRule = None,
    outage_patience: OutagePatience = None,
    llm_images: LLMImages = None,
    editor: RunEditor = None,
    groups: Annotated[
        bool | None,
        typer.Option(
            "--groups/--no-groups",
            help="Add polysemanticity groups to the records and results.csv (loads a text "
            "model) [default: on; a resumed run keeps its setting].",
        ),
    ] = None,
    report_html: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")
    ] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bar or table.")] = False,
    as_json: JSONOutput = False,
) -> None:
    """Explain neurons: propose, render, measure, refine, for many neurons at once.

    Exit status: 0 every neuron done; 3 the run finished with failed neurons (--resume retries
    them); 4 the run stopped because the inference server or the LLM stayed unreachable for
    --outage-patience (--resume continues it); 2 the run could not start (bad options,
    unreachable LLM or server); 1 an unexpected error.
    """
    from agent.launch import execute_run, settings_from_options
    from agent.runner import RunStopped
    from tools.server_session import RunSetupError

    try:
        settings, folder = settings_from_options(
            target=target, layer=layer, units=units, generator=generator, llm=llm,
            llm_base_url=llm_base_url, prompts=prompts, out=out, server=server,
            concurrency=concurrency, seed=seed, temperature=temperature, iterations=iterations,
            resume=resume, control=control, score=score, llm_cache=llm_cache, basis=basis,
            positions=positions,
            llm_context=llm_context, allow_variant_change=allow_variant_change,
            llm_max_tokens=llm_max_tokens, outage_patience=outage_patience,
            llm_images=llm_images, editor=editor, groups=groups,
        )  # fmt: skip
        with run_progress(quiet or as_json) as update:
            rows = execute_run(settings, folder, device=device, store=store, on_progress=update)
    except RunSetupError as error:
        exit_with_error(str(error))
    except RunStopped as stopped:
        index = _write_report(folder, store, echo=not as_json) if report_html else None
        if as_json:
            _print_json(folder, index, stopped.rows)
        elif index is not None:
            typer.echo(f"report (so far): {index}")
        exit_stopped(str(stopped))
    index = _write_report(folder, store, echo=not as_json) if report_html else None
    if as_json:
        _print_json(folder, index, rows)
        raise typer.Exit(exit_status(rows))
    if not quiet:
        _print_results(rows, folder)
    typer.echo(f"run folder: {folder.path}")
    if index is not None:
        typer.echo(f"report: {index}")
    raise typer.Exit(exit_status(rows))


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Run folder [default: runs/demo-<time>].")
    ] = None,
    llm: Annotated[
        str, typer.Option(help="LLM spec; the default is not an LLM.")
    ] = "offline:vocab",
    llm_base_url: OpenAICompatibleURL = None,
    concurrency: Concurrency = 32,
    quiet: NoProgressBar = False,
    as_json: JSONOutput = False,
) -> None:
    """Explain every planted unit of the offline toy world and compare with the ground truth.

    Exit status as for `line run`: 0 every neuron done, 3 some failed, 4 stopped (an endpoint
    stayed unreachable), 2 could not start.
    """
    from agent.launch import run_demo
    from agent.runner import RunStopped
    from tools.server_session import RunSetupError

    try:
        with run_progress(quiet or as_json) as update:
            rows, folder = run_demo(out, llm, llm_base_url, concurrency, on_progress=update)
    except RunSetupError as error:
        exit_with_error(str(error))
    except RunStopped as stopped:
        exit_stopped(str(stopped))
    index = _write_report(folder, echo=not as_json)
    if as_json:
        _print_json(folder, index, rows)
        raise typer.Exit(exit_status(rows))
    _print_results(rows, folder, extra=("truth", "match", "groups"))
    matched = [row for row in rows if row["match"] in (True, False)]
    typer.echo(
        f"ground truth recovered for {sum(row['match'] is True for row in matched)} of "
        f"{len(matched)} planted units with a concept; the verdict (selective or not) is right "
        f"for {sum(row['verdict_right'] is True for row in rows)} of {len(rows)}"
    )
    typer.echo(f"run folder: {folder.path}")
    if index is not None:
        typer.echo(f"report: {index}")
    raise typer.Exit(exit_status(rows))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (from `line run` or `line demo`).")],
    store: RunStore = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: RUN_DIR/report).")
    ] = None,
) -> None:
    """Write a run's static HTML report: opens from file://, no server or network needed."""
    from report import ReportError, build_report

    try:
        index = build_report(run_dir, store=store, out=out)
    except ReportError as error:
        exit_with_error(str(error))
    typer.echo(f"report: {index}")


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, finished or still running.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8500,
    store: RunStore = None,
) -> None:
    """Serve a run's report on 127.0.0.1; pages refresh while the run is still going."""
    from report import ReportError, serve_viewer

    try:
        serve_viewer(
            run_dir,
            port,
            store,
            on_ready=lambda url: typer.echo(f"viewing {run_dir} at {url} (Ctrl-C to stop)"),
        )
    except ReportError as error:
        exit_with_error(str(error))


def _write_report(folder: RunFolder, store: Path | None = None, echo: bool = True) -> Path | None:
    """Write the run's HTML report; a failure only warns (the results are safe)."""
    from report import build_report

    try:
        return build_report(folder.path, store=store)
    except Exception as error:  # the run's results are safe; the report can be rebuilt
        if echo:
            warn(f"could not write the report ({error}); try `line report {folder.path}`")
        return None


def _print_json(folder: RunFolder, index: Path | None, rows: list[dict]) -> None:
    """The run folder, report and results rows as one JSON object on stdout."""
    report = str(index) if index else None
    output = {"run_folder": str(folder.path), "report": report, "neurons": rows}
    typer.echo(json.dumps(output, default=str))


if __name__ == "__main__":
    app()
