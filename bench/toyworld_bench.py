"""Toy-world speed: procedural:shapes images/s at 224x224 on one core, planted:shapes batch time.

Run alone with ``python -m bench.toyworld_bench``; ``run()`` returns the numbers as a dict.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from inference.protocols import RenderJob, RenderSettings
from toyworld.controls import random_toy_scene_prompts
from toyworld.planted import PlantedShapesModel
from toyworld.procedural import ProceduralShapesGenerator

PROMPTS = (
    "a red circle",
    "three striped blue triangles",
    "many small objects",
    "a large dotted heart on a white background",
    "a realistic photo of a green star, aerial view",
    "a photo",
    "two checkered squares and a purple cross",
    "a star or a cross",
)
MIN_SECONDS = 3.0
BATCH = 64


@contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to a single CPU core for the duration (where the OS allows it)."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _generator_rate(generator: ProceduralShapesGenerator) -> float:
    settings = RenderSettings(width=224, height=224, steps=1, guidance=0.0)
    jobs = [RenderJob(prompt=p, seed=s, settings=settings) for s in range(4) for p in PROMPTS]
    generator.render(jobs[:8])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < MIN_SECONDS:
        generator.render(jobs)
        done += len(jobs)
    return done / (time.perf_counter() - start)


def _planted_batch_seconds(generator: ProceduralShapesGenerator) -> float:
    settings = generator.default_settings()
    jobs = [RenderJob(p, s, settings) for p, s in random_toy_scene_prompts(BATCH, seed=3)]
    images = [r.image for r in generator.render(jobs)]
    model = PlantedShapesModel()
    model.activations(images[:4], "planted")  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        model.activations(images, "planted")
        timings.append(time.perf_counter() - start)
    return min(timings)


def run() -> dict[str, float]:
    """Measure on one core; print one line per number and return them."""
    generator = ProceduralShapesGenerator()
    with one_core():
        rate = _generator_rate(generator)
        batch = _planted_batch_seconds(generator)
    print(f"toyworld: procedural:shapes {rate:.0f} images/s at 224x224 on one core")
    print(f"toyworld: planted:shapes {batch * 1000:.0f} ms per batch of {BATCH} images, one core")
    return {"procedural_images_per_s": rate, "planted_batch64_s": batch}


if __name__ == "__main__":
    run()
