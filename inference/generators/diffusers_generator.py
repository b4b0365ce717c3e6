"""Text-to-image generation with any diffusers pipeline (hub id or local folder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from inference.protocols import (
    BackendSpecError,
    GeneratorOptions,
    RenderedImage,
    RenderJob,
    RenderSettings,
)

DTYPES = ("float32", "float16", "bfloat16")


class TextToImagePipeline(Protocol):
    """What LINE calls on a diffusers text-to-image pipeline (``StableDiffusionPipeline``, ...)."""

    def __call__(
        self,
        *,
        prompt: list[str],
        generator: list[torch.Generator],
        num_inference_steps: int,
        guidance_scale: float,
        width: int,
        height: int,
        output_type: str,
    ) -> Any:
        """Render one image per prompt; the output's ``images`` hold them."""
        ...


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name."""
    if name not in DTYPES:
        raise BackendSpecError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="pt"`` images (``[n, 3, h, w]`` in [0, 1]) as uint8 pixels, on
    their device: the values their PNGs hold."""
    return (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


class DiffusersGenerator:
    """Renders prompts with a diffusers text-to-image pipeline, one seed per image.

    A call renders a batch of prompts that share width, height, steps and guidance; each image gets
    its own ``torch.Generator``, so an image rendered in a batch equals the same job rendered alone.
    """

    def __init__(
        self,
        name: str,
        pipeline: TextToImagePipeline,
        device: str,
        dtype: str,
        defaults: RenderSettings,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.pipeline = pipeline
        self.identity = f"diffusers:{name}:{dtype}"
        self._defaults = defaults

    def default_settings(self) -> RenderSettings:
        """The settings used for fields a request leaves out."""
        return self._defaults

    def render_pixels(self, jobs: Sequence[RenderJob]) -> torch.Tensor:
        """Render jobs to a uint8 ``[n, 3, height, width]`` tensor on the generator's device:
        the pipeline's output quantised there, so the pixels equal the stored PNG's."""
        if not jobs:
            return torch.zeros((0, 3, 0, 0), dtype=torch.uint8)
        settings = jobs[0].settings
        if any(job.settings != settings for job in jobs):
            raise ValueError("a diffusers batch must share width, height, steps and guidance")
        generator_device = "cpu" if self.device == "mps" else self.device
        seeds = [torch.Generator(generator_device).manual_seed(job.seed) for job in jobs]
        with torch.inference_mode():
            output = self.pipeline(
                prompt=[job.prompt for job in jobs],
                generator=seeds,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                width=settings.width,
                height=settings.height,
                output_type="pt",
            )
            return quantise(output.images)

    def render(self, jobs: Sequence[RenderJob]) -> list[RenderedImage]:
        """Render one RGB image per job (the pixels of :meth:`render_pixels`)."""
        pixels = self.render_pixels(jobs).permute(0, 2, 3, 1).cpu().numpy()
        return [RenderedImage(image=Image.fromarray(array, mode="RGB")) for array in pixels]


def load_diffusers_pipeline(source: str | Path, device: str, dtype: str) -> TextToImagePipeline:
    """Load a text-to-image pipeline by hub id or folder and move it to ``device``."""
    from diffusers import AutoPipelineForText2Image

    try:
        pipeline = AutoPipelineForText2Image.from_pretrained(str(source), dtype=torch_dtype(dtype))
    except Exception as error:  # hub, file and config errors all land here
        raise BackendSpecError(
            f"could not load the diffusers pipeline {str(source)!r}: {error}. Pass a hub id of a "
            "text-to-image model you can download (e.g. 'stabilityai/sd-turbo'), a local folder "
            "saved with save_pretrained, or 'tiny-sd' for an offline smoke-test model"
        ) from error
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def create_diffusers_generator(
    spec: str, device: str, options: GeneratorOptions
) -> DiffusersGenerator:
    """Build a generator for a hub id or a local pipeline folder."""
    dtype = options.dtype or ("float16" if device.startswith("cuda") else "float32")
    pipeline = load_diffusers_pipeline(spec, device, dtype)
    sample = int(getattr(pipeline, "default_sample_size", 64) or 64)
    scale = int(getattr(pipeline, "vae_scale_factor", 8) or 8)
    defaults = RenderSettings(
        width=options.width or sample * scale,
        height=options.height or sample * scale,
        steps=options.steps or 25,
        guidance=7.5 if options.guidance is None else options.guidance,
    )
    return DiffusersGenerator(spec, pipeline, device, dtype, defaults)
