"""Scene layout: turn a parsed text and a seed into a concrete list of placed objects.

Everything the seed varies (layout, rotation, scale jitter, sampled attributes, distractors,
background, noise) comes from separate random streams, so two prompts that differ in one word
and share a seed differ, as far as possible, only in that attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toyworld.vocabulary import COLOURS, SHAPES, TEXTURES, ObjectSpec, SceneSpec
from toyworld.world import (
    DEFAULT_BACKGROUND_RGB,
    NAMED_BACKGROUND_RGB,
    RGB,
    contrasts,
)

SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.065, 0.095),
    "medium": (0.165, 0.225),
    "large": (0.27, 0.33),
}
"""Object radius (centroid to farthest point) as a fraction of the image's shorter side."""

DISTRACTOR_SIZE = (0.05, 0.085)
RANDOM_SCENE_SIZE = (0.05, 0.125)
COUNT_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
MANY_RANGE = (8, 12)
PLURAL_RANGE = (2, 4)
TEXTURE_WEIGHTS = np.array([0.4, 0.2, 0.2, 0.2])  # plain, striped, dotted, checkered
MARGIN = 0.02  # free space kept around every object and along the image border
MAX_OBJECTS = 16

_STREAMS = ("background", "attributes", "layout", "distractors", "noise")
"""Independent random streams, one per purpose, all derived from the seed."""


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object; positions and radius are fractions of the image's shorter side."""

    shape: str
    colour: str
    texture: str
    x: float
    y: float
    radius: float
    rotation: float
    pattern_angle: float
    pattern_period: float
    distractor: bool = False

    def describe(self) -> str:
        """A short description such as ``"red striped triangle"``."""
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{self.colour} {texture}{self.shape}"


@dataclass(frozen=True)
class Scene:
    """A fully specified scene: background, objects, lighting and pixel-noise parameters."""

    background: str
    background_rgb: RGB
    objects: tuple[PlacedObject, ...]
    noise_amplitude: int
    """Uniform per-pixel noise in [-a, a] grey levels."""
    lighting: tuple[float, float, float]
    """Brightness gradient amplitude (grey levels), its direction (radians), blotchiness (0-1)."""
    noise_seed: int


@dataclass
class _Slot:
    """One object before layout: its attributes and the radius it asks for."""

    shape: str
    colour: str
    texture: str
    radius: float
    rotation: float
    pattern_angle: float
    pattern_jitter: float
    distractor: bool


def _rng(seed: int, stream: str) -> np.random.Generator:
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, _STREAMS.index(stream)]
    return np.random.default_rng(words)


def _pick(options: tuple[str, ...], u: float, offset: int = 0) -> str:
    return options[(int(u * len(options)) + offset) % len(options)]


def _count(group: ObjectSpec, rng: np.random.Generator) -> int:
    draw = rng.random()
    if group.count in COUNT_VALUES:
        return COUNT_VALUES[group.count]
    if group.count == "many":
        low, high = MANY_RANGE
        return low + int(draw * (high - low + 1))
    if group.plural:
        low, high = PLURAL_RANGE
        return low + int(draw * (high - low + 1))
    return 1


def _radius_range(size: str | None, count: int) -> tuple[float, float]:
    if size is not None:
        return SIZE_RANGES[size]
    if count >= 6:
        return SIZE_RANGES["small"]
    if count >= 4:
        return (0.11, 0.15)
    return SIZE_RANGES["medium"]


def _choose_background(spec: SceneSpec, rng: np.random.Generator) -> tuple[str, RGB]:
    draw = rng.random()
    if spec.background is not None:
        return spec.background, NAMED_BACKGROUND_RGB[spec.background]
    names = tuple(DEFAULT_BACKGROUND_RGB)
    wanted = {colour for group in spec.groups for colour in group.colours}
    fitting = tuple(
        name
        for name in names
        if all(contrasts(colour, True, DEFAULT_BACKGROUND_RGB[name]) for colour in wanted)
    )
    name = _pick(fitting or names, draw)
    return name, DEFAULT_BACKGROUND_RGB[name]


def _random_attributes(
    rng: np.random.Generator, background: RGB, **fixed: str
) -> tuple[str, str, str]:
    """Colour, shape and texture; fixed ones kept, the rest sampled to stand out from background."""
    u_colour, u_shape = rng.random(2)
    texture_draw = int(rng.choice(len(TEXTURES), p=TEXTURE_WEIGHTS))
    shape = fixed.get("shape") or _pick(SHAPES, u_shape)
    texture = fixed.get("texture") or TEXTURES[texture_draw]
    if "colour" in fixed:
        return fixed["colour"], shape, texture
    fitting = tuple(c for c in COLOURS if contrasts(c, texture != "plain", background))
    if fitting:
        return _pick(fitting, u_colour), shape, texture
    return _pick(COLOURS, u_colour), shape, "plain"


def _group_slots(
    group: ObjectSpec, rng: np.random.Generator, background: RGB, budget: int
) -> list[_Slot]:
    count = min(_count(group, rng), budget)
    low, high = _radius_range(group.size, count)
    offsets = rng.integers(0, 1000, size=3)
    slots = []
    for index in range(count):
        u = rng.random(6)
        fixed: dict[str, str] = {}
        if group.colours:
            fixed["colour"] = _pick(group.colours, u[0], int(offsets[0]) + index)
        if group.shapes:
            fixed["shape"] = _pick(group.shapes, u[1], int(offsets[1]) + index)
        if group.textures:
            fixed["texture"] = _pick(group.textures, u[2], int(offsets[2]) + index)
        colour, shape, texture = _random_attributes(rng, background, **fixed)
        if group.textures == () and not contrasts(colour, texture != "plain", background):
            texture = "plain"
        slots.append(
            _Slot(
                shape=shape,
                colour=colour,
                texture=texture,
                radius=low + (high - low) * u[3],
                rotation=2 * np.pi * u[4],
                pattern_angle=np.pi * u[5],
                pattern_jitter=0.85 + 0.3 * rng.random(),
                distractor=False,
            )
        )
    return slots


def _random_slots(
    rng: np.random.Generator, background: RGB, count: int, radius: tuple[float, float]
) -> list[_Slot]:
    slots = []
    for _ in range(count):
        colour, shape, texture = _random_attributes(rng, background)
        u = rng.random(4)
        slots.append(
            _Slot(
                shape=shape,
                colour=colour,
                texture=texture,
                radius=radius[0] + (radius[1] - radius[0]) * u[0],
                rotation=2 * np.pi * u[1],
                pattern_angle=np.pi * u[2],
                pattern_jitter=0.85 + 0.3 * u[3],
                distractor=True,
            )
        )
    return slots


def _place(
    placed: list[tuple[_Slot, float, float, float]],
    slots: list[_Slot],
    rng: np.random.Generator,
    aspect: float,
    required: bool,
) -> list[tuple[_Slot, float, float, float]]:
    """Add non-overlapping positions (x, y, radius) for slots to ``placed``.

    Required objects shrink until they fit; others are dropped when there is no room.
    """
    width, height = (aspect, 1.0) if aspect >= 1 else (1.0, 1.0 / aspect)
    for slot in sorted(slots, key=lambda s: -s.radius):
        radius = slot.radius
        for _attempt in range(40):
            room_x, room_y = width - 2 * (radius + MARGIN), height - 2 * (radius + MARGIN)
            if room_x > 0 and room_y > 0:
                xs = radius + MARGIN + room_x * rng.random(24)
                ys = radius + MARGIN + room_y * rng.random(24)
                ok = np.ones(24, dtype=bool)
                for _other, ox, oy, orad in placed:
                    ok &= np.hypot(xs - ox, ys - oy) >= radius + orad + MARGIN
                if ok.any():
                    k = int(np.argmax(ok))
                    placed.append((slot, float(xs[k]), float(ys[k]), radius))
                    break
            if not required:
                break
            radius *= 0.93
    return placed


def compose_scene(spec: SceneSpec, seed: int, aspect: float = 1.0) -> Scene:
    """Lay out a parsed scene for one seed; ``aspect`` is the image's width / height."""
    rng_background = _rng(seed, "background")
    rng_attributes = _rng(seed, "attributes")
    rng_layout = _rng(seed, "layout")
    rng_distractors = _rng(seed, "distractors")
    rng_noise = _rng(seed, "noise")

    background, background_rgb = _choose_background(spec, rng_background)
    if spec.is_empty:
        count = 2 + int(rng_distractors.integers(0, 4))
        slots = _random_slots(rng_distractors, background_rgb, count, RANDOM_SCENE_SIZE)
        placed = _place([], slots, rng_layout, aspect, required=True)
    else:
        slots = []
        for group in spec.groups:
            budget = MAX_OBJECTS - len(slots)
            slots += _group_slots(group, rng_attributes, background_rgb, budget)
        placed = _place([], slots, rng_layout, aspect, required=True)
        count = int(rng_distractors.choice(3, p=[0.4, 0.4, 0.2]))
        extra = _random_slots(rng_distractors, background_rgb, count, DISTRACTOR_SIZE)
        placed = _place(placed, extra, rng_layout, aspect, required=False)

    objects = tuple(
        PlacedObject(
            shape=slot.shape,
            colour=slot.colour,
            texture=slot.texture,
            x=x,
            y=y,
            radius=radius,
            rotation=slot.rotation,
            pattern_angle=slot.pattern_angle,
            pattern_period=max(0.032, 0.4 * radius) * slot.pattern_jitter,
            distractor=slot.distractor,
        )
        for slot, x, y, radius in placed
    )
    noise = rng_noise.random(6)
    return Scene(
        background=background,
        background_rgb=background_rgb,
        objects=objects,
        noise_amplitude=2 + int(noise[0] * 4),
        lighting=(float(noise[1] - 0.5) * 12, float(noise[2]) * 2 * np.pi, float(noise[3])),
        noise_seed=int(rng_noise.integers(0, 2**31)),
    )
