"""A control folder in classes for the toy world: its stand-in for real photos of each class.

``line eval fidelity`` compares a neuron's activations on generated images of its label with
those on real images of the same class. In the toy world both come from ``procedural:shapes``,
so the "real" images are drawn from a different scene distribution than concept renders: two
small objects of the class among distractors, on a named background, at 64x64, where a
concept render ("realistic photo of a close up of red") shows one medium object on the default
background at the generator's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from inference.toyworld.procedural import render_prompt

REAL_TEMPLATE = "two small {concept} objects on a {background} background"
BACKGROUNDS = ("gray", "white", "black")
REAL_SIZE = 64


def toy_class_prompt(concept: str, index: int) -> str:
    """The prompt of a class's ``index``-th "real" image (backgrounds take turns)."""
    background = BACKGROUNDS[index % len(BACKGROUNDS)]
    return REAL_TEMPLATE.format(concept=concept, background=background)


def write_toy_class_folders(
    root: Path, classes: Sequence[str], per_class: int = 8, seed: int = 0
) -> Path:
    """Write ``root/<class>/<i>.png`` for each class (spaces become underscores); ``root``."""
    for concept in classes:
        folder = Path(root) / concept.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            prompt = toy_class_prompt(concept, index)
            image = render_prompt(prompt, seed * 100_000 + index, REAL_SIZE, REAL_SIZE).image
            image.save(folder / f"{index}.png")
    return Path(root)
