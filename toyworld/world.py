"""Shared facts of the toy world: the colour palette, texture inks, backgrounds and shape outlines.

The renderer draws with these colours and outlines; the planted model's pixel classifier uses
the same palette as its "learned" colour prototypes. Everything here is immutable.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from toyworld.vocabulary import BACKGROUND_COLOURS, COLOURS, SHAPES

RGB = tuple[int, int, int]

OBJECT_RGB: dict[str, RGB] = {
    "red": (215, 35, 40),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 85, 215),
    "purple": (125, 45, 180),
    "pink": (245, 105, 185),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
"""Saturated object colours, at least 80 apart in RGB."""

INK_RGB: dict[str, RGB] = {
    "red": (235, 145, 148),
    "orange": (250, 195, 138),
    "yellow": (250, 240, 150),
    "green": (148, 208, 158),
    "blue": (145, 170, 235),
    "purple": (190, 150, 218),
    "pink": (250, 180, 220),
    "brown": (188, 162, 142),
    "black": (105, 105, 105),
    "white": (185, 185, 185),
}
"""The second colour of a textured object (stripes, dots, checks): a lighter tint of its colour."""

NAMED_BACKGROUND_RGB: dict[str, RGB] = {
    **{name: OBJECT_RGB[name] for name in COLOURS if name not in ("black", "white")},
    "black": (20, 20, 22),
    "white": (240, 240, 238),
    "gray": (140, 140, 140),
}
"""Background colours a prompt can ask for ("on a blue background")."""

DEFAULT_BACKGROUND_RGB: dict[str, RGB] = {
    "light gray": (215, 215, 210),
    "gray": (140, 140, 140),
    "dark gray": (60, 60, 64),
    "navy": (25, 35, 75),
    "teal": (35, 105, 105),
    "sand": (215, 195, 150),
    "sky": (165, 195, 225),
    "olive": (95, 100, 50),
}
"""Muted backgrounds used when a prompt names none."""

MIN_CONTRAST = 72.0
"""Least RGB distance between a sampled object colour (or its ink) and the background."""

SHAPE_RADIUS = 1.0
"""Shape outlines are centred on their centroid with farthest vertex at this radius."""

assert set(NAMED_BACKGROUND_RGB) == set(BACKGROUND_COLOURS)


def rgb_distance(a: RGB, b: RGB) -> float:
    """Euclidean distance between two RGB colours."""
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


@cache
def contrasts(colour: str, textured: bool, background: RGB) -> bool:
    """True when an object of ``colour`` (and its ink, if textured) stands out from background."""
    if rgb_distance(OBJECT_RGB[colour], background) < MIN_CONTRAST:
        return False
    return not textured or rgb_distance(INK_RGB[colour], background) >= MIN_CONTRAST


def _regular_polygon(sides: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.5) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    arm = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
    return np.array([*arm, *[(-x, -y) for x, y in arm]], dtype=float)


def _heart(points: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _polygon_centroid(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    return np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6 * area)


@cache
def shape_outline(shape: str) -> np.ndarray:
    """The outline of a shape as a read-only ``[k, 2]`` polygon, centroid at 0, radius 1."""
    builders = {
        "circle": lambda: _regular_polygon(64),
        "square": lambda: _regular_polygon(4, np.pi / 4),
        "triangle": lambda: _regular_polygon(3, -np.pi / 2),
        "star": _star,
        "cross": _cross,
        "hexagon": lambda: _regular_polygon(6),
        "diamond": lambda: np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], dtype=float),
        "heart": _heart,
    }
    if shape not in builders:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    points = builders[shape]()
    points = points - _polygon_centroid(points)
    points = points * (SHAPE_RADIUS / np.linalg.norm(points, axis=1).max())
    points.setflags(write=False)
    return points
