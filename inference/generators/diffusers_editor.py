"""Image editing with a diffusers pipeline (hub id or local folder).

Three kinds of pipeline edit an image, told apart by what their ``__call__`` takes:

* ``instruction``: an image and an instruction ("remove the dog"), e.g.
  ``StableDiffusionInstructPix2PixPipeline`` (``timbrooks/instruct-pix2pix``), FLUX Kontext;
* ``image-to-image``: an image, a prompt and a ``strength`` (``StableDiffusionImg2ImgPipeline``):
  the instruction is the prompt the image is redrawn towards;
* ``inpainting``: an image, a mask and a prompt (``StableDiffusionInpaintPipeline``): LINE has no
  mask of a concept, so the whole image is masked and redrawn towards the prompt at ``strength``.

Each image gets its own ``torch.Generator``, so an image edited in a batch equals it edited alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from inference.generators.diffusers_generator import quantise, torch_dtype
from inference.pixels import image_of
from inference.protocols import (
    BackendSpecError,
    EditJob,
    EditSettings,
    GeneratorOptions,
    RenderedImage,
)
from inference.registry import DIFFUSERS_FAMILY, EDITOR_GROUP, family_list

EDIT_KINDS = ("instruction", "image-to-image", "inpainting")
IMAGE_GUIDANCE = 1.5
"""Image guidance of instruction pipelines that take one (InstructPix2Pix's default)."""
STRENGTH = 0.75
"""How far image-to-image and inpainting pipelines redraw the image (diffusers' default)."""
KINDS_HELP = (
    "an instruction-editing pipeline (e.g. 'timbrooks/instruct-pix2pix'), an image-to-image "
    "pipeline or an inpainting pipeline (diffusers hub id or folder)"
)


def kinds_help() -> str:
    """What to pass instead: the pipeline kinds that edit, and the editor families installed."""
    families = family_list(EDITOR_GROUP, exclude=(DIFFUSERS_FAMILY,))
    return f"{KINDS_HELP}, or a registered editor family ({families})"


def edit_kind(pipeline: Any) -> str | None:
    """Which of :data:`EDIT_KINDS` a pipeline is, from its call signature (``None``: it does
    not edit images)."""
    parameters = inspect.signature(pipeline.__call__).parameters
    if "image" not in parameters or "prompt" not in parameters:
        return None
    if "mask_image" in parameters:
        return "inpainting"
    return "image-to-image" if "strength" in parameters else "instruction"


class DiffusersEditor:
    """Edits stored images with a diffusers image-editing pipeline, one seed per image.

    A call edits a batch of images that share size, steps and guidance; the instruction of each
    job is its prompt. The output has the source image's size.
    """

    def __init__(
        self, name: str, pipeline: Any, kind: str, device: str, dtype: str, defaults: EditSettings
    ) -> None:
        self.name = name
        self.pipeline = pipeline
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.identity = f"diffusers-edit:{name}:{dtype}:{kind}"
        self._defaults = defaults
        parameters = inspect.signature(pipeline.__call__).parameters
        self._options: dict[str, Any] = {}
        if kind == "instruction" and "image_guidance_scale" in parameters:
            self._options["image_guidance_scale"] = IMAGE_GUIDANCE
            self.identity += f":ig{IMAGE_GUIDANCE}"
        if kind != "instruction":
            self._options["strength"] = STRENGTH
            self.identity += f":s{STRENGTH}"

    def default_settings(self) -> EditSettings:
        """The settings used for fields a request leaves out."""
        return self._defaults

    def refusal(self, source: dict[str, object], instruction: str) -> str | None:
        """Any stored image can be edited."""
        return None

    def edit(self, jobs: Sequence[EditJob]) -> list[RenderedImage]:
        """Edit one image per job (all of one size and settings)."""
        if not jobs:
            return []
        settings, size = jobs[0].settings, jobs[0].image.size
        if any(job.settings != settings or job.image.size != size for job in jobs):
            raise ValueError("a diffusers edit batch must share image size, steps and guidance")
        generator_device = "cpu" if self.device == "mps" else self.device
        seeds = [torch.Generator(generator_device).manual_seed(job.seed) for job in jobs]
        options = dict(self._options)
        if self.kind == "inpainting":
            options["mask_image"] = [Image.new("L", size, 255) for _ in jobs]
            options["width"], options["height"] = size
        with torch.inference_mode():
            output = self.pipeline(
                prompt=[job.instruction for job in jobs],
                image=[job.image for job in jobs],
                generator=seeds,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                output_type="pt",
                **options,
            )
        images = [image_of(pixels) for pixels in quantise(output.images)]
        resample = Image.Resampling.LANCZOS
        return [
            RenderedImage(image=image if image.size == size else image.resize(size, resample))
            for image in images
        ]


def load_editing_pipeline(source: str | Path, device: str, dtype: str) -> tuple[Any, str]:
    """Load a diffusers pipeline by hub id or folder, check that it edits images, move it to
    ``device``; returns it with its kind."""
    from diffusers import DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(str(source), dtype=torch_dtype(dtype))
    except BackendSpecError:
        raise
    except Exception as error:  # hub, file and config errors all land here
        raise BackendSpecError(
            f"could not load the diffusers pipeline {str(source)!r}: {error}. Pass {kinds_help()}"
        ) from error
    kind = edit_kind(pipeline)
    if kind is None:
        raise BackendSpecError(
            f"{str(source)!r} is a {type(pipeline).__name__}, which does not edit images (its "
            f"call takes no input image); pass {kinds_help()}"
        )
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, kind


def create_diffusers_editor(spec: str, device: str, options: GeneratorOptions) -> DiffusersEditor:
    """Build an editor for a hub id or a local pipeline folder."""
    dtype = options.dtype or ("float16" if device.startswith("cuda") else "float32")
    pipeline, kind = load_editing_pipeline(spec, device, dtype)
    defaults = EditSettings(
        steps=options.steps or 20,
        guidance=7.5 if options.guidance is None else options.guidance,
    )
    return DiffusersEditor(spec, pipeline, kind, device, dtype, defaults)
