"""The inference servers of one command: the ones it was given, or a local one for its duration.

``line run`` and ``line eval cosy|vocab|variants`` either talk to servers the user names
(``--server``; each is checked first: it answers, serves the target and the generator, and the
layer has the units) or start one in this process and stop it when the command ends. A local
server loads the target first, so a wrong layer or unit fails before the (slow) generator loads.
A command that reads a unit basis (``layer@basis``, :mod:`inference.bases`) names its file: a
local server loads it, a given server that lacks it is asked to load it by path (servers on
loopback do; others must declare it with ``line serve --basis NAME=SPEC``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.bases import (
    BasisError,
    BasisRegistry,
    UnitBasis,
    load_basis,
    split_unit_space,
    width_mismatch,
)
from inference.positions import PositionsError, rule_problem, split_positions
from inference.registry import (
    BackendSpecError,
    GeneratorOptions,
    load_editor,
    load_generator,
    load_target,
)
from inference.store import default_store_dir
from tools.client import InferenceClient, LineClient, LineServerError, LineServerUnavailable
from tools.pool import connect

if TYPE_CHECKING:  # the server's modules (FastAPI, uvicorn) load only for a local server
    from inference.app import RunningServer


class RunSetupError(ValueError):
    """A run or evaluation that cannot start as asked; the message says what to change."""


Generators = str | Sequence[str] | None
"""One generator spec, or several (the first is a local server's default), or none."""


def generator_specs(generator: Generators) -> list[str]:
    """The generator specs of a :data:`Generators` value, in order, without repeats."""
    if generator is None:
        return []
    return [generator] if isinstance(generator, str) else list(dict.fromkeys(generator))


def check_layer_units(
    layers: dict[str, int],
    target: str,
    layer: str,
    units: Sequence[int],
    positions: dict[str, str | None] | None = None,
) -> None:
    """The layer exists, its positions rule (``LAYER#RULE``) fits it when ``positions`` (layer
    -> map, tokens or None) is known, and every unit is in range."""
    try:
        name, rule = split_positions(layer)
    except PositionsError as error:
        raise RunSetupError(str(error)) from error
    if name not in layers:
        raise RunSetupError(
            f"target {target!r} has no layer {name!r}; valid layers: " + ", ".join(layers)
        )
    layer_read = split_unit_space(name)[0]
    if positions is not None and layer_read in positions:
        problem = rule_problem(rule, positions[layer_read], layer_read, target)
        if problem is not None:
            raise RunSetupError(problem)
    count = layers[name]
    bad = [unit for unit in units if unit >= count]
    if bad:
        raise RunSetupError(
            f"unit {bad[0]} is out of range: layer {layer!r} of {target!r} has {count} units, "
            f"indices 0 to {count - 1}"
        )


async def check_server(
    url: str,
    target: str,
    layer: str,
    units: Sequence[int],
    generator: Generators,
    editors: Sequence[str] = (),
    basis: UnitBasis | None = None,
) -> None:
    """The server answers, serves the target, generator and editors, and the units exist;
    a basis the server lacks is offered to it by path."""
    async with LineClient(url, retries=1, backoff_s=0.2) as client:
        try:
            models = await client.models()
            if basis is not None and not _serves_layer(models, target, layer):
                await _offer_basis(client, url, layer, basis)
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
    for wanted in generator_specs(generator):
        if wanted not in generators:
            raise RunSetupError(
                f"the server at {url} has no generator {wanted!r}; it has: "
                + (", ".join(generators) or "none")
            )
    if not generators:
        raise RunSetupError(f"the server at {url} has no generator; start it with --generator")
    served_editors = [entry["name"] for entry in models.get("editors", [])]
    for editor in editors:
        if editor not in served_editors:
            raise RunSetupError(
                f"the server at {url} has no editor {editor!r}; it has: "
                + (", ".join(served_editors) or "none (start it with --editor SPEC)")
            )
    layers = {entry["name"]: entry["units"] for entry in targets[target]["layers"]}
    kinds = {
        entry["name"]: entry["positions"]
        for entry in targets[target]["layers"]
        if "positions" in entry
    }
    if basis is not None:
        check_basis_width(layers, target, layer, basis)
    check_layer_units(layers, target, layer, units, kinds)


async def _offer_basis(client: LineClient, url: str, layer: str, basis: UnitBasis) -> None:
    """Ask the server to load ``basis`` by path; a refusal says what to do instead."""
    try:
        await client.add_basis(basis.source)
    except LineServerError as error:
        raise RunSetupError(
            f"the server at {url} cannot read layer {layer!r} ({basis.source}): {error.message}"
        ) from error


def _serves_layer(models: dict[str, Any], target: str, layer: str) -> bool:
    """Whether ``/v1/models`` lists ``layer`` (a unit space too) for ``target``."""
    try:
        layer = split_positions(layer)[0]
    except PositionsError:
        return False
    for entry in models.get("targets", []):
        if entry["name"] == target:
            return any(item["name"] == layer for item in entry["layers"])
    return False


def check_basis_width(layers: dict[str, int], target: str, layer: str, basis: UnitBasis) -> None:
    """The layer a unit space reads is as wide as its basis's vectors."""
    layer_read, _ = split_unit_space(layer)
    if layer_read in layers and layers[layer_read] != basis.d_in:
        raise RunSetupError(width_mismatch(basis, target, layer_read, layers[layer_read]))


def start_local_server(
    target: str,
    layer: str,
    units: Sequence[int],
    generator: Generators,
    device: str,
    store: Path,
    editors: Sequence[str] = (),
    basis: UnitBasis | None = None,
) -> RunningServer:
    """Load the target (and check layer and units), then the generator and editors, then serve
    them (and ``basis``)."""
    from inference.app import create_app, start_server_thread
    from inference.service import open_service

    try:
        model = load_target(target, device)
    except BackendSpecError as error:
        raise RunSetupError(str(error)) from error
    widths = {info.name: info.units for info in model.layers()}
    bases = BasisRegistry(allow_paths=True)  # it serves this process only
    if basis is not None:
        check_basis_width(widths, target, layer, basis)
        bases.add(basis)
    layers = {**widths, **{space["name"]: space["units"] for space in bases.unit_spaces(widths)}}
    kinds = {info.name: info.positions for info in model.layers()}
    check_layer_units(layers, target, layer, units, kinds)
    try:
        backends = [
            load_generator(spec, device, GeneratorOptions()) for spec in generator_specs(generator)
        ]
        loaded_editors = [load_editor(spec, device) for spec in editors]
    except BackendSpecError as error:
        raise RunSetupError(str(error)) from error
    service = open_service(backends, [model], store, editors=loaded_editors, bases=bases)
    return start_server_thread(create_app(service))


@dataclass(frozen=True)
class ServerSession:
    """The servers a command talks to; ``local_store`` is the store folder of a server started
    for the command (``None`` for servers given with ``--server``)."""

    urls: list[str]
    local_store: Path | None = None

    def connect(self, **options: Any) -> InferenceClient:
        """A client of the session's servers (one URL: a ``LineClient``; several: a pool)."""
        return connect(self.urls, **options)


@contextmanager
def server_session(
    servers: str | Sequence[str] | None,
    target: str,
    layer: str,
    units: Sequence[int],
    generator: Generators,
    *,
    device: str = "auto",
    store: Path | None = None,
    editors: Sequence[str] = (),
    basis: str | None = None,
) -> Iterator[ServerSession]:
    """The given servers, checked; without any, a local server (``generator`` and ``editors``
    on ``device``, images in ``store``, default ``$LINE_CACHE/store``) started now and stopped
    on exit. ``basis``: the spec of the unit basis ``layer`` reads (``layer@key``)."""
    urls = [servers] if isinstance(servers, str) else list(dict.fromkeys(servers or []))
    try:
        unit_basis = load_basis(basis) if basis is not None else None
    except BasisError as error:
        raise RunSetupError(str(error)) from error
    if urls:
        for url in urls:
            asyncio.run(check_server(url, target, layer, units, generator, editors, unit_basis))
        yield ServerSession(urls)
        return
    if not generator_specs(generator):
        raise RunSetupError("without --server, pass --generator SPEC to start a local server")
    folder = (store or default_store_dir()).expanduser().resolve()
    running = start_local_server(
        target, layer, units, generator, device, folder, editors, unit_basis
    )
    try:
        yield ServerSession([running.url], folder)
    finally:
        running.stop()
