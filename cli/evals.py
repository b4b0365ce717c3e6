"""``line eval``: score explanations the way the field does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from analysis.simulator_specs import SIMULATOR_SPECS
from cli.options import (
    BasisSpec,
    Concurrency,
    LayerName,
    LLMBaseURL,
    LLMSpec,
    LocalServerDevice,
    LocalServerStore,
    NoProgressBar,
    OpenAICompatibleURL,
    PromptVariantName,
    ServerURL,
    TargetSpec,
    UnitsSpec,
    exit_stopped,
    exit_with_error,
    warn,
)
from cli.progress import count_progress, repeats_progress
from evals.defaults import (
    DEFAULT_ABLATION_TEMPLATE,
    DEFAULT_ABLATION_TOP_K,
    DEFAULT_COSY_TEMPLATE,
    DEFAULT_MIN_SIMILARITY,
)
from toyworld.defaults import PROBE_SCENES

if TYPE_CHECKING:  # each command imports what it runs (a CLI that answers at once)
    import numpy as np

    from agent.run_folder import RunFolder, RunSettings
    from evals.baseline import BaselineResult
    from evals.compare import MethodComparison
    from evals.variants import Arm, ArmRun, NeuronPanel
    from prompts.variant import PromptVariant
    from tools.controlset import ControlSet
    from tools.server_session import ServerSession

eval_app = typer.Typer(
    help="Evaluate explanations: CoSy, method comparison, iterations, ground truth, vocabulary "
    "baseline, variants, concept ablation, simulation scoring, fidelity.",
    no_args_is_help=True,
)


CosyControl = Annotated[
    str | None,
    typer.Option(
        help="Control set: a folder of natural images (flat or in class folders), toy or "
        "toy:N [default: the run's control set; toy for the toy world]."
    ),
]
CosyImages = Annotated[int, typer.Option("--n-images", min=1, help="Images rendered per label.")]
CosyTemplate = Annotated[
    str | None,
    typer.Option(
        help="Image prompt with {label} [default: the variant's cosy_template, else "
        f"'{DEFAULT_COSY_TEMPLATE}']."
    ),
]
CosyServer = Annotated[
    str | None, typer.Option(help="Inference server URL; without it one is started.")
]
ControlCacheDir = Annotated[
    Path | None,
    typer.Option(
        help="Where control matrices are cached [default: STORE/control for a local server, "
        "$LINE_CACHE/control with --server]."
    ),
]
CosyConcurrency = Annotated[int, typer.Option(help="Labels rendered at once.")]


def _cosy_inputs(
    settings: RunSettings, control: str | None, template: str | None, server: str | None
) -> tuple[ControlSet, str]:
    """The control set and template to score a run's labels with (checked before any work)."""
    from evals.cosy import cosy_prompt
    from evals.cosy_eval import control_spec_of, cosy_template_of
    from tools.controlset import ControlSet
    from tools.server_session import RunSetupError

    control_set = ControlSet.resolve(control_spec_of(control, settings))
    chosen_template = template or cosy_template_of(settings)
    cosy_prompt(chosen_template, "x")
    if not server and settings.generator is None:
        raise RunSetupError(
            "this run used a remote server (its config names no generator); pass --server URL"
        )
    return control_set, chosen_template


@eval_app.command("cosy")
def cosy_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `line run`.")],
    control: CosyControl = None,
    n_images: CosyImages = 50,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Score these labels instead of the run's: a CSV with columns unit,label[,layer] "
            "(LINE), layer,unit,description (CLIP-Dissect) or neuron,concept (CoSy, INVERT)."
        ),
    ] = None,
    template: CosyTemplate = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV to write [default: RUN_DIR/cosy.csv, or cosy-<labels>.csv with --labels]."
        ),
    ] = None,
    server: CosyServer = None,
    device: LocalServerDevice = "auto",
    store: LocalServerStore = None,
    cache_dir: ControlCacheDir = None,
    concurrency: CosyConcurrency = 16,
) -> None:
    """CoSy: score labels by how well the neuron separates their images from natural images."""
    from agent.run_folder import RunFolder
    from evals.cosy_eval import (
        control_cache,
        evaluate_cosy,
        read_label_csv,
        summarize_cosy,
        write_cosy_csv,
    )
    from tools.client import LineServerError, LineServerUnavailable
    from tools.controlset import ControlSetError
    from tools.server_session import server_session

    folder = RunFolder(run_dir)
    try:
        settings = folder.read_settings()
        label_map = None
        if labels is not None:
            label_map, label_notes = read_label_csv(labels)
            for text in label_notes:
                warn(text)
        control_set, chosen_template = _cosy_inputs(settings, control, template, server)
        with server_session(
            server, settings.target, settings.layer, settings.units, settings.generator,
            device=device, store=store, basis=settings.basis,
        ) as session:  # fmt: skip
            cache, server_id = control_cache(session, cache_dir)

            async def score_labels(on_progress: Callable[[int, int], None]) -> list[dict]:
                async with session.connect() as client:
                    return await evaluate_cosy(
                        folder, client, control_set, n_images, chosen_template, label_map,
                        cache_dir=cache, server_id=server_id, concurrency=concurrency,
                        notes=warn, on_progress=on_progress,
                    )  # fmt: skip

            with count_progress("CoSy") as progress:
                rows = asyncio.run(score_labels(progress))
    except (
        FileNotFoundError, ValueError, ControlSetError, LineServerError, LineServerUnavailable
    ) as error:  # fmt: skip
        exit_with_error(str(error))
    if not rows:
        exit_with_error("no neuron to score (see the notes above)")
    path = out or folder.cosy_csv(labels.stem if labels is not None else None)
    write_cosy_csv(path, rows)
    typer.echo(
        f"CoSy: {n_images} images per label ({chosen_template!r}), control {control_set.name} "
        f"({rows[0]['n_control']} images)"
    )
    for layer, stats in summarize_cosy(rows).items():
        typer.echo(
            f"{layer}: AUC {stats['auc_mean']:.3f} ± {stats['auc_std']:.3f}, "
            f"MAD {stats['mad_mean']:.3f} ± {stats['mad_std']:.3f} ({stats['neurons']} neurons)"
        )
    typer.echo(f"wrote {path}")


@eval_app.command("compare")
def compare_command(
    labels: Annotated[
        list[str],
        typer.Option(
            help="NAME=PATH, repeatable: a LINE run folder or a labels file (unit,label[,layer]; "
            "CLIP-Dissect's layer,unit,description; CoSy's neuron,concept). The first run "
            "folder sets the target, generator, seed and default layer."
        ),
    ],
    control: CosyControl = None,
    n_images: CosyImages = 50,
    template: CosyTemplate = None,
    vocabulary: Annotated[
        Path | None,
        typer.Option(help="Concepts, one per line: adds each method's share of new concepts."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for compare.csv/.md/.png [default: the first run folder]."),
    ] = None,
    server: CosyServer = None,
    device: LocalServerDevice = "auto",
    store: LocalServerStore = None,
    cache_dir: ControlCacheDir = None,
    concurrency: CosyConcurrency = 16,
) -> None:
    """Compare methods' labels with CoSy on the same neurons, control set and label images."""
    from agent.run_folder import RunFolder
    from evals.baseline import read_vocabulary
    from evals.compare import (
        compare_methods,
        comparison_text,
        load_methods,
        parse_method_sources,
        setup_line,
        write_method_comparison,
    )
    from evals.cosy_eval import control_cache
    from tools.client import LineServerError, LineServerUnavailable
    from tools.controlset import ControlSetError
    from tools.server_session import server_session

    try:
        reference, methods = load_methods(parse_method_sources(labels))
        settings = reference.read_settings()
        for method in methods:
            for text in method.notes:
                warn(f"{method.name}: {text}")
        concepts = read_vocabulary(vocabulary) if vocabulary is not None else None
        control_set, chosen_template = _cosy_inputs(settings, control, template, server)
        with server_session(
            server, settings.target, settings.layer, settings.units, settings.generator,
            device=device, store=store, basis=settings.basis,
        ) as session:  # fmt: skip
            cache, server_id = control_cache(session, cache_dir)

            async def score(on_progress: Callable[[int, int], None]) -> MethodComparison:
                async with session.connect() as client:
                    return await compare_methods(
                        client, reference, methods, control_set, n_images, chosen_template,
                        vocabulary=concepts, cache_dir=cache, server_id=server_id,
                        concurrency=concurrency, notes=warn, on_progress=on_progress,
                    )  # fmt: skip

            with count_progress("CoSy") as progress:
                comparison = asyncio.run(score(progress))
    except (
        FileNotFoundError, ValueError, ControlSetError, LineServerError, LineServerUnavailable
    ) as error:  # fmt: skip
        exit_with_error(str(error))
    if not comparison.table:
        exit_with_error("no label to score (see the notes above)")
    setup = setup_line(settings, control_set, n_images, chosen_template)
    files = write_method_comparison(comparison, RunFolder(out or reference.path), setup)
    typer.echo(setup)
    typer.echo(comparison_text(comparison))
    typer.echo(f"wrote {files.csv}, {files.summary} and {files.figure}")


@eval_app.command("iterations")
def iterations_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders made by `line run`.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the pooled iterations.csv/.md/.png of all the runs."),
    ] = None,
) -> None:
    """Iteration analysis: relative best score so far and discovery rate per step (1..N, S)."""
    from agent.run_folder import RunFolder
    from evals.iterations import analyse_runs, iterations_text, write_iterations

    try:
        analysed = analyse_runs(runs)
    except (FileNotFoundError, ValueError) as error:
        exit_with_error(str(error))
    written = []
    for path, rows, notes in analysed:
        for text in notes:
            warn(f"{path}: {text}")
        written.append(write_iterations(rows, notes, RunFolder(path)))
    pooled = [row for _, rows, _ in analysed for row in rows]
    typer.echo(iterations_text(pooled))
    if out is not None:
        notes = [f"{path}: {text}" for path, _, run_notes in analysed for text in run_notes]
        written.append(write_iterations(pooled, notes, RunFolder(out)))
    for files in written:
        typer.echo(f"wrote {files.csv}, {files.summary} and {files.figure}")


@eval_app.command("groundtruth")
def groundtruth_command(
    target: Annotated[
        str, typer.Option(help="A toy-world target: planted:shapes or learned:shapes.")
    ] = "planted:shapes",
    layer: Annotated[
        str | None,
        typer.Option(
            help="Layer [default: planted:shapes's planted units]; other layers are scored "
            "against their dissection reference."
        ),
    ] = None,
    llm: LLMSpec = "offline:vocab",
    llm_base_url: LLMBaseURL = None,
    prompts: PromptVariantName = "paper",
    repeats: Annotated[int, typer.Option(help="Runs of every unit (seeds 0..R-1).")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: runs/groundtruth-<time>]; resumes repeats."),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Override the variant's (offline:vocab: 28).")
    ] = None,
    units: Annotated[
        str | None, typer.Option(help="Units, e.g. 0-3,7 [default: all of the layer].")
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Also label the units with the vocabulary baseline.")
    ] = True,
    basis: Annotated[
        str | None,
        typer.Option(
            help="Explain the latents of a toy basis (sae:PATH or directions:PATH from `line "
            "toyworld bases`) against their known concepts."
        ),
    ] = None,
    heldout_scenes: Annotated[
        int,
        typer.Option(
            help="Held-out probe scenes (disjoint from the dissection's) that test the labels' "
            "predicates and the references' stability."
        ),
    ] = PROBE_SCENES,
    concurrency: Concurrency = 32,
    quiet: NoProgressBar = False,
) -> None:
    """Ground-truth benchmark: explain toy-world units, score labels vs their known concepts."""
    from agent.launch import parse_units
    from analysis.similarity import EmbedderUnavailable
    from evals.groundtruth import figures_text, run_groundtruth_benchmark, summary_table
    from tools.server_session import RunSetupError

    out = out or Path("runs") / f"groundtruth-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        unit_list = parse_units(units) if units else None
        with repeats_progress(quiet, repeats) as update:
            result = run_groundtruth_benchmark(
                out,
                target=target,
                layer=layer,
                llm=llm,
                prompts=prompts,
                repeats=repeats,
                llm_base_url=llm_base_url,
                iterations=iterations,
                concurrency=concurrency,
                units=unit_list,
                on_progress=update,
                baseline=baseline,
                basis=basis,
                heldout_scenes=heldout_scenes,
            )
    except (RunSetupError, EmbedderUnavailable) as error:
        exit_with_error(str(error))
    typer.echo(summary_table(result["summary"]))
    typer.echo(
        "recovered: the label names exactly the truth's attributes; jaccard: shared / all "
        "attributes of label and truth; predicate AUC: how well the label's predicate on "
        "held-out scenes ranks the unit (live units); similarity: all-MiniLM-L6-v2 cosine with "
        "the truth; vocab: the same for the best concept of the offline vocabulary; groups: "
        "distinct high-scoring meanings; verdict right: the run's selective/not-selective "
        "verdict agrees with the truth (weak references left out); false claims: no-concept "
        "units whose label the verdict calls selective"
    )
    typer.echo(figures_text(result["figures"]))
    typer.echo(f"rows: {result['rows_csv']}")
    typer.echo(f"summary: {result['summary_csv']}")
    typer.echo(f"figures: {result['summary_json']}")


async def _vocabulary_scores(
    session: ServerSession,
    target: str,
    layer: str,
    units: list[int],
    concepts: list[str],
    variant: PromptVariant,
    generator: str | None,
    seed: int,
    control_set: ControlSet | None,
) -> BaselineResult:
    """Every concept's score on every unit, measured on the session's server."""
    from evals.baseline import vocabulary_baseline
    from tools.controlset import control_activations

    async with session.connect() as client:
        matrix: np.ndarray | None = None
        if control_set is not None:
            matrix = await control_activations(client, control_set, target, layer, units, generator)
        return await vocabulary_baseline(
            client, target, layer, units, concepts, variant, generator, seed, matrix
        )


@eval_app.command("vocab")
def vocab_command(
    vocabulary: Annotated[Path, typer.Option(help="Concepts, one per line.")],
    target: TargetSpec,
    layer: LayerName,
    units: UnitsSpec,
    out: Annotated[Path, typer.Option(help="Folder for vocab-labels.csv and vocab-scores.csv.")],
    generator: Annotated[
        str | None, typer.Option(help="Generator (a local server needs one).")
    ] = None,
    server: ServerURL = None,
    prompts: Annotated[
        str, typer.Option(help="Variant whose template and scoring to use.")
    ] = "paper",
    control: Annotated[str | None, typer.Option(help="Control set for --score mad/auc.")] = None,
    score: Annotated[str | None, typer.Option(help="mean, mad or auc.")] = None,
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
    device: LocalServerDevice = "auto",
    basis: BasisSpec = None,
) -> None:
    """The vocabulary baseline: score every concept of a vocabulary, label each unit by the best."""
    from agent.launch import parse_units, read_basis
    from evals.baseline import read_vocabulary
    from inference.bases import unit_space
    from prompts.variant import VariantError, load_variant
    from tools.controlset import ControlSet, ControlSetError
    from tools.server_session import RunSetupError, server_session

    try:
        concepts = read_vocabulary(vocabulary)
        unit_list = parse_units(units)
        variant = load_variant(prompts, score=score)
        control_set = ControlSet.resolve(control) if control else None
        if variant.settings.score != "mean" and control_set is None:
            raise RunSetupError(f"score {variant.settings.score!r} needs --control PATH|toy")
        if basis is not None:  # the basis's unit space of the layer
            layer = unit_space(layer, read_basis(basis).key)
        with server_session(
            server, target, layer, unit_list, generator, device=device, basis=basis
        ) as session:
            scoring = _vocabulary_scores(
                session, target, layer, unit_list, concepts, variant, generator, seed, control_set
            )
            result = asyncio.run(scoring)
    except (OSError, ValueError, VariantError, ControlSetError) as error:
        exit_with_error(str(error))
    labels_csv, scores_csv = out / "vocab-labels.csv", out / "vocab-scores.csv"
    out.mkdir(parents=True, exist_ok=True)
    result.write_labels(labels_csv)
    result.write_scores(scores_csv)
    for unit, label, value in result.labels():
        typer.echo(f"{unit:>6}  {label:<30}  {value:.4f}")
    typer.echo(f"wrote {labels_csv} and {scores_csv}")


@eval_app.command("discovery")
def discovery_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its results.csv).")],
    vocabulary: Annotated[Path, typer.Option(help="E.g. the ImageNet class names.")],
) -> None:
    """Concept discovery: the share of final labels not in a vocabulary."""
    from agent.run_folder import RunFolder
    from evals.baseline import concept_discovery, read_vocabulary

    folder = RunFolder(run_dir)
    if not folder.results_csv.is_file():
        exit_with_error(
            f"{run_dir} has no {folder.results_csv.name}; finish the run first "
            f"(line run --resume {run_dir})"
        )
    try:
        concepts = read_vocabulary(vocabulary)
    except (OSError, ValueError) as error:
        exit_with_error(str(error))
    labels = [row["label"] for row in folder.read_results() if row["status"] == "done"]
    share = concept_discovery(labels, concepts)
    typer.echo(
        f"{share:.1%} of {len(labels)} labels are not in {vocabulary.name} "
        f"({len(concepts)} concepts)"
    )


async def _cosy_of_run(
    folder: RunFolder, session: ServerSession, control: str, n_images: int, generator: str | None
) -> list[dict]:
    """CoSy rows of a finished run, label images rendered with ``generator`` (written to its
    cosy.csv as well)."""
    from evals.cosy_eval import evaluate_cosy, write_cosy_csv
    from tools.controlset import ControlSet

    async with session.connect() as client:
        rows = await evaluate_cosy(
            folder, client, ControlSet.resolve(control), n_images, generator=generator
        )
    write_cosy_csv(folder.cosy_csv(), rows)
    return rows


async def _neuron_panels(
    session: ServerSession, runs: dict[Arm, list[ArmRun]], layer: str, unit: int
) -> list[NeuronPanel]:
    from evals.variants import neuron_panels

    async with session.connect() as client:
        return await neuron_panels(client, runs, layer, unit)


@eval_app.command("variants")
def variants_command(
    variants: Annotated[str, typer.Option(help="Comma-separated variants, e.g. paper,agentic.")],
    target: TargetSpec,
    layer: LayerName,
    units: UnitsSpec,
    out: Annotated[Path, typer.Option(help="Folder for the runs and the comparison.")],
    llm: Annotated[
        list[str] | None, typer.Option(help="LLM spec (repeatable: every LLM is an arm).")
    ] = None,
    llm_base_url: OpenAICompatibleURL = None,
    generator: Annotated[str | None, typer.Option(help="Generator of a local server.")] = None,
    generators: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated generators, each an arm (crossed with variants and LLMs); a "
            "local server loads them all. CoSy renders with the first."
        ),
    ] = None,
    server: ServerURL = None,
    repeats: Annotated[int, typer.Option(help="Runs per arm (repeat k uses seed k).")] = 3,
    iterations: Annotated[int | None, typer.Option(help="Override every variant's.")] = None,
    control: Annotated[str | None, typer.Option(help="Control set: adds CoSy AUC and MAD.")] = None,
    n_images: Annotated[int, typer.Option(help="CoSy images per label (with --control).")] = 50,
    show_unit: Annotated[
        int | None,
        typer.Option(help="Unit whose labels and top images every arm shows [default: the first]."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Neurons at once per run.")] = 64,
    device: LocalServerDevice = "auto",
    quiet: Annotated[bool, typer.Option(help="Print only the table.")] = False,
    basis: BasisSpec = None,
    editor: Annotated[
        str | None,
        typer.Option(
            help="Image editor of the agentic arms' edit_images tool (see `line run --editor`) "
            "[default: procedural:shapes for a toy-world variant that edits, else none]."
        ),
    ] = None,
) -> None:
    """Compare prompt variants, LLMs and generators: scores with 95% CIs, paired Wilcoxon
    tests, plots. A variant with images for the LLM or the edit_images tool (agentic-vision)
    is an arm like any other; its runs' editor is loaded by the local server."""
    from agent.launch import execute_run, parse_units, read_basis, settings_from_options
    from agent.run_folder import RunFolder
    from agent.runner import RunStopped
    from evals.variants import (
        COMPARISON_FILES,
        Arm,
        add_cosy_figures,
        add_groundtruth_matches,
        neuron_figure_path,
        plot_neuron_panels,
        run_arms,
        write_comparison,
    )
    from inference.bases import unit_space
    from prompts.variant import VariantError, load_variant
    from tools.server_session import RunSetupError, server_session

    if generator and generators:
        exit_with_error("give --generator (one for every arm) or --generators (one arm each)")
    generator_list = [g.strip() for g in (generators or "").split(",") if g.strip()]
    arms = [
        Arm(variant.strip(), spec, arm_generator)
        for arm_generator in (generator_list or [""])
        for spec in (llm or ["offline:vocab"])
        for variant in variants.split(",")
        if variant.strip()
    ]
    if repeats < 1:
        exit_with_error("--repeats must be at least 1")
    if out.exists() and any(out.iterdir()):
        exit_with_error(f"{out} is not empty; choose a new --out folder")
    cosy_generator = generator_list[0] if generator_list else generator

    def settings_of(
        arm: Arm, folder: Path, seed: int, servers: list[str] | None
    ) -> tuple[RunSettings, RunFolder]:
        """The settings of one run of an arm (checked; nothing loads)."""
        try:  # only an agentic arm edits images
            agentic = load_variant(arm.variant).settings.strategy == "agentic"
        except VariantError as error:
            raise RunSetupError(str(error)) from error
        edits = editor if agentic else None
        return settings_from_options(
            target=target, layer=layer, units=units, generator=arm.generator or generator,
            llm=arm.llm, llm_base_url=llm_base_url, prompts=arm.variant, out=folder,
            server=servers, concurrency=concurrency, seed=seed, iterations=iterations,
            control=control, basis=basis, editor=edits,
        )  # fmt: skip

    cosy: dict[Path, list[dict]] = {}
    try:
        unit_list = parse_units(units)
        shown = unit_list[0] if show_unit is None else show_unit
        if shown not in unit_list:
            raise RunSetupError(f"--show-unit {shown} is not among --units {units}")
        editors: list[str] = []
        for arm in arms:  # every arm's variant and LLM are checked before anything loads
            checked, _ = settings_of(arm, out / "check", 0, [server] if server else None)
            if checked.editor is not None and checked.editor not in editors:
                editors.append(checked.editor)
        space = unit_space(layer, read_basis(basis).key) if basis else layer  # runs' layer
        with server_session(
            server, target, space, unit_list, generator_list or generator, device=device,
            basis=basis, editors=editors,
        ) as session:  # fmt: skip

            def run_one(arm: Arm, repeat: int, folder: Path) -> list[dict]:
                settings, run_folder = settings_of(arm, folder, repeat, session.urls)
                rows = execute_run(settings, run_folder)
                if not quiet:
                    done = sum(row["status"] == "done" for row in rows)
                    typer.echo(f"{arm.name} repeat {repeat}: {done}/{len(rows)} neurons")
                return rows

            runs = run_arms(arms, repeats, out, run_one)
            for run in (run for arm_runs in runs.values() for run in arm_runs):
                if control:
                    cosy[run.folder] = asyncio.run(
                        _cosy_of_run(RunFolder(run.folder), session, control, n_images,
                                     cosy_generator)
                    )  # fmt: skip
            panels = asyncio.run(_neuron_panels(session, runs, space, shown))
    except RunSetupError as error:
        exit_with_error(str(error))
    except RunStopped as stopped:  # an endpoint stayed down: that arm's run resumes
        exit_stopped(str(stopped))
    add_cosy_figures(runs, cosy)
    add_groundtruth_matches(runs, target, space)
    typer.echo(write_comparison(runs, out))
    plot_neuron_panels(panels, shown, neuron_figure_path(out, shown))
    typer.echo(f"wrote {out}/{', '.join(COMPARISON_FILES)}, {neuron_figure_path(out, shown).name}")


@eval_app.command("ablation")
def ablation_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `line run`.")],
    control: Annotated[
        str | None,
        typer.Option(
            help="Take each neuron's top images from this control set (a folder of images, toy "
            "or toy:N) [default: its top generated images from the run]."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Images edited per neuron.")] = (
        DEFAULT_ABLATION_TOP_K
    ),
    editor: Annotated[
        str | None,
        typer.Option(
            help="Image editor: a diffusers image-editing pipeline by hub id or folder (e.g. "
            "timbrooks/instruct-pix2pix), tiny-pix2pix, or procedural:shapes [default: "
            "procedural:shapes for the toy world; the server's first editor with --server]."
        ),
    ] = None,
    template: Annotated[
        str, typer.Option(help="Edit instruction with {label}.")
    ] = DEFAULT_ABLATION_TEMPLATE,
    control_concepts: Annotated[
        Path | None,
        typer.Option(
            help="Random control concepts, one per line [default: the toy world's vocabulary "
            "for toy targets, else evals/vocab/everyday.txt]."
        ),
    ] = None,
    server: CosyServer = None,
    device: LocalServerDevice = "auto",
    store: LocalServerStore = None,
    cache_dir: ControlCacheDir = None,
    concurrency: Annotated[int, typer.Option(help="Neurons edited at once.")] = 8,
) -> None:
    """Concept ablation: edit the label out of each neuron's top images and measure the drop,
    against a random concept's edit of the same images."""
    from agent.run_folder import RunFolder
    from evals.ablation import (
        ABLATION_SUMMARY_COLUMNS,
        evaluate_ablation,
        summarize_ablation,
        write_ablation,
    )
    from evals.baseline import read_vocabulary
    from evals.cosy_eval import control_cache
    from evals.tables import text_table
    from tools.client import LineServerError, LineServerUnavailable
    from tools.controlset import ControlSet, ControlSetError
    from tools.server_session import RunSetupError, server_session
    from toyworld import TOY_WORLD_FAMILIES

    folder = RunFolder(run_dir)
    try:
        settings = folder.read_settings()
        control_set = ControlSet.resolve(control) if control else None
        concepts = read_vocabulary(control_concepts) if control_concepts else None
        if not server and settings.generator is None:
            raise RunSetupError(
                "this run used a remote server (its config names no generator); pass --server URL"
            )
        if not server and editor is None:
            if settings.target.partition(":")[0] not in TOY_WORLD_FAMILIES:
                raise RunSetupError(
                    "pass --editor SPEC: an image-editing pipeline such as "
                    "timbrooks/instruct-pix2pix (the toy world's procedural:shapes edits only "
                    "toy-world images)"
                )
            editor = "procedural:shapes"
        with server_session(
            server, settings.target, settings.layer, settings.units, settings.generator,
            device=device, store=store, editors=[editor] if editor else [],
            basis=settings.basis,
        ) as session:  # fmt: skip
            cache, server_id = control_cache(session, cache_dir)

            async def ablate() -> tuple[list[dict], dict[str, list[dict]]]:
                async with session.connect() as client:
                    return await evaluate_ablation(
                        folder, client, control_set, top_k, template, editor=editor,
                        control_concepts=concepts, cache_dir=cache, server_id=server_id,
                        concurrency=concurrency, notes=warn,
                    )  # fmt: skip

            rows, pairs = asyncio.run(ablate())
    except (OSError, ValueError, ControlSetError, LineServerError, LineServerUnavailable) as error:
        exit_with_error(str(error))
    files = folder.evaluation("ablation")
    write_ablation(files, rows, pairs, template, editor or "the server's editor")
    typer.echo(text_table(rows, ABLATION_SUMMARY_COLUMNS))
    summary = summarize_ablation(rows)
    typer.echo(
        f"mean drop {summary['drop']:.3f}, control edit {summary['control_drop']:.3f}, "
        f"fell {summary['fell']:.1%} ({summary['neurons']} of {len(rows)} neurons had an image "
        "above their typical level)"
    )
    typer.echo(f"wrote {files.csv}, {files.summary.name} and {files.details.name}")


def _check_has_labels(folder: RunFolder, run_dir: Path) -> None:
    """Some neuron of the run has a final label (else the notes say why, and it exits)."""
    from evals.cosy_eval import cosy_neurons

    neurons, notes = cosy_neurons(folder)
    if not neurons:
        for text in notes:
            warn(text)
        exit_with_error(
            f"no neuron of {run_dir} has a final label to score (see the notes above); finish "
            f"the run with `line run --resume {run_dir}`"
        )


@eval_app.command("simulate")
def simulate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `line run`.")],
    control: CosyControl = None,
    simulator: Annotated[
        list[str] | None,
        typer.Option(
            help="Simulator, repeatable: " + "; ".join(SIMULATOR_SPECS) + " [default: exact "
            "on a toy control set]."
        ),
    ] = None,
    server: CosyServer = None,
    device: Annotated[
        str, typer.Option(help="Device of a local server and of image-text simulators.")
    ] = "auto",
    store: LocalServerStore = None,
    cache_dir: ControlCacheDir = None,
) -> None:
    """Simulation scoring: how well each label predicts the neuron's activations on the control
    images (Pearson, Spearman, AUPRC of the top activations)."""
    from agent.run_folder import RunFolder
    from analysis.simulators import load_simulator
    from evals.cosy_eval import control_cache
    from evals.simulation import (
        SIMULATION_COLUMNS,
        SIMULATION_SUMMARY_TABLE,
        SIMULATION_TABLE,
        check_simulation_inputs,
        default_simulator,
        evaluate_simulation,
        simulation_markdown,
        simulation_summary_rows,
    )
    from evals.tables import text_table, write_rows
    from tools.client import LineServerError, LineServerUnavailable
    from tools.controlset import ControlSetError
    from tools.server_session import server_session

    folder = RunFolder(run_dir)
    try:
        settings = folder.read_settings()
        _check_has_labels(folder, run_dir)
        control_set, _ = _cosy_inputs(settings, control, None, server)
        specs = check_simulation_inputs(
            simulator or [default_simulator(control_set)], control_set, settings.generator
        )
        with server_session(
            server, settings.target, settings.layer, settings.units, settings.generator,
            device=device, store=store, basis=settings.basis,
        ) as session:  # fmt: skip
            cache, server_id = control_cache(session, cache_dir)
            simulators = [load_simulator(spec, device) for spec in specs]

            async def simulate() -> list[dict]:
                async with session.connect() as client:
                    return await evaluate_simulation(
                        folder, client, control_set, simulators, cache_dir=cache,
                        server_id=server_id, notes=warn,
                    )  # fmt: skip

            rows = asyncio.run(simulate())
    except (
        FileNotFoundError, ValueError, ControlSetError, LineServerError, LineServerUnavailable
    ) as error:  # fmt: skip
        exit_with_error(str(error))
    if not rows:
        exit_with_error("no neuron to score (see the notes above)")
    files = folder.evaluation("simulation")
    write_rows(files.csv, rows, SIMULATION_COLUMNS)
    files.summary.write_text(simulation_markdown(rows, control_set.name))
    typer.echo(text_table(rows, SIMULATION_TABLE))
    typer.echo("")
    typer.echo(text_table(simulation_summary_rows(rows), SIMULATION_SUMMARY_TABLE))
    typer.echo(f"wrote {files.csv} and {files.summary}")


@eval_app.command("fidelity")
def fidelity_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `line run`.")],
    control: Annotated[
        str | None,
        typer.Option(
            help="A control folder in class folders (ROOT/<class>/*.jpg): the real images "
            "[default: the run's control set]."
        ),
    ] = None,
    n_images: CosyImages = 20,
    min_similarity: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A label names its most similar class from this cosine up "
            "(all-MiniLM-L6-v2), when no class has its exact name.",
        ),
    ] = DEFAULT_MIN_SIMILARITY,
    template: CosyTemplate = None,
    server: CosyServer = None,
    device: LocalServerDevice = "auto",
    store: LocalServerStore = None,
    cache_dir: ControlCacheDir = None,
) -> None:
    """Fidelity: do generated images of a label stand in for real images of its class?"""
    from agent.run_folder import RunFolder
    from analysis.similarity import EmbedderUnavailable
    from evals.cosy_eval import control_cache
    from evals.fidelity import (
        FIDELITY_COLUMNS,
        FIDELITY_SUMMARY_TABLE,
        FIDELITY_TABLE,
        check_class_folders,
        evaluate_fidelity,
        fidelity_markdown,
        fidelity_summary_rows,
    )
    from evals.tables import text_table, write_rows
    from tools.client import LineServerError, LineServerUnavailable
    from tools.controlset import ControlSetError
    from tools.server_session import server_session

    folder = RunFolder(run_dir)
    try:
        settings = folder.read_settings()
        _check_has_labels(folder, run_dir)
        control_set, chosen_template = _cosy_inputs(settings, control, template, server)
        check_class_folders(control_set)
        with server_session(
            server, settings.target, settings.layer, settings.units, settings.generator,
            device=device, store=store, basis=settings.basis,
        ) as session:  # fmt: skip
            cache, server_id = control_cache(session, cache_dir)

            async def compare() -> list[dict]:
                async with session.connect() as client:
                    return await evaluate_fidelity(
                        folder, client, control_set, n_images, chosen_template, min_similarity,
                        cache_dir=cache, server_id=server_id, notes=warn,
                    )  # fmt: skip

            rows = asyncio.run(compare())
    except (
        FileNotFoundError, ValueError, ControlSetError, LineServerError, LineServerUnavailable,
        EmbedderUnavailable,
    ) as error:  # fmt: skip
        exit_with_error(str(error))
    if not rows:
        exit_with_error(
            f"no final label of {run_dir} names one of the {len(control_set.classes)} classes "
            f"of {control_set.name} (see the notes above); lower --min-similarity to accept "
            "looser matches"
        )
    files = folder.evaluation("fidelity")
    write_rows(files.csv, rows, FIDELITY_COLUMNS)
    files.summary.write_text(fidelity_markdown(rows, control_set.name, chosen_template))
    typer.echo(text_table(rows, FIDELITY_TABLE))
    typer.echo("")
    typer.echo(text_table(fidelity_summary_rows(rows), FIDELITY_SUMMARY_TABLE))
    typer.echo(f"wrote {files.csv} and {files.summary}")
