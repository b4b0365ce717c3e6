"""Getting a run ready: validate everything cheap first, then start (or reach) the server."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from agent.providers import (
    LLMClient,
    LLMConfigError,
    build_llm_client,
    check_accepts_images,
    check_llm_ready,
    probe_llm_endpoint,
)
from agent.record import NeuronRecord, TruthCheck
from agent.run_folder import ConfigChange, RunFolder, RunSettings
from agent.runner import RecordHook, RunProgress, run_neurons
from analysis.groundtruth import attribute_match
from inference.bases import BasisError, UnitBasis, load_basis, out_of_range, unit_space
from inference.positions import PositionsError, with_positions
from prompts.variant import VariantError, load_variant
from tools.controlset import ControlSet, ControlSetError
from tools.server_session import RunSetupError, server_session
from toyworld import TOY_WORLD_FAMILIES
from toyworld.truth import PlantedUnit, planted_ground_truth

TOY_EDITOR = "procedural:shapes"
"""The editor a toy-world run whose variant edits images gets when it names none."""


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


def settings_from_options(
    *,
    target: str | None = None,
    layer: str | None = None,
    units: str | None = None,
    generator: str | None = None,
    llm: str | None = None,
    llm_base_url: str | None = None,
    prompts: str | None = None,
    out: Path | None = None,
    server: str | list[str] | None = None,
    concurrency: int | None = None,
    seed: int = 0,
    temperature: float | None = None,
    iterations: int | None = None,
    resume: Path | None = None,
    control: str | None = None,
    score: str | None = None,
    llm_cache: Path | None = None,
    basis: str | None = None,
    positions: str | None = None,
    llm_context: int | None = None,
    allow_variant_change: bool = False,
    llm_max_tokens: int | None = None,
    outage_patience: float | None = None,
    editor: str | None = None,
    llm_images: int | None = None,
    groups: bool | None = None,
) -> tuple[RunSettings, RunFolder]:
    """Resolve and check the options of ``line run`` (nothing heavy is loaded here), including
    the pre-flight of the LLM endpoint (:func:`preflight_llm`).

    With ``basis`` (``sae:PATH``, ``directions:PATH``) the units are the basis's: the layer
    becomes the unit space ``layer@<basis key>`` and the config records the basis and its hash.
    ``outage_patience`` (seconds, default 300) is how long the run waits for an inference
    server or LLM endpoint that stopped answering before it stops (resumable).
    With ``resume``, a new LLM, base URL, context window, concurrency, server list or outage
    patience replaces the recorded one and goes into the config's ``history``; a prompt
    variant that changed since the run started is refused unless ``allow_variant_change``.
    ``llm_images`` (``--llm-images``) overrides the variant's images per proposal, refused for
    a model known to take text only; ``editor`` gives the agentic strategy its
    ``edit_images`` tool (a variant with ``edit_tool`` needs one: the toy world's by default).
    """
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
        if prompts is not None and prompts != settings.prompts and not allow_variant_change:
            raise RunSetupError(
                f"{resume} was run with the prompt variant {settings.prompts!r}, not {prompts!r}; "
                "a resumed run keeps its variant (pass --allow-variant-change to switch, and the "
                "change is recorded), or start a new run"
            )
        changes = {
            "llm": llm, "llm_base_url": llm_base_url, "llm_context": llm_context,
            "llm_max_tokens": llm_max_tokens,
            "concurrency": concurrency, "server": server or None,
            "outage_patience_s": outage_patience,
            "prompts": prompts if allow_variant_change else None,
            "groups": groups,
        }  # fmt: skip
        for name, value in changes.items():
            if value is not None and value != getattr(settings, name):
                settings.history.append(
                    ConfigChange(setting=name, old=getattr(settings, name), new=value)
                )
                setattr(settings, name, value)
    else:
        if target is None or layer is None or units is None or llm is None or out is None:
            missing = [
                name
                for name, value in (("--target", target), ("--layer", layer), ("--units", units),
                                    ("--llm", llm), ("--out", out))
                if value is None
            ]  # fmt: skip
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
        overrides = {
            "temperature": temperature, "iterations": iterations, "score": score,
            "llm_images": llm_images,
        }  # fmt: skip
        settings = RunSettings(
            target=target,
            layer=layer,
            units=parse_units(units),
            generator=generator,
            editor=editor,
            llm=llm,
            llm_base_url=llm_base_url,
            llm_context=llm_context,
            llm_max_tokens=llm_max_tokens,
            prompts=prompts or "paper",
            variant_overrides={k: v for k, v in overrides.items() if v is not None},
            seed=seed,
            concurrency=64 if concurrency is None else concurrency,
            server=server,
            control=control,
            llm_cache=str(llm_cache) if llm_cache else None,
        )
        if outage_patience is not None:
            settings.outage_patience_s = outage_patience
        if groups is not None:
            settings.groups = groups
        if basis is not None:
            unit_basis = read_basis(basis)
            bad = [unit for unit in settings.units if unit >= unit_basis.size]
            if bad:
                raise RunSetupError(out_of_range(unit_basis, bad[0]))
            settings.layer = unit_space(settings.layer, unit_basis.key)
            settings.basis, settings.basis_hash = unit_basis.source, unit_basis.hash
        if positions is not None:  # how a layer with positions is read: LAYER[@BASIS]#RULE
            try:
                settings.layer = with_positions(settings.layer, positions)
            except PositionsError as error:
                raise RunSetupError(str(error)) from error
    if resume is not None and settings.basis:
        unit_basis = read_basis(settings.basis)
        if unit_basis.hash != settings.basis_hash:
            raise RunSetupError(
                f"the basis of {resume} changed since the run started ({settings.basis}: hash "
                f"{settings.basis_hash} then, {unit_basis.hash} now); restore the file or start "
                "a new run"
            )
    if settings.concurrency < 1:
        raise RunSetupError("--concurrency must be at least 1")
    if settings.outage_patience_s < 0:
        raise RunSetupError("--outage-patience must be 0 seconds or more")
    if settings.llm_context is not None and settings.llm_context < 256:
        raise RunSetupError("--llm-context must be at least 256 tokens")
    if settings.llm_max_tokens is not None and settings.llm_max_tokens < 16:
        raise RunSetupError("--llm-max-tokens must be at least 16")
    try:
        variant = load_variant(settings.prompts, **settings.variant_overrides)
        check_llm_ready(settings.llm, settings.llm_base_url)
        check_accepts_images(settings.llm, variant.settings.llm_images)
    except (VariantError, LLMConfigError) as error:
        raise RunSetupError(str(error)) from error
    resolve_editor(settings, variant.settings.strategy, variant.settings.edit_tool)
    fingerprint = variant.fingerprint()
    if resume is not None and settings.variant_fingerprint not in ("", fingerprint):
        if not allow_variant_change:
            raise RunSetupError(
                f"the prompt variant {settings.prompts!r} changed since {resume} started "
                f"(fingerprint {settings.variant_fingerprint} then, {fingerprint} now): its "
                "finished neurons were explained with the old prompts. Restore the variant, "
                "start a new run, or pass --allow-variant-change to go on with the edited one "
                "(recorded in config.json and shown in the report)"
            )
        settings.history.append(
            ConfigChange(setting="variant", old=settings.variant_fingerprint, new=fingerprint)
        )
    preflight_llm(settings)
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
    settings.variant_fingerprint = fingerprint
    return settings, folder


def resolve_editor(settings: RunSettings, strategy: str, edit_tool: bool) -> None:
    """Check the run's image editor against its strategy: only the agentic strategy edits
    (``edit_images``); a variant that relies on editing (``edit_tool``) gets the toy world's
    editor in the toy world and must be given one elsewhere."""
    if settings.editor and strategy != "agentic":
        raise RunSetupError(
            f"--editor gives the agentic strategy its edit_images tool; the {strategy} strategy "
            "does not edit images (drop --editor, or use --prompts agentic; `line eval ablation` "
            "edits a finished run's top images)"
        )
    if edit_tool and not settings.editor:
        if settings.target.partition(":")[0] not in TOY_WORLD_FAMILIES:
            raise RunSetupError(
                f"the prompt variant {settings.prompts!r} uses the edit_images tool, which needs "
                "an image editor: pass --editor SPEC (an image-editing pipeline such as "
                "timbrooks/instruct-pix2pix; procedural:shapes in the toy world), and with "
                "--server one that the server serves"
            )
        settings.editor = TOY_EDITOR


def preflight_llm(settings: RunSettings) -> int | None:
    """Ask the run's LLM endpoint whether it answers (:func:`agent.providers.probe_llm_endpoint`),
    in seconds and before any run folder exists; returns the context window to fit requests to
    (``--llm-context`` when given, else what the server states, else None)."""
    try:
        endpoint = probe_llm_endpoint(settings.llm, settings.llm_base_url)
    except LLMConfigError as error:
        raise RunSetupError(str(error)) from error
    if settings.llm_context is not None:
        return settings.llm_context
    return endpoint.context_window if endpoint else None


def read_basis(spec: str) -> UnitBasis:
    """The basis a spec names, or a ``RunSetupError`` that says what is wrong with it."""
    try:
        return load_basis(spec)
    except BasisError as error:
        raise RunSetupError(str(error)) from error


def make_llm_client(settings: RunSettings, context_window: int | None = None) -> LLMClient:
    """The run's LLM client: the provider's chat model behind limits, retries and a cache,
    fitting every request to ``context_window`` (default: the run's ``--llm-context``)."""
    variant = load_variant(settings.prompts, **settings.variant_overrides)
    return build_llm_client(
        settings.llm,
        base_url=settings.llm_base_url,
        temperature=variant.settings.temperature,
        cache_dir=settings.llm_cache,
        context_window=context_window or settings.llm_context,
        max_tokens=settings.llm_max_tokens,
        outage_patience_s=settings.outage_patience_s,
    )


MALLOC_ARENAS = 2
"""glibc malloc arenas the runner allows (glibc's default is 8 per core). The runner's few
threads (the checkpoint database, numpy work off the event loop) each got an arena that kept
freed neuron state: 339 MB steady for 100 concurrent neurons with the default, 253 MB with 2
(``python -m bench.load_bench``)."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX)``, what
    ``MALLOC_ARENA_MAX`` sets); nothing on other C libraries or when the user set it."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-8), ctypes.c_int(arenas))  # -8: M_ARENA_MAX (malloc.h)
    except (OSError, AttributeError):  # not glibc
        return


def execute_run(
    settings: RunSettings,
    folder: RunFolder,
    device: str = "auto",
    store: Path | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    complete: RecordHook | None = None,
) -> list[dict]:
    """Reach the run's servers (or start a local one for the run), then explain every unit;
    returns the results rows.

    ``settings.groups`` adds each neuron's polysemanticity groups to its record (loads the
    embedding model); ``complete`` adds what the caller knows to each record before it is
    written (the demo: the planted truth). The LLM endpoint and the servers are checked
    before the run folder is made. An endpoint that stays down for the run's outage patience
    raises :class:`agent.runner.RunStopped`.
    """
    limit_malloc_arenas()
    context_window = preflight_llm(settings)
    with server_session(
        settings.server_urls,
        settings.target,
        settings.layer,
        settings.units,
        settings.generator,
        device=device,
        store=store,
        editors=[settings.editor] if settings.editor else [],
        basis=settings.basis,
    ) as session:
        folder.create(settings)
        variant = load_variant(settings.prompts, **settings.variant_overrides)
        control = ControlSet.resolve(settings.control) if settings.control else None

        async def explain() -> list[dict]:
            llm = make_llm_client(settings, context_window)
            async with session.connect(patience_s=settings.outage_patience_s) as client:
                return await run_neurons(
                    settings, folder, client, llm, variant, on_progress, control=control,
                    complete=complete,
                )  # fmt: skip

        return asyncio.run(explain())


def check_truth(truth: Mapping[int, PlantedUnit]) -> RecordHook:
    """Adds to each record the check of its label against the planted unit's concept
    (``line demo``'s ``truth``, ``match`` and ``verdict_right`` columns)."""

    def check(record: NeuronRecord) -> NeuronRecord:
        unit = truth[record.unit]
        done = record.status == "done"
        selective = bool(record.result and record.result.selective)
        checked = TruthCheck(
            concept=unit.concept,
            match=attribute_match(record.label, unit) if done else False,
            verdict_right=done and selective == (unit.kind != "none"),
        )
        return record.model_copy(update={"truth": checked})

    return check


DEMO_OFFLINE_ITERATIONS = 28  # the offline proposer's 23 single attributes, then combinations


def run_demo(
    out: Path | None,
    llm: str,
    llm_base_url: str | None,
    concurrency: int,
    on_progress: Callable[[RunProgress], None] | None,
) -> tuple[list[dict], RunFolder]:
    """The offline toy world end to end: every planted unit, label vs ground truth."""
    truth = {unit.unit: unit for unit in planted_ground_truth()}
    layer = next(iter(truth.values())).layer
    out = out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    offline = llm.startswith("offline:")
    settings, folder = settings_from_options(
        target="planted:shapes", layer=layer, units=",".join(map(str, sorted(truth))),
        generator="procedural:shapes", llm=llm, llm_base_url=llm_base_url, prompts="paper",
        out=out, concurrency=concurrency, seed=0,
        iterations=DEMO_OFFLINE_ITERATIONS if offline else None,
    )  # fmt: skip

    rows = execute_run(
        settings, folder, device="cpu", on_progress=on_progress, complete=check_truth(truth)
    )
    return rows, folder
