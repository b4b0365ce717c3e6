"""Turns backend specs from the command line into backends.

Generators: ``tiny-sd``, ``procedural:shapes``, or any diffusers text-to-image pipeline by hub id
or local folder. Editors: ``procedural:shapes``, ``tiny-pix2pix``, or any diffusers image-editing
pipeline. Targets: ``torchvision:<arch>[:<weights>]``, ``places365:<checkpoint>``,
``python:<file.py>:<factory>``, ``planted:shapes``, ``learned:shapes``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from inference.protocols import (
    BackendSpecError,
    GeneratorOptions,
    ImageEditor,
    ImageGenerator,
    TargetModel,
)

# Backend families by spec prefix, as "module:function" so heavy imports happen only on use.
GENERATOR_FAMILIES: dict[str, str] = {
    "tiny-sd": "inference.generators.tiny_sd:create_tiny_sd_generator",
    "procedural": "inference.toyworld.procedural:create_procedural_generator",
}
DIFFUSERS_FACTORY = "inference.generators.diffusers_generator:create_diffusers_generator"
EDITOR_FAMILIES: dict[str, str] = {
    "tiny-pix2pix": "inference.generators.tiny_sd:create_tiny_pix2pix_editor",
    "procedural": "inference.toyworld.editing:create_procedural_editor",
}
DIFFUSERS_EDITOR_FACTORY = "inference.generators.diffusers_editor:create_diffusers_editor"
TARGET_FAMILIES: dict[str, str] = {
    "torchvision": "inference.targets.torch_target:create_torchvision_target",
    "places365": "inference.targets.torch_target:create_places365_target",
    "python": "inference.targets.torch_target:create_python_target",
    "planted": "inference.toyworld.planted:create_planted_target",
    "learned": "inference.toyworld.learned:create_learned_target",
}
GENERATOR_SPEC_HELP = (
    "'tiny-sd' (offline random weights, images are noise), 'procedural:shapes' (offline toy "
    "world), or a diffusers text-to-image pipeline by hub id (e.g. 'stabilityai/sd-turbo') or "
    "local folder"
)
EDITOR_SPEC_HELP = (
    "'procedural:shapes' (offline toy world: the same scene re-rendered with the named "
    "attributes removed or replaced), 'tiny-pix2pix' (offline random weights, edits are noise), "
    "or a diffusers image-editing pipeline by hub id or local folder: instruction editing (e.g. "
    "'timbrooks/instruct-pix2pix'), image-to-image or inpainting"
)
TARGET_SPEC_HELP = (
    "'torchvision:<arch>[:<weights>|random]' (e.g. 'torchvision:resnet50', "
    "'torchvision:resnet18:random'), 'places365:<checkpoint.pth.tar>', "
    "'python:<file.py>:<factory>', 'planted:shapes' or 'learned:shapes'"
)


def _import_factory(path: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` path names, imported on first use."""
    module_name, function_name = path.split(":")
    return getattr(importlib.import_module(module_name), function_name)


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
    options = options or GeneratorOptions()
    device = resolve_device(device)
    if not spec.strip():
        raise BackendSpecError(f"empty generator spec; use {GENERATOR_SPEC_HELP}")
    family, _, rest = spec.partition(":")
    if family in GENERATOR_FAMILIES:
        return _import_factory(GENERATOR_FAMILIES[family])(rest, device=device, options=options)
    return _import_factory(DIFFUSERS_FACTORY)(spec, device=device, options=options)


def load_editor(
    spec: str, device: str = "auto", options: GeneratorOptions | None = None
) -> ImageEditor:
    """Build the image editor a spec names (``options.dtype`` and ``steps``/``guidance``
    defaults apply to diffusers editors)."""
    options = options or GeneratorOptions()
    device = resolve_device(device)
    if not spec.strip():
        raise BackendSpecError(f"empty editor spec; use {EDITOR_SPEC_HELP}")
    family, _, rest = spec.partition(":")
    if family in EDITOR_FAMILIES:
        return _import_factory(EDITOR_FAMILIES[family])(rest, device=device, options=options)
    return _import_factory(DIFFUSERS_EDITOR_FACTORY)(spec, device=device, options=options)


def load_target(spec: str, device: str = "auto", trust_checkpoints: bool = False) -> TargetModel:
    """Build the target model a spec names."""
    device = resolve_device(device)
    family, sep, rest = spec.partition(":")
    if not sep or family not in TARGET_FAMILIES:
        raise BackendSpecError(f"unknown target {spec!r}; use {TARGET_SPEC_HELP}")
    factory = _import_factory(TARGET_FAMILIES[family])
    return factory(rest, device=device, trust_checkpoints=trust_checkpoints)
