"""Control sets: natural images (a folder, flat or in class folders) or the toy world's scenes.

A control set is read lazily and sent to the server in batches; the server's activation cache
keeps every image's whole layer vector, so a (target, layer, control set) is measured once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.client import LineClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
TOY_CONTROL_SIZE = 200


class ControlSetError(ValueError):
    """A control set that cannot be read."""


@dataclass(frozen=True)
class ControlImage:
    """One control image: a file (natural images) or a prompt and seed (toy scenes)."""

    label: str | None  # class name, or None for a flat folder
    path: Path | None = None
    prompt: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ControlSet:
    """A named list of control images."""

    name: str
    images: tuple[ControlImage, ...]

    @property
    def classes(self) -> list[str]:
        """Class names in order of first appearance (empty for a flat folder or toy scenes)."""
        return list(dict.fromkeys(image.label for image in self.images if image.label))

    @classmethod
    def from_folder(cls, folder: str | Path, per_class: int | None = None) -> ControlSet:
        """A flat folder of images, or class folders of images (ImageNet / Places365 layout)."""
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ControlSetError(
                f"control set {str(root)!r} is not a folder; pass a folder of images (flat or in "
                "class folders) or 'toy'"
            )
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [ControlImage(None, path=path) for path in files]
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            members = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[
                :per_class
            ]
            label = class_dir.name.replace("_", " ")
            images += [ControlImage(label, path=path) for path in members]
        if not images:
            raise ControlSetError(f"control set {str(root)!r} holds no image files")
        return cls(str(root), tuple(images))

    @classmethod
    def toy(cls, count: int = TOY_CONTROL_SIZE, seed: int = 0) -> ControlSet:
        """The toy world's control set: random scenes with fixed seeds."""
        from tools.toyworld.controls import random_toy_scene_prompts

        pairs = random_toy_scene_prompts(count, seed)
        return cls("toy", tuple(ControlImage(None, prompt=p, seed=s) for p, s in pairs))

    @classmethod
    def resolve(cls, spec: str) -> ControlSet:
        """``toy`` or a folder path."""
        return cls.toy() if spec == "toy" else cls.from_folder(spec)


async def store_control_images(
    client: LineClient, control: ControlSet, generator: str | None = None, batch: int = 64
) -> list[str]:
    """Put every control image on the server (upload files, render toy scenes); their ids."""
    ids: list[str] = []
    for start in range(0, len(control.images), batch):
        chunk = control.images[start : start + batch]
        if chunk[0].path is None:
            rendered = await client.generate_images(
                [image.prompt for image in chunk],
                [image.seed for image in chunk],
                generator=generator,
            )
            ids += [image.id for image in rendered]
        else:
            files = [image.path.read_bytes() for image in chunk]
            ids += await client.upload_images(files, [image.path.name for image in chunk])
    return ids


async def control_activations(
    client: LineClient,
    control: ControlSet,
    target: str,
    layer: str,
    units: Sequence[int] | None = None,
    generator: str | None = None,
    batch: int = 64,
) -> np.ndarray:
    """Activations ``[images, units]`` of a layer on the control set (all units by default)."""
    ids = await store_control_images(client, control, generator, batch)
    rows = []
    for start in range(0, len(ids), batch):
        result = await client.activations(target, layer, ids[start : start + batch], units)
        rows.append(result.values)
    return np.concatenate(rows, axis=0)
