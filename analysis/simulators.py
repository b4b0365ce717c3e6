"""Simulators: predict a neuron's activation on an image from its label alone.

A simulator turns (label, image) into a predicted activation; a label that explains a neuron
well predicts its activations on images it was not found with (Linear Explanations, ICML 2024;
Neuron_Eval, ICML 2025). Two kinds, by spec (:func:`load_simulator`):

- ``exact``: the toy world's exact simulator. A toy control image is a ``procedural:shapes``
  render of a known (prompt, seed), so its scene, every object's colour, shape, fill and size and
  the background, is known exactly (:func:`toyworld.scenes.compose_scene`). The label
  is parsed into object groups with the same vocabulary (:func:`parse_scene_text`). For each
  group, the objects that fit it (each of its named colours, shapes or fills is an alternative;
  a named size must match) give a value: the share of the image the largest fitting object
  covers (pi r^2, r its radius as a fraction of the image side); for a group with a count
  ("three", "many"), the number of fitting objects divided by that count (many: 6). A named
  background gives 1 when the scene has it, else 0. The prediction is the mean of these values;
  a label that names nothing the toy world knows predicts 0 everywhere.
- ``clip:HUB_ID_OR_FOLDER`` (and ``tiny-clip``, random weights, for tests): the cosine
  similarity of the image with ``"a photo of {label}"`` under a CLIP-style model
  (:class:`analysis.image_text.ImageTextModel`), loaded only when named.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from analysis.image_text import ImageTextModel
from analysis.simulator_specs import CLIP_PREFIX, EXACT, SIMULATOR_SPECS, TINY_CLIP
from toyworld.probes import MANY_OBJECTS, object_size
from toyworld.scenes import COUNT_VALUES, PlacedObject, Scene, compose_scene
from toyworld.vocabulary import ObjectSpec, SceneSpec, parse_scene_text

CLIP_TEMPLATE = "a photo of {label}"
"""What an image-text simulator compares each image with."""


class SimulatorError(ValueError):
    """A simulator that cannot be made, or cannot read the images it is given."""


@dataclass(frozen=True)
class SimulatedImage:
    """What a simulator may read of one image: where its pixels are (a file, PNG bytes or the
    image itself; decoded only when read) and, for a toy-world render, the prompt and seed it
    was rendered from."""

    source: Path | bytes | Image.Image | None = field(default=None, compare=False)
    scene: tuple[str, int] | None = None

    def pixels(self) -> Image.Image:
        """The image as RGB."""
        if self.source is None:
            raise SimulatorError("this image was given without its pixels")
        if isinstance(self.source, Image.Image):
            return self.source.convert("RGB")
        opened = Image.open(
            io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source
        )
        return opened.convert("RGB")


class Simulator(Protocol):
    """Predicts activations from labels."""

    @property
    def name(self) -> str:
        """The spec it was made from (the ``simulator`` column of ``simulation.csv``)."""
        ...

    @property
    def reads_pixels(self) -> bool:
        """Whether :meth:`simulate` reads the images' pixels (``SimulatedImage.source``)."""
        ...

    def simulate(self, labels: Sequence[str], images: Sequence[SimulatedImage]) -> np.ndarray:
        """``[labels, images]`` predicted activations."""
        ...


# ----- the toy world's exact simulator -----------------------------------------------------
def _size_name(obj: PlacedObject) -> str:
    return object_size(obj.radius) or "medium"


def _fits(obj: PlacedObject, group: ObjectSpec) -> bool:
    """Whether an object is one of the group's alternatives (and of its size, if named)."""
    return (
        (not group.colours or obj.colour in group.colours)
        and (not group.shapes or obj.shape in group.shapes)
        and (not group.textures or obj.texture in group.textures)
        and (group.size is None or _size_name(obj) == group.size)
    )


def _group_value(scene: Scene, group: ObjectSpec) -> float:
    fitting = [obj for obj in scene.objects if _fits(obj, group)]
    if group.count is not None and group.count != "one":
        wanted = MANY_OBJECTS if group.count == "many" else COUNT_VALUES[group.count]
        return len(fitting) / wanted
    return max((math.pi * obj.radius**2 for obj in fitting), default=0.0)


def exact_prediction(label: SceneSpec, scene: Scene) -> float:
    """The exact simulator's prediction for a parsed label on a composed scene (module doc)."""
    values = [_group_value(scene, group) for group in label.groups]
    if label.background is not None:
        values.append(1.0 if scene.background == label.background else 0.0)
    return float(np.mean(values)) if values else 0.0


@lru_cache(maxsize=4096)
def _scene(prompt: str, seed: int) -> Scene:
    return compose_scene(parse_scene_text(prompt), seed)


@dataclass(frozen=True)
class ExactToySimulator:
    """The toy world's exact simulator (module doc); reads scenes, not pixels."""

    name: str = EXACT
    reads_pixels: bool = False

    def simulate(self, labels: Sequence[str], images: Sequence[SimulatedImage]) -> np.ndarray:
        """``[labels, images]`` predictions from each image's known scene."""
        if any(image.scene is None for image in images):
            raise SimulatorError(
                "the exact simulator knows the attributes of toy-world scenes only; use "
                f"--control toy (or toy:N), or a {CLIP_PREFIX}MODEL simulator for image files"
            )
        scenes = [_scene(*image.scene) for image in images if image.scene is not None]
        parsed = [parse_scene_text(label) for label in labels]
        return np.array(
            [[exact_prediction(spec, scene) for scene in scenes] for spec in parsed],
            dtype=np.float64,
        ).reshape(len(labels), len(images))


# ----- image-text models ---------------------------------------------------------------------
@dataclass
class ImageTextSimulator:
    """Cosine similarity of each image with :data:`CLIP_TEMPLATE` under a CLIP-style model."""

    name: str
    model: ImageTextModel
    template: str = CLIP_TEMPLATE
    reads_pixels: bool = True

    def simulate(self, labels: Sequence[str], images: Sequence[SimulatedImage]) -> np.ndarray:
        """``[labels, images]`` cosine similarities; images are decoded a batch at a time."""
        if any(image.source is None for image in images):
            raise SimulatorError(f"simulator {self.name} needs the images' pixels")
        size = self.model.batch_size
        image_vectors = np.concatenate(
            [
                self.model.embed_images([image.pixels() for image in images[start : start + size]])
                for start in range(0, len(images), size)
            ]
        )
        texts = [self.template.replace("{label}", label.strip()) for label in labels]
        return (self.model.embed_texts(texts) @ image_vectors.T).astype(np.float64)


def check_simulator_spec(spec: str) -> str:
    """The spec, stripped, if :func:`load_simulator` knows its kind (nothing is loaded)."""
    spec = spec.strip()
    if spec in (EXACT, TINY_CLIP) or (spec.startswith(CLIP_PREFIX) and spec[len(CLIP_PREFIX) :]):
        return spec
    raise SimulatorError(f"unknown simulator {spec!r}; valid: {'; '.join(SIMULATOR_SPECS)}")


def load_simulator(spec: str, device: str = "auto") -> Simulator:
    """The simulator a spec names (:data:`SIMULATOR_SPECS`); image-text models load here."""
    spec = check_simulator_spec(spec)
    if spec == EXACT:
        return ExactToySimulator()
    model = ImageTextModel(spec.removeprefix(CLIP_PREFIX), device)
    return ImageTextSimulator(spec, model)
