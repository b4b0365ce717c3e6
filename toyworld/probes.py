"""Scenes with known attributes: the learned target's training data and the dissection probe set.

A probe is a (prompt, seed) pair drawn from a structured sampler ("three small red striped
circles on a blue background", or a prompt with no known word: random objects). Its attributes
are read off the composed scene, not the prompt, so they are what the image really shows,
distractors included:

- every object's colour, shape and fill (``striped``, ``dotted``, ``checkered``; ``plain`` too);
- ``small`` / ``large`` when an object's radius is in that size range;
- ``many`` when the scene has at least :data:`MANY_OBJECTS` objects;
- ``<colour> background`` when the background has a name a prompt can use.

Pairs of object attributes (colour, shape, fill, size) also record whether one object carries
both, so "blue triangle" means a blue triangle, not a blue object beside a triangle; and "many"
with an object attribute means that many objects carry it ("many small objects").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from PIL import Image

from toyworld.procedural import DEFAULT_SIZE, draw_scene
from toyworld.scenes import COUNT_VALUES, SIZE_RANGES, Scene, compose_scene
from toyworld.vocabulary import (
    BACKGROUND_COLOURS,
    COLOURS,
    SHAPES,
    SIZES,
    TEXTURES,
    parse_scene_text,
)

MANY_OBJECTS = 6
"""A scene with at least this many objects has the attribute ``many``: more than five, the
largest count with a name (the renderer draws 8-12 objects for "many")."""
OBJECT_SIZES = ("small", "large")
ATTRIBUTES: tuple[str, ...] = (
    *COLOURS,
    *SHAPES,
    *TEXTURES,
    *OBJECT_SIZES,
    "many",
    *(f"{colour} background" for colour in BACKGROUND_COLOURS),
)
"""Every attribute a probe scene can have, in a fixed order (the learned target's outputs)."""
OBJECT_ATTRIBUTES = frozenset((*COLOURS, *SHAPES, *TEXTURES, *OBJECT_SIZES))
"""Attributes of a single object; a pair of them is an AND on one object."""
NEUTRAL_PROMPT = "a photo"


@dataclass(frozen=True)
class Probe:
    """One scene: its prompt and seed, the composed scene, and the attributes it really has."""

    prompt: str
    seed: int
    scene: Scene = field(repr=False, compare=False)
    attributes: frozenset[str]
    object_pairs: frozenset[frozenset[str]]
    """Pairs of object attributes that one object carries together."""
    many_of: frozenset[str] = frozenset()
    """Object attributes that at least :data:`MANY_OBJECTS` objects carry."""

    def render(self, size: int = DEFAULT_SIZE) -> Image.Image:
        """The scene's pixels (the same image the ``procedural:shapes`` generator renders)."""
        return draw_scene(self.scene, size, size)


def object_size(radius: float) -> str | None:
    """``small`` or ``large`` when a radius falls in that size range, else None."""
    for name in OBJECT_SIZES:
        low, high = SIZE_RANGES[name]
        if (name == "small" and radius <= high) or (name == "large" and radius >= low):
            return name
    return None


def scene_attributes(
    scene: Scene,
) -> tuple[frozenset[str], frozenset[frozenset[str]], frozenset[str]]:
    """The attributes a composed scene has, the object-attribute pairs one object carries, and
    the object attributes that many objects carry."""
    attributes: set[str] = set()
    pairs: set[frozenset[str]] = set()
    carriers: Counter[str] = Counter()
    for obj in scene.objects:
        size = object_size(obj.radius)
        own = [obj.colour, obj.shape, obj.texture, *([size] if size else [])]
        attributes.update(own)
        carriers.update(own)
        pairs.update(frozenset(pair) for pair in combinations(own, 2))
    if len(scene.objects) >= MANY_OBJECTS:
        attributes.add("many")
    if scene.background in BACKGROUND_COLOURS:
        attributes.add(f"{scene.background} background")
    many_of = frozenset(name for name, count in carriers.items() if count >= MANY_OBJECTS)
    return frozenset(attributes), frozenset(pairs), many_of


def random_prompt(rng: np.random.Generator) -> str:
    """A prompt naming a random subset of attributes (or none: a random scene)."""
    if rng.random() < 0.2:
        return NEUTRAL_PROMPT
    words: list[str] = []
    count = rng.choice([*COUNT_VALUES, "many", "many"]) if rng.random() < 0.4 else None
    if count is not None:
        words.append(str(count))
    if rng.random() < 0.3:
        words.append(str(rng.choice(SIZES)))
    if rng.random() < 0.6:
        words.append(str(rng.choice(COLOURS)))
    if rng.random() < 0.4:
        words.append(str(rng.choice(TEXTURES)))
    plural = count not in (None, "one")
    if rng.random() < 0.6:
        shape = str(rng.choice(SHAPES))
        words.append(shape + ("es" if plural and shape.endswith("x") else "s" if plural else ""))
    else:
        words.append("objects" if plural else "object")
    if rng.random() < 0.3:
        words.append(f"on a {rng.choice(BACKGROUND_COLOURS)} background")
    return " ".join(words)


def probe_set(count: int, seed: int) -> list[Probe]:
    """``count`` probes, the same for the same ``seed``; different seeds give disjoint scenes."""
    return list(iter_probes(count, seed))


def iter_probes(count: int, seed: int) -> Iterator[Probe]:
    """The probes of :func:`probe_set`, one at a time."""
    rng = np.random.default_rng([seed, 104729])
    for index in range(count):
        prompt = random_prompt(rng)
        scene_seed = int(seed) * 10_000_000 + index
        scene = compose_scene(parse_scene_text(prompt), scene_seed)
        yield Probe(prompt, scene_seed, scene, *scene_attributes(scene))


def attribute_matrix(probes: list[Probe]) -> np.ndarray:
    """``[probes, len(ATTRIBUTES)]`` 0/1 float32 matrix of which probe has which attribute."""
    index = {name: column for column, name in enumerate(ATTRIBUTES)}
    out = np.zeros((len(probes), len(ATTRIBUTES)), dtype=np.float32)
    for row, probe in enumerate(probes):
        for name in probe.attributes:
            out[row, index[name]] = 1.0
    return out
