"""The pipeline limit: the most one device can do for LINE's hot path.

The generator and the target called in-process, one after the other, on pixel tensors that stay
on the device (``render_pixels`` -> ``activations_from_pixels``), at the server's ``max_batch``:
no HTTP, no PNG, no store, no batching queue. End-to-end runs are measured against it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from inference.generators.diffusers_generator import DiffusersGenerator
from inference.protocols import RenderJob
from inference.targets.torch_target import TorchTarget


@dataclass(frozen=True)
class PipelineLimit:
    """Images pushed through generator and target back to back, and where the time went."""

    batch: int
    images: int
    seconds: float
    generator_seconds: float
    target_seconds: float

    @property
    def images_per_s(self) -> float:
        """Images rendered and measured per second."""
        return self.images / self.seconds

    def as_dict(self) -> dict[str, float]:
        """The figures for a benchmark's JSON."""
        return {
            "batch": self.batch,
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "generator_share": self.generator_seconds / self.seconds,
            "target_share": self.target_seconds / self.seconds,
        }


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so timings are true."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def render_and_measure(
    generator: DiffusersGenerator, target: TorchTarget, layer: str, jobs: Sequence[RenderJob]
) -> tuple[np.ndarray, float, float]:
    """One pipeline step: render ``jobs`` to pixels on the device, measure ``layer`` on them.

    Returns the ``[len(jobs), units]`` activations and the generator's and the target's seconds.
    """
    started = time.perf_counter()
    pixels = generator.render_pixels(jobs)
    synchronize(generator.device)
    rendered = time.perf_counter()
    values = target.activations_from_pixels(pixels, layer)  # ends on the CPU: synchronised
    return values, rendered - started, time.perf_counter() - rendered


def pipeline_limit(
    generator: DiffusersGenerator,
    target: TorchTarget,
    layer: str,
    batch: int,
    min_seconds: float = 1.5,
    min_calls: int = 2,
) -> PipelineLimit:
    """Images/s of :func:`render_and_measure` on batches of ``batch`` distinct prompts, run for
    at least ``min_seconds`` and ``min_calls`` batches after one warm-up batch."""
    settings = generator.default_settings()
    render_and_measure(generator, target, layer, [RenderJob("warm up", 0, settings)] * batch)
    images, generator_seconds, target_seconds, call = 0, 0.0, 0.0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_seconds or call < min_calls:
        jobs = [
            RenderJob(f"pipeline {batch} {call} {i} {time.perf_counter_ns()}", i, settings)
            for i in range(batch)
        ]
        _, rendering, measuring = render_and_measure(generator, target, layer, jobs)
        generator_seconds += rendering
        target_seconds += measuring
        images += batch
        call += 1
    seconds = time.perf_counter() - started
    return PipelineLimit(batch, images, seconds, generator_seconds, target_seconds)
