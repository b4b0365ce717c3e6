"""Getting a run ready: validate everything cheap first, then start (or reach) the server."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.providers import LLMConfigError, build_llm_client, check_llm_ready
from agent.run_folder import RunFolder, RunSettings
from agent.runner import run_neurons
from analysis.groundtruth import attribute_match
from analysis.polysemanticity import GROUP_COLUMNS, with_group_columns
from analysis.similarity import EmbedderUnavailable
from inference.app import RunningServer, create_app, start_server_thread
from inference.registry import BackendSpecError, GeneratorOptions, load_generator, load_target
from inference.service import InferenceService, open_service
from inference.store import default_cache_dir
from inference.toyworld.truth import planted_ground_truth
from prompts.variant import VariantError, load_variant
from tools.client import LineClient, LineServerError, LineServerUnavailable
from tools.controlset import ControlSet, ControlSetError
from tools.pool import connect

SERVER_PATIENCE_S = 300.0  # a run waits this long for a server that went down to come back


class RunSetupError(ValueError):
    """A run that cannot start; the message says what to change."""


def parse_units(text: str) -> list[int]:
    """``0-99``, ``3,7,9`` or a mix (``0-3,10``) to a sorted list without repeats."""
    units: set[int] = set()
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise RunSetupError(f"cannot read units {text!r}: use e.g. '0-99' or '3,7,9'")
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        if last < first:
            raise RunSetupError(f"unit range {part!r} runs backwards; write it as '{last}-{first}'")
        units.update(range(first, last + 1))
    if not units:
        raise RunSetupError("no units given; use e.g. --units 0-99 or --units 3,7,9")
    return sorted(units)


def check_layer_units(layers: dict[str, int], target: str, layer: str, units: list[int]) -> None:
    """The layer exists and every unit is in range."""
    if layer not in layers:
        raise RunSetupError(
            f"target {target!r} has no layer {layer!r}; valid layers: " + ", ".join(layers)
        )
    count = layers[layer]
    bad = [unit for unit in units if unit >= count]
    if bad:
        raise RunSetupError(
            f"unit {bad[0]} is out of range: layer {layer!r} of {target!r} has {count} units, "
            f"indices 0 to {count - 1}"
        )


@dataclass
class LocalServer:
    """A server started for one run, stopped at its end."""

    running: RunningServer
    service: InferenceService

    @property
    def url(self) -> str:
        return self.running.url

    def stop(self) -> None:
        self.running.stop()


def start_local_server(
    target: str,
    layer: str,
    units: list[int],
    generator: str,
    device: str = "auto",
    store: Path | None = None,
    extra_targets: list[str] = (),
) -> LocalServer:
    """Load the target first (to check layer and units), then the generator, then serve."""
    try:
        model = load_target(target, device)
    except BackendSpecError as error:
        raise RunSetupError(str(error)) from error
    check_layer_units({info.name: info.units for info in model.layers()}, target, layer, units)
    try:
        backend = load_generator(generator, device, GeneratorOptions())
        others = [load_target(spec, device) for spec in extra_targets]
    except BackendSpecError as error:
        raise RunSetupError(str(error)) from error
    service = open_service([backend], [model, *others], store or default_cache_dir() / "store")
    return LocalServer(start_server_thread(create_app(service)), service)


async def check_remote_server(
    url: str, target: str, layer: str, units: list[int], generator: str | None
) -> None:
    """The server answers, serves the target and generator, and the units exist."""
    async with LineClient(url, retries=1, backoff_s=0.2) as client:
        try:
            models = await client.models()
        except (LineServerUnavailable, LineServerError) as error:
            raise RunSetupError(str(error)) from error
    targets = {entry["name"]: entry for entry in models["targets"]}
    if target not in targets:
        raise RunSetupError(
            f"the server at {url} does not serve target {target!r}; it serves: "
            + (", ".join(targets) or "no targets")
        )
    generators = [entry["name"] for entry in models["generators"]]
    if generator is not None and generator not in generators:
        raise RunSetupError(
            f"the server at {url} has no generator {generator!r}; it has: "
            + (", ".join(generators) or "none")
        )
    if not generators:
        raise RunSetupError(f"the server at {url} has no generator; start it with --generator")
    layers = {entry["name"]: entry["units"] for entry in targets[target]["layers"]}
    check_layer_units(layers, target, layer, units)


def settings_from_options(
    *,
    target: str | None,
    layer: str | None,
    units: str | None,
    generator: str | None,
    llm: str | None,
    llm_base_url: str | None,
    prompts: str,
    out: Path | None,
    server: str | list[str] | None,
    concurrency: int,
    seed: int,
    temperature: float | None,
    iterations: int | None,
    resume: Path | None,
    control: str | None = None,
    score: str | None = None,
    llm_cache: Path | None = None,
):
    """Resolve and check the options of ``line run`` (nothing heavy is loaded here)."""

    if isinstance(server, list | tuple):
        server = list(dict.fromkeys(server)) or None
        if server and len(server) == 1:
            server = server[0]
    if resume is not None:
        folder = RunFolder(resume)
        try:
            settings = folder.read_settings()
        except FileNotFoundError as error:
            raise RunSetupError(str(error)) from error
        if server:
            settings.server = server
    else:
        missing = [
            name
            for name, value in (("--target", target), ("--layer", layer), ("--units", units),
                                ("--llm", llm), ("--out", out))
            if value is None
        ]  # fmt: skip
        if missing:
            raise RunSetupError(f"missing {', '.join(missing)} (or pass --resume RUN_DIR)")
        if server is None and generator is None:
            raise RunSetupError(
                "a run without --server starts a local server and needs --generator SPEC "
                "(e.g. 'stabilityai/sd-turbo', or 'tiny-sd' for a smoke test)"
            )
        folder = RunFolder(out)
        if folder.config.exists():
            raise RunSetupError(
                f"{out} already holds a run; continue it with --resume {out} or choose "
                "another --out"
            )
        overrides = {"temperature": temperature, "iterations": iterations, "score": score}
        settings = RunSettings(
            target=target,
            layer=layer,
            units=parse_units(units),
            generator=generator,
            llm=llm,
            llm_base_url=llm_base_url,
            prompts=prompts,
            variant_overrides={k: v for k, v in overrides.items() if v is not None},
            seed=seed,
            concurrency=concurrency,
            server=server,
            control=control,
            llm_cache=str(llm_cache) if llm_cache else None,
        )
    if settings.concurrency < 1:
        raise RunSetupError("--concurrency must be at least 1")
    try:
        variant = load_variant(settings.prompts, **settings.variant_overrides)
        check_llm_ready(settings.llm, settings.llm_base_url)
    except (VariantError, LLMConfigError) as error:
        raise RunSetupError(str(error)) from error
    if variant.settings.score != "mean" and not settings.control:
        raise RunSetupError(
            f"score {variant.settings.score!r} compares with a control set; pass --control "
            "PATH|toy or use --score mean"
        )
    if settings.control:
        try:
            ControlSet.resolve(settings.control)
        except ControlSetError as error:
            raise RunSetupError(str(error)) from error
    settings.variant_fingerprint = variant.fingerprint()
    return settings, folder


def make_llm_client(settings, folder):
    """The run's LLM client: the provider's chat model behind limits, retries and a cache."""

    variant = load_variant(settings.prompts, **settings.variant_overrides)
    return build_llm_client(
        settings.llm,
        base_url=settings.llm_base_url,
        temperature=variant.settings.temperature,
        cache_dir=settings.llm_cache,
    )


def add_group_columns(rows: list[dict], folder, extra_columns: list[str] = ()) -> list[dict]:
    """Polysemanticity: the high-scoring concept groups of each neuron, as results columns.

    Skipped (with a warning) when the offline sentence-embedding model is not installed.
    """
    import logging

    try:
        rows = with_group_columns(rows, folder)
    except EmbedderUnavailable as error:
        logging.getLogger("line.run").warning("no concept groups: %s", error)
        return rows
    folder.write_results(rows, extra_columns=[*extra_columns, *GROUP_COLUMNS])
    return rows


def execute_run(
    settings,
    folder,
    device: str = "auto",
    store: Path | None = None,
    on_progress=None,
    groups: bool = False,
):
    """Start or reach the server, then explain every unit; returns the results rows.

    ``groups`` adds the polysemanticity columns to ``results.csv`` (loads the embedding model).
    """
    import asyncio

    local = None
    if settings.server_urls:
        for url in settings.server_urls:
            asyncio.run(
                check_remote_server(
                    url, settings.target, settings.layer, settings.units, settings.generator
                )
            )
        urls = settings.server_urls
    else:
        local = start_local_server(
            settings.target, settings.layer, settings.units, settings.generator, device, store
        )
        urls = [local.url]
    folder.create(settings)
    variant = load_variant(settings.prompts, **settings.variant_overrides)

    async def go():

        llm = make_llm_client(settings, folder)
        control = ControlSet.resolve(settings.control) if settings.control else None
        async with connect(urls, patience_s=SERVER_PATIENCE_S) as client:
            return await run_neurons(
                settings, folder, client, llm, variant, on_progress, control=control
            )

    try:
        rows = asyncio.run(go())
    finally:
        if local is not None:
            local.stop()
    return add_group_columns(rows, folder) if groups else rows


def run_demo(out: Path | None, llm: str, llm_base_url: str | None, concurrency: int, on_progress):
    """The offline toy world end to end: every planted unit, label vs ground truth."""
    from datetime import datetime

    truth = {unit.unit: unit for unit in planted_ground_truth()}
    layer = next(iter(truth.values())).layer
    out = out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    offline = llm.startswith("offline:")
    settings, folder = settings_from_options(
        target="planted:shapes", layer=layer, units=",".join(map(str, sorted(truth))),
        generator="procedural:shapes", llm=llm, llm_base_url=llm_base_url, prompts="paper",
        out=out, server=None, concurrency=concurrency, seed=0, temperature=None,
        iterations=DEMO_OFFLINE_ITERATIONS if offline else None, resume=None,
    )  # fmt: skip
    rows = execute_run(settings, folder, device="cpu", on_progress=on_progress)
    rows = add_group_columns(rows, folder)
    for row in rows:
        unit = truth[row["unit"]]
        row["truth"] = unit.concept
        match = attribute_match(row["label"], unit) if row["status"] == "done" else False
        row["match"] = "-" if match is None else match
    folder.write_results(rows, extra_columns=["truth", "match", "groups", "group_concepts"])
    return rows, folder


DEMO_OFFLINE_ITERATIONS = 28  # the offline proposer's 23 single attributes, then combinations
