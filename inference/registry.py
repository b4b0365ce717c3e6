"""Turns backend specs from the command line into backends.

A spec is ``<family>[:<arguments>]``. Families are Python entry points, one registration
mechanism for the backends this package ships, for separately installed worlds and for a
user's own package: a distribution declares them in its ``pyproject.toml``::

    [project.entry-points."line.targets"]
    mymodel = "mypackage.targets:create_target"

and ``--target mymodel:anything`` then calls ``create_target("anything", device=...,
trust_checkpoints=...)``. The groups are :data:`GENERATOR_GROUP`, :data:`EDITOR_GROUP` and
:data:`TARGET_GROUP`; a factory takes the arguments after the first ``:`` and returns an
:class:`~inference.protocols.ImageGenerator`, :class:`~inference.protocols.ImageEditor` or
:class:`~inference.protocols.TargetModel`. A generator or editor spec with no registered family
is a diffusers pipeline by hub id or local folder (the ``diffusers`` family); a target module
in a file is ``python:<file.py>:<factory>``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from inference.protocols import (
    BackendSpecError,
    GeneratorOptions,
    ImageEditor,
    ImageGenerator,
    TargetModel,
)

GENERATOR_GROUP = "line.generators"
EDITOR_GROUP = "line.editors"
TARGET_GROUP = "line.targets"
DIFFUSERS_FAMILY = "diffusers"
"""The generator and editor family of specs that name no registered family (hub id, folder)."""
REINSTALL_HINT = "a family added to pyproject.toml appears after `pip install -e .`"


def registered_families(group: str) -> dict[str, EntryPoint]:
    """The backend families installed in an entry-point group, by name (nothing is imported)."""
    return {entry.name: entry for entry in entry_points(group=group)}


def family_list(group: str, exclude: tuple[str, ...] = ()) -> str:
    """The names of the families registered in a group, for messages ("none" without one)."""
    names = sorted(set(registered_families(group)) - set(exclude))
    return ", ".join(names) if names else "none"


def _load_factory(group: str, entry: EntryPoint) -> Callable[..., Any]:
    """The factory an entry point names, imported on first use."""
    try:
        factory: Callable[..., Any] = entry.load()
    except (ImportError, AttributeError) as error:
        raise BackendSpecError(
            f"backend family {entry.name!r} (entry point {entry.value!r} in {group}) cannot "
            f"be imported: {error}; install the package that provides it"
        ) from error
    return factory


def _is_local_path(spec: str) -> bool:
    try:
        return Path(spec).expanduser().exists()
    except OSError:
        return False


def _pipeline_factory(group: str, kind: str, spec: str) -> tuple[Callable[..., Any], str]:
    """The factory of a generator or editor spec and the arguments it receives."""
    if not spec.strip():
        raise BackendSpecError(f"empty {kind} spec; use {spec_help(group, kind)}")
    families = registered_families(group)
    family, sep, rest = spec.partition(":")
    if family in families:
        return _load_factory(group, families[family]), rest
    if sep and "/" not in family and not _is_local_path(spec):
        # A hub id never contains ':'; a spec that does names a family nobody registered.
        raise BackendSpecError(f"unknown {kind} family {family!r} in {spec!r}; {_use(group, kind)}")
    if DIFFUSERS_FAMILY not in families:
        raise BackendSpecError(f"no {kind} family {DIFFUSERS_FAMILY!r}; {_use(group, kind)}")
    return _load_factory(group, families[DIFFUSERS_FAMILY]), spec


def spec_help(group: str, kind: str) -> str:
    """How to name a backend of a group, with the families registered now."""
    pipeline = {
        GENERATOR_GROUP: " or a diffusers text-to-image pipeline by hub id (e.g. "
        "'stabilityai/sd-turbo') or local folder",
        EDITOR_GROUP: " or a diffusers image-editing pipeline by hub id (e.g. "
        "'timbrooks/instruct-pix2pix') or local folder",
    }.get(group, "")
    families = family_list(group)
    return f"'<family>[:<arguments>]' with a registered {kind} family ({families}){pipeline}"


def _use(group: str, kind: str) -> str:
    return f"use {spec_help(group, kind)} (entry-point group {group}; {REINSTALL_HINT})"


def resolve_device(device: str) -> str:
    """Map ``auto`` to the best available torch device; keep any other value."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_generator(
    spec: str, device: str = "auto", options: GeneratorOptions | None = None
) -> ImageGenerator:
    """Build the image generator a spec names."""
    factory, arguments = _pipeline_factory(GENERATOR_GROUP, "generator", spec)
    generator: ImageGenerator = factory(
        arguments, device=resolve_device(device), options=options or GeneratorOptions()
    )
    return generator


def load_editor(
    spec: str, device: str = "auto", options: GeneratorOptions | None = None
) -> ImageEditor:
    """Build the image editor a spec names (``options.dtype`` and ``steps``/``guidance``
    defaults apply to diffusers editors)."""
    factory, arguments = _pipeline_factory(EDITOR_GROUP, "editor", spec)
    editor: ImageEditor = factory(
        arguments, device=resolve_device(device), options=options or GeneratorOptions()
    )
    return editor


def load_target(spec: str, device: str = "auto", trust_checkpoints: bool = False) -> TargetModel:
    """Build the target model a spec names."""
    families = registered_families(TARGET_GROUP)
    family, _, rest = spec.partition(":")
    if family not in families:
        raise BackendSpecError(f"unknown target {spec!r}; {_use(TARGET_GROUP, 'target')}")
    factory = _load_factory(TARGET_GROUP, families[family])
    target: TargetModel = factory(
        rest, device=resolve_device(device), trust_checkpoints=trust_checkpoints
    )
    return target
