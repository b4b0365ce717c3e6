"""``procedural:shapes``: a fast, deterministic text-to-image generator for the offline toy world.

Text -> :func:`~toyworld.vocabulary.parse_scene_text` -> :func:`compose_scene` (layout
from the seed) -> :func:`draw_scene` (pixels). Drawing supersamples 2x for smooth edges, then adds
soft lighting and pixel noise; it runs on the CPU at hundreds of 224x224 images per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from inference.protocols import (
    BackendSpecError,
    GeneratorOptions,
    RenderedImage,
    RenderJob,
    RenderSettings,
)
from toyworld.scenes import PlacedObject, Scene, compose_scene
from toyworld.vocabulary import parse_scene_text
from toyworld.world import INK_RGB, OBJECT_RGB, shape_outline

RENDERER_VERSION = "v1"
"""Bump when a change alters pixels: it is part of the generator's identity (image ids)."""

GENERATOR_NAMES = ("shapes",)
"""Scene renderers (the toy-world editor re-renders their scenes)."""
DEFAULT_SIZE = 224
SUPERSAMPLE = 2
DOT_RADIUS = 0.28  # dot radius as a fraction of the pattern period
MIN_SIZE, MAX_SIZE = 16, 4096


def _object_polygon(obj: PlacedObject, scale: float) -> np.ndarray:
    """The object's outline in canvas pixels (``scale`` = canvas pixels per unit length)."""
    cos, sin = np.cos(obj.rotation), np.sin(obj.rotation)
    outline = shape_outline(obj.shape) @ np.array([[cos, sin], [-sin, cos]])
    return outline * (obj.radius * scale) + np.array([obj.x, obj.y]) * scale


def _pattern(obj: PlacedObject, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """Boolean ``[h, w]`` map of where the texture's ink goes inside ``box`` (canvas pixels)."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - obj.x * scale
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - obj.y * scale
    period = obj.pattern_period * scale
    cos, sin = np.cos(obj.pattern_angle), np.sin(obj.pattern_angle)
    u = (xs * cos + ys * sin) / period
    v = (ys * cos - xs * sin) / period
    if obj.texture == "striped":
        return (u + 0.25) % 1.0 < 0.5
    if obj.texture == "dotted":
        du, dv = u % 1.0 - 0.5, v % 1.0 - 0.5
        return du * du + dv * dv < DOT_RADIUS**2
    if obj.texture == "checkered":
        return (np.floor(2 * u) + np.floor(2 * v)) % 2 == 0
    raise ValueError(f"unknown texture {obj.texture!r}")


def _lighting(scene: Scene, width: int, height: int) -> np.ndarray:
    """Soft brightness variation: a linear gradient plus low-frequency blotches, ``[h, w]``."""
    amplitude, direction, blotchiness = scene.lighting
    rng = np.random.default_rng(scene.noise_seed)
    coarse = rng.uniform(-1.0, 1.0, size=(4, 4)) * (2.0 + 4.0 * blotchiness)
    centres = (np.arange(4) + 0.5) / 4 - 0.5
    coarse += (
        2
        * amplitude
        * (centres[None, :] * np.cos(direction) + centres[:, None] * np.sin(direction))
    )
    field = Image.fromarray(coarse.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(field)


def draw_scene(scene: Scene, width: int, height: int) -> Image.Image:
    """Rasterise a scene at ``width`` x ``height`` pixels."""
    scale = min(width, height) * SUPERSAMPLE
    canvas = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), scene.background_rgb)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        polygon = _object_polygon(obj, scale)
        draw.polygon([tuple(p) for p in polygon.tolist()], fill=OBJECT_RGB[obj.colour])
        if obj.texture == "plain":
            continue
        x0, y0 = np.floor(polygon.min(axis=0)).astype(int)
        x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, canvas.width), min(y1, canvas.height)
        if x1 <= x0 or y1 <= y0:
            continue
        inside = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(inside).polygon([tuple(p) for p in (polygon - (x0, y0)).tolist()], fill=255)
        ink = np.asarray(inside) & (_pattern(obj, (x0, y0, x1, y1), scale).view(np.uint8) * 255)
        canvas.paste(INK_RGB[obj.colour], (x0, y0, x1, y1), Image.fromarray(ink))
    pixels = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.int16)
    light = np.rint(_lighting(scene, width, height)).astype(np.int16)
    amplitude = scene.noise_amplitude
    noise = np.random.default_rng(scene.noise_seed + 1).integers(
        -amplitude, amplitude + 1, size=pixels.shape, dtype=np.int16
    )
    pixels += noise
    pixels += light[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_prompt(
    prompt: str, seed: int, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE
) -> RenderedImage:
    """Render one prompt with one seed; the image depends only on (prompt, seed, size)."""
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise ValueError(
            f"image size {width}x{height} is out of range; use {MIN_SIZE}..{MAX_SIZE} pixels a side"
        )
    spec = parse_scene_text(prompt)
    scene = compose_scene(spec, seed, aspect=width / height)
    image = draw_scene(scene, width, height)
    main = [obj.describe() for obj in scene.objects if not obj.distractor]
    distractors = sum(obj.distractor for obj in scene.objects)
    return RenderedImage(
        image=image,
        understood=list(spec.understood),
        extra={"background": scene.background, "objects": main, "distractors": distractors},
    )


def fade(image: Image.Image) -> Image.Image:
    """A weaker renderer's look: 65% of the colour saturation, 80% of the contrast and a blur of
    1/112 of the image side (2 pixels at 224). Planted colour and texture units fire less on it."""
    faded = ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(0.65)).enhance(0.8)
    return faded.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 112))


FINISHES: dict[str, Callable[[Image.Image], Image.Image]] = {"faded": fade}
"""Settings of ``procedural:shapes`` that change its images after drawing, as a second toy
generator (``procedural:shapes:faded``): the same scenes, worse pictures."""


@dataclass
class ProceduralShapesGenerator:
    """The ``procedural:shapes`` backend (``procedural:shapes:<finish>`` with one of
    :data:`FINISHES`); ``steps`` and ``guidance`` are accepted and ignored."""

    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    name: str = "procedural:shapes"
    identity: str = f"procedural:shapes@{RENDERER_VERSION}"
    device: str = "cpu"
    finish: str | None = None

    def default_settings(self) -> RenderSettings:
        """Default size (224x224 unless configured), one step, no guidance."""
        return RenderSettings(width=self.width, height=self.height, steps=1, guidance=0.0)

    def render(self, jobs: Sequence[RenderJob]) -> list[RenderedImage]:
        """Render each job at its own settings' size, in order."""
        rendered = [
            render_prompt(job.prompt, job.seed, job.settings.width, job.settings.height)
            for job in jobs
        ]
        if self.finish is None:
            return rendered
        return [replace(image, image=FINISHES[self.finish](image.image)) for image in rendered]


def create_procedural_generator(
    rest: str, device: str, options: GeneratorOptions
) -> ProceduralShapesGenerator:
    """Factory for ``procedural:<name>[:<finish>]`` specs; ``device`` is ignored (this renders
    on the CPU)."""
    name, _, finish = rest.partition(":")
    if name not in GENERATOR_NAMES or (finish and finish not in FINISHES):
        valid = [*GENERATOR_NAMES, *(f"{n}:{f}" for n in GENERATOR_NAMES for f in FINISHES)]
        raise BackendSpecError(
            f"unknown procedural generator {rest!r}; valid: "
            + ", ".join(f"'procedural:{spec}'" for spec in valid)
        )
    width, height = options.width or DEFAULT_SIZE, options.height or DEFAULT_SIZE
    if not finish:
        return ProceduralShapesGenerator(width, height)
    return ProceduralShapesGenerator(
        width,
        height,
        name=f"procedural:{rest}",
        identity=f"procedural:{rest}@{RENDERER_VERSION}",
        finish=finish,
    )
