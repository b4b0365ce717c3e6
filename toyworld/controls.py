"""Fixed prompt sets of the toy world: the random-scene control set."""

from __future__ import annotations

import numpy as np

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "a photo",
    "a picture",
    "an image",
    "a scene",
    "a realistic photo",
    "a snapshot",
    "an illustration",
    "a photograph of something",
)
"""Prompts without a known word: each renders a scene of random distractor objects."""


def random_toy_scene_prompts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs of random toy scenes: the toy world's control set.

    The prompts contain no word the generator knows, so every image is a random arrangement of
    2-5 small-to-medium objects of random colour, shape and texture. Seeds are distinct and fixed
    by ``seed``, so the set is the same on every call.
    """
    rng = np.random.default_rng([seed, 7919])
    seeds = rng.choice(1_000_000, size=n, replace=False) + 1_000_000 * (seed + 1)
    return [(NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)], int(s)) for i, s in enumerate(seeds)]


def random_toy_concepts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (concept, seed) pairs of random toy-world concepts: a random subset of attributes
    ("two striped green stars", "large objects on a white background", or a phrase naming
    nothing), drawn like the probe scenes but from another stream. Rendered through a prompt
    template they give control images composed like concept images (one or a few named objects),
    so a label is compared with other concepts, not with busier scenes."""
    from toyworld.probes import random_prompt

    rng = np.random.default_rng([seed, 6271])
    seeds = rng.choice(1_000_000, size=n, replace=False) + 1_000_000 * (seed + 1)
    return [(random_prompt(rng), int(s)) for s in seeds]
