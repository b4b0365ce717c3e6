"""A control folder in classes for the toy world: its stand-in for real photos of each class.

``line eval fidelity`` compares a neuron's activations on generated images of its label with
those on real images of the same class. In the toy world both come from ``procedural:shapes``,
so the "real" images are drawn from a different scene distribution than concept renders: two
small objects of the class among distractors, on a named background, at 64x64, where a
concept render ("realistic photo of a close up of red") shows one medium object on the default
background at the generator's size.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from toyworld.procedural import render_prompt
from toyworld.vocabulary import COLOURS, SHAPES, TEXTURES

REAL_TEMPLATE = "two small {concept} objects on a {background} background"
BACKGROUNDS = ("gray", "white", "black")
REAL_SIZE = 64
DEFAULT_CLASSES = (*COLOURS, *SHAPES, *(t for t in TEXTURES if t != "plain"))
"""Every colour, shape and fill (``plain`` aside): 21 classes."""


def toy_class_prompt(concept: str, index: int) -> str:
    """The prompt of a class's ``index``-th "real" image (backgrounds take turns)."""
    background = BACKGROUNDS[index % len(BACKGROUNDS)]
    return REAL_TEMPLATE.format(concept=concept, background=background)


def write_toy_class_folders(
    root: Path, classes: Sequence[str] = DEFAULT_CLASSES, per_class: int = 10, seed: int = 0
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


def main() -> None:
    """``python -m testing.toy_classes OUT [CLASS ...] [--per-class N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the class folders into")
    parser.add_argument("classes", nargs="*", help="classes [default: every colour, shape, fill]")
    parser.add_argument("--per-class", type=int, default=10, help="images per class")
    args = parser.parse_args()
    root = write_toy_class_folders(args.out, args.classes or DEFAULT_CLASSES, args.per_class)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
