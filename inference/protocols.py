"""The two small protocols every backend of the inference server implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported by the backends, not by every user of these protocols
    import torch

    from inference.positions import LayerReading


class BackendSpecError(ValueError):
    """A backend spec that cannot be loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class GeneratorOptions:
    """User options for a generator; ``None`` keeps the backend's own default."""

    dtype: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class RenderSettings:
    """Everything besides prompt and seed that determines a rendered image's pixels.

    Requests are only batched together when their settings are equal.
    """

    width: int
    height: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class RenderJob:
    """One image to render: a prompt, its seed, and the shared settings."""

    prompt: str
    seed: int
    settings: RenderSettings


@dataclass
class RenderedImage:
    """A rendered image plus what the backend understood of the prompt (if it can say)."""

    image: Image.Image
    understood: list[str] | None = None
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class ImageGenerator(Protocol):
    """A text-to-image backend. ``render`` gets jobs that all share one ``RenderSettings``."""

    name: str
    """The spec the user gave (``tiny-sd``, ``stabilityai/sd-turbo``, ``procedural:shapes``)."""

    identity: str
    """What about the backend changes pixels (name, version, dtype), hashed into image ids."""

    device: str

    def default_settings(self) -> RenderSettings:
        """The settings used for fields a request leaves out."""
        ...

    def render(self, jobs: Sequence[RenderJob]) -> list[RenderedImage]:
        """Render one image per job, in order; every image depends only on its own job."""
        ...


@runtime_checkable
class PixelGenerator(Protocol):
    """A generator that renders straight to pixel tensors on its device (diffusers pipelines):
    the probe path hands them to the target without a PIL image or a PNG in between."""

    def render_pixels(self, jobs: Sequence[RenderJob]) -> torch.Tensor:
        """A uint8 ``[n, 3, height, width]`` tensor, one image per job, equal to ``render``'s."""
        ...


@runtime_checkable
class PixelTarget(Protocol):
    """A target that reads pixel tensors on its device (torch models preprocessed as tensors)."""

    def activations_from_pixels(self, pixels: torch.Tensor, layer: str) -> np.ndarray:
        """Float32 ``[batch, units]`` for a uint8 ``[batch, 3, H, W]`` tensor, equal to
        ``activations`` on the same pixels as PIL images."""
        ...


@runtime_checkable
class PositionTarget(Protocol):
    """A target that reads its layers with positions per position, on its device: the units
    (or a basis's) at every position, aggregated per image by a rule (inference.positions)."""

    def read(self, images: Sequence[Image.Image], reading: LayerReading) -> np.ndarray:
        """Float32 ``[batch, units]`` of the reading on RGB images."""
        ...

    def read_pixels(self, pixels: torch.Tensor, reading: LayerReading) -> np.ndarray:
        """Float32 ``[batch, units]`` of the reading on a uint8 ``[batch, 3, H, W]`` tensor,
        equal to ``read`` on the same pixels as PIL images."""
        ...


@dataclass(frozen=True)
class EditSettings:
    """Everything besides the source image, instruction and seed that determines an edit's
    pixels. Edits are only batched together when their settings (and image sizes) are equal."""

    steps: int
    guidance: float


@dataclass(frozen=True)
class EditJob:
    """One image to edit: the stored source image with its provenance (the store's metadata),
    the instruction ("remove the red circle"), the seed and the shared settings."""

    source_id: str
    image: Image.Image
    source: dict[str, object]
    instruction: str
    seed: int
    settings: EditSettings


@runtime_checkable
class ImageEditor(Protocol):
    """An image-editing backend: an instruction applied to a stored image gives a new image of
    the same size. ``edit`` gets jobs that share one ``EditSettings`` and one image size."""

    name: str
    """The spec the user gave (``tiny-pix2pix``, ``timbrooks/instruct-pix2pix``,
    ``procedural:shapes``)."""

    identity: str
    """What about the editor changes pixels (name, version, dtype), hashed into edit ids."""

    device: str

    def default_settings(self) -> EditSettings:
        """The settings used for fields a request leaves out."""
        ...

    def refusal(self, source: dict[str, object], instruction: str) -> str | None:
        """Why this editor cannot apply ``instruction`` to an image of this provenance (``None``
        when it can); checked before any job is queued."""
        ...

    def edit(self, jobs: Sequence[EditJob]) -> list[RenderedImage]:
        """Edit one image per job, in order; every result depends only on its own job."""
        ...


@dataclass(frozen=True)
class LayerInfo:
    """A readable layer of a target model, how many units it has and its positions: ``map`` (a
    CNN's feature map), ``tokens`` (a ViT's) or ``None`` (one vector per image); see
    :mod:`inference.positions`."""

    name: str
    units: int
    positions: str | None = None


class UnknownLayerError(KeyError, ValueError):
    """A layer name a target does not have; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class TargetModel(Protocol):
    """A vision model whose units LINE explains. Sees pixels only."""

    name: str
    """The spec the user gave (``torchvision:resnet18:random``, ``planted:shapes``)."""

    identity: str
    """What fixes the weights (name, file hash, version); keys the activation cache."""

    device: str

    def layers(self) -> list[LayerInfo]:
        """Every readable layer with its unit count."""
        ...

    def activations(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        """The layer's activations on RGB images as a float32 ``[batch, units]`` array."""
        ...
