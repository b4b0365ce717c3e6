"""Building and running an inference server from command-line settings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference.app import is_loopback
from inference.bases import BasisError, BasisRegistry, check_fits
from inference.protocols import GeneratorOptions, ImageEditor, ImageGenerator, TargetModel
from inference.registry import load_editor, load_generator, load_target
from inference.service import InferenceService, open_service
from inference.settings import DEFAULT_HOST, DEFAULT_PORT, BatchingConfig, ServiceLimits
from inference.store import default_store_dir

log = logging.getLogger("line.server")


class ServeConfigError(ValueError):
    """Server settings that cannot work together."""


@dataclass
class ServeConfig:
    """Everything ``line serve`` takes."""

    generators: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    editors: list[str] = field(default_factory=list)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    device: str = "auto"
    store: Path = field(default_factory=default_store_dir)
    token: str | None = None
    generator_options: GeneratorOptions = field(default_factory=GeneratorOptions)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    trust_checkpoints: bool = False
    bases: list[str] = field(default_factory=list)  # NAME=SPEC declarations (inference.bases)

    def check(self) -> None:
        """Refuse settings that would expose the server or serve nothing."""
        if not self.generators and not self.targets and not self.editors:
            raise ServeConfigError(
                "nothing to serve: pass --generator SPEC and/or --target SPEC, e.g. "
                "--generator tiny-sd --target torchvision:resnet18:random"
            )
        if not is_loopback(self.host) and not self.token:
            raise ServeConfigError(
                f"refusing to bind {self.host}: only loopback addresses are served without a "
                "token. Set --token (or LINE_SERVER_TOKEN) to require "
                "'Authorization: Bearer <token>' on every request"
            )


def load_backends(config: ServeConfig) -> tuple[list[ImageGenerator], list[TargetModel]]:
    """Load every generator and target a config names, on ``config.device``."""
    generators = []
    for spec in config.generators:
        log.info("loading generator %s", spec)
        generators.append(load_generator(spec, config.device, config.generator_options))
    targets = []
    for spec in config.targets:
        log.info("loading target %s", spec)
        targets.append(load_target(spec, config.device, config.trust_checkpoints))
    return generators, targets


def load_editors(config: ServeConfig) -> list[ImageEditor]:
    """Load every editor a config names, on ``config.device``."""
    editors = []
    for spec in config.editors:
        log.info("loading editor %s", spec)
        editors.append(load_editor(spec, config.device, config.generator_options))
    return editors


def load_bases(config: ServeConfig, targets: Sequence[TargetModel]) -> BasisRegistry:
    """The declared bases, each checked to fit a layer of the targets; a server on loopback
    also loads bases by path on request."""
    try:
        registry = BasisRegistry.declared(config.bases, allow_paths=is_loopback(config.host))
        check_fits(registry, {t.name: {i.name: i.units for i in t.layers()} for t in targets})
    except BasisError as error:
        raise ServeConfigError(str(error)) from error
    return registry


def build_service(config: ServeConfig) -> InferenceService:
    """Load every backend once and assemble the service."""
    config.check()
    generators, targets = load_backends(config)
    return open_service(
        generators,
        targets,
        config.store,
        batching=config.batching,
        limits=config.limits,
        editors=load_editors(config),
        bases=load_bases(config, targets),
    )
