"""Control sets: natural images (a folder, flat or in class folders) or the toy world's scenes.

A control set is read lazily and sent to the server in batches. Files that are not readable
images are skipped and reported, never fatal. The server's activation cache keeps every image's
whole layer vector; on top of it, ``cached_control_activations`` keeps the whole control matrix
of a (server, target, layer, control set) in one file, so a repeated evaluation sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.wire import RenderOptions
from tools.client import InferenceClient, LineServerError
from toyworld.controls import random_toy_concepts, random_toy_scene_prompts

log = logging.getLogger("line.control")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
TOY_CONTROL_SIZE = 200
RANDOM_CONCEPT_CONTROL_SIZE = 100
"""Images in the control set of a run without ``--control``
(:meth:`ControlSet.random_concepts`)."""
TOY_GENERATOR_FAMILY = "procedural:"
EVERYDAY_CONCEPTS = (
    "dog", "cat", "horse", "bird", "fish", "butterfly", "cow", "elephant", "lion", "rabbit",
    "car", "bicycle", "bus", "airplane", "boat", "train", "truck", "motorcycle", "tractor",
    "rocket", "chair", "table", "bed", "sofa", "lamp", "clock", "door", "window", "stairs",
    "bookshelf", "apple", "banana", "bread", "pizza", "cake", "cup of coffee", "bowl of soup",
    "cheese", "carrot", "strawberry", "tree", "flower", "mountain", "beach", "forest", "river",
    "desert", "waterfall", "snowy field", "cloudy sky", "house", "bridge", "castle", "church",
    "skyscraper", "street", "kitchen", "bedroom", "office", "classroom", "person", "child",
    "face", "hand", "crowd", "soccer player", "chef", "musician", "dancer", "doctor",
    "guitar", "piano", "book", "laptop", "telephone", "camera", "umbrella", "backpack", "shoe",
    "hat", "ball", "kite", "bottle", "scissors", "key", "candle", "mirror", "vase", "basket",
    "toy", "brick wall", "wooden floor", "metal fence", "glass jar", "woven fabric",
    "stone path", "rope", "paper", "leaf", "feather",
)  # fmt: skip
"""Concepts of the control set of a run without ``--control`` for any generator outside the toy
world: a hundred everyday objects, animals, scenes, people and materials."""
MIN_CONTROL_IMAGES = 10
"""Fewest usable control images a run accepts: the confirmation's AUC needs a spread."""
CACHE_FORMAT = 1


class ControlSetError(ValueError):
    """A control set that cannot be read."""


@dataclass(frozen=True)
class ControlImage:
    """One control image: a file (natural images) or a prompt and seed (toy scenes)."""

    label: str | None  # class name, or None for a flat folder
    path: Path | None = None
    prompt: str | None = None
    seed: int | None = None

    def file(self) -> Path:
        """The image's file (natural images); a toy scene has none."""
        if self.path is None:
            raise ControlSetError(f"control image {self.prompt!r} is a toy scene, not a file")
        return self.path

    def scene(self) -> tuple[str, int]:
        """The image's prompt and seed (toy scenes); a file has none."""
        if self.prompt is None or self.seed is None:
            raise ControlSetError(f"control image {str(self.path)!r} is a file, not a toy scene")
        return self.prompt, self.seed


@dataclass(frozen=True)
class SkippedImage:
    """A control file that could not be used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ControlSet:
    """A named list of control images."""

    name: str
    images: tuple[ControlImage, ...]

    @property
    def classes(self) -> list[str]:
        """Class names in order of first appearance (empty for a flat folder or toy scenes)."""
        return list(dict.fromkeys(image.label for image in self.images if image.label))

    @property
    def is_toy(self) -> bool:
        """Whether the images are rendered from prompts rather than read from files."""
        return bool(self.images) and self.images[0].path is None

    @classmethod
    def from_folder(cls, folder: str | Path, per_class: int | None = None) -> ControlSet:
        """A flat folder of images, or class folders of images (ImageNet / Places365 layout).

        Only file names are listed here; the files are read batch by batch when measured.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ControlSetError(
                f"control set {str(root)!r} is not a folder; pass a folder of images (flat or in "
                "class folders) or 'toy'"
            )
        files = sorted(p for p in root.iterdir() if _is_image_name(p))
        images = [ControlImage(None, path=path) for path in files]
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            members = sorted(p for p in class_dir.iterdir() if _is_image_name(p))[:per_class]
            label = class_dir.name.replace("_", " ")
            images += [ControlImage(label, path=path) for path in members]
        if not images:
            raise ControlSetError(
                f"control set {str(root)!r} holds no image files (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))} directly inside it or one folder down)"
            )
        return cls(str(root), tuple(images))

    @classmethod
    def toy(cls, count: int = TOY_CONTROL_SIZE, seed: int = 0) -> ControlSet:
        """The toy world's control set: random scenes with fixed seeds."""

        pairs = random_toy_scene_prompts(count, seed)
        name = "toy" if (count, seed) == (TOY_CONTROL_SIZE, 0) else f"toy:{count}"
        return cls(name, tuple(ControlImage(None, prompt=p, seed=s) for p, s in pairs))

    @classmethod
    def random_concepts(
        cls,
        generator: str | None,
        image_prompt: Callable[[str, int], str],
        count: int = RANDOM_CONCEPT_CONTROL_SIZE,
    ) -> ControlSet:
        """The control set of a run without ``--control``: ``count`` random concepts the run's
        generator provides, each rendered through the variant's image prompt on a fixed seed,
        so control images are composed like concept images. The toy world's generators give
        random attribute phrases (:func:`random_toy_concepts`); any other generator the
        everyday concepts of :data:`EVERYDAY_CONCEPTS`."""
        if (generator or "").startswith(TOY_GENERATOR_FAMILY):
            pairs = random_toy_concepts(count, 0)
            name = f"random-concepts:toy:{count}"
        else:
            seeds = [seed for _prompt, seed in random_toy_concepts(count, 1)]
            pairs = [
                (EVERYDAY_CONCEPTS[i % len(EVERYDAY_CONCEPTS)], s) for i, s in enumerate(seeds)
            ]
            name = f"random-concepts:everyday:{count}"
        images = [ControlImage(None, prompt=image_prompt(c, s), seed=s) for c, s in pairs]
        return cls(name, tuple(images))

    @classmethod
    def resolve(cls, spec: str) -> ControlSet:
        """``toy``, ``toy:N`` (N random toy scenes) or a folder path."""
        if spec == "toy":
            return cls.toy()
        if spec.startswith("toy:"):
            count = spec.removeprefix("toy:")
            if not count.isdigit() or int(count) < 2:
                raise ControlSetError(
                    f"cannot read control set {spec!r}: write toy:N with N at least 2, e.g. toy:200"
                )
            return cls.toy(int(count))
        return cls.from_folder(spec)

    def fingerprint(self, generator: str | None = None) -> str:
        """A hash of what the images are: file paths, sizes and times, or prompts, seeds and the
        generator that renders them. Changing a file changes the fingerprint."""
        digest = hashlib.sha256(f"control-set|{self.name}|".encode())
        if self.is_toy:
            digest.update(f"generator={generator}|".encode())
        for image in self.images:
            if image.path is None:
                item = [image.label, image.prompt, image.seed]
            else:
                try:
                    stat = image.path.stat()
                    item = [image.label, str(image.path), stat.st_size, stat.st_mtime_ns]
                except OSError:
                    item = [image.label, str(image.path), "missing"]
            digest.update(json.dumps(item).encode() + b"\n")
        return digest.hexdigest()[:32]


@dataclass(frozen=True)
class ControlActivations:
    """A layer read on a control set: a row per usable image, a column per unit.

    ``kept`` indexes ``ControlSet.images`` for each row; ``labels`` are those images' classes.
    """

    values: np.ndarray
    units: list[int]
    kept: list[int]
    labels: list[str | None]
    skipped: list[SkippedImage] = field(default_factory=list)
    cached: bool = False

    def unit(self, unit: int) -> np.ndarray:
        """The control activations of one unit."""
        try:
            return self.values[:, self.units.index(unit)]
        except ValueError:
            raise ControlSetError(
                f"unit {unit} was not measured on the control set (measured: "
                f"{_describe_units(self.units)})"
            ) from None


def _is_image_name(path: Path) -> bool:
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _describe_units(units: list[int]) -> str:
    if units and units == list(range(units[0], units[-1] + 1)):
        return f"{units[0]}-{units[-1]}"
    return ", ".join(map(str, units))


async def _store_batch(
    client: InferenceClient, chunk: Sequence[tuple[int, ControlImage]], generator: str | None
) -> tuple[list[int], list[str], list[SkippedImage]]:
    """Put one batch on the server; (indices kept, their ids, skipped files)."""
    if chunk[0][1].path is None:
        scenes = [image.scene() for _, image in chunk]
        rendered = await client.generate_images(
            [prompt for prompt, _ in scenes],
            [seed for _, seed in scenes],
            RenderOptions(generator=generator),
        )
        return [index for index, _ in chunk], [image.id for image in rendered], []
    readable: list[tuple[int, Path, bytes]] = []
    skipped: list[SkippedImage] = []
    for index, image in chunk:
        path = image.file()
        try:
            readable.append((index, path, path.read_bytes()))
        except OSError as error:
            skipped.append(SkippedImage(str(path), f"cannot read the file ({error})"))
    if not readable:
        return [], [], skipped
    try:
        ids = await client.upload_images(
            [data for *_, data in readable], [path.name for _, path, _ in readable]
        )
        return [index for index, *_ in readable], ids, skipped
    except LineServerError as error:
        if error.status not in (400, 413):
            raise
    # The server refused the batch: one file in it is bad. Find which, one by one.
    kept: list[int] = []
    ids = []
    for index, path, data in readable:
        try:
            ids += await client.upload_images([data], [path.name])
            kept.append(index)
        except LineServerError as error:
            if error.status not in (400, 413):
                raise
            skipped.append(SkippedImage(str(path), error.message))
    return kept, ids, skipped


async def store_control_images(
    client: InferenceClient, control: ControlSet, generator: str | None = None, batch: int = 64
) -> list[str]:
    """Put every control image on the server (upload files, render toy scenes); their ids.

    Unreadable files are skipped (and logged), so the ids may be fewer than the images.
    """
    ids: list[str] = []
    indexed = list(enumerate(control.images))
    for start in range(0, len(indexed), batch):
        chunk = indexed[start : start + batch]
        _, chunk_ids, skipped = await _store_batch(client, chunk, generator)
        ids += chunk_ids
        for item in skipped:
            log.warning("control image %s skipped: %s", item.path, item.reason)
    return ids


async def measure_control(
    client: InferenceClient,
    control: ControlSet,
    target: str,
    layer: str,
    units: Sequence[int] | None = None,
    generator: str | None = None,
    batch: int = 64,
) -> ControlActivations:
    """Read a layer on the control set, batch by batch; bad files are skipped and listed."""
    kept: list[int] = []
    skipped: list[SkippedImage] = []
    rows: list[np.ndarray] = []
    measured_units: list[int] = list(units) if units is not None else []
    indexed = list(enumerate(control.images))
    for start in range(0, len(indexed), batch):
        chunk_kept, ids, chunk_skipped = await _store_batch(
            client, indexed[start : start + batch], generator
        )
        skipped += chunk_skipped
        if not ids:
            continue
        result = await client.activations(target, layer, ids, units)
        measured_units = list(result.units)
        rows.append(result.values)
        kept += chunk_kept
    if not rows:
        raise ControlSetError(
            f"no image of control set {control.name!r} could be read ({len(skipped)} skipped, "
            f"e.g. {skipped[0].path}: {skipped[0].reason}); check the files or pass another "
            "--control"
        )
    for item in skipped:
        log.warning("control image %s skipped: %s", item.path, item.reason)
    return ControlActivations(
        values=np.concatenate(rows, axis=0),
        units=measured_units,
        kept=kept,
        labels=[control.images[index].label for index in kept],
        skipped=skipped,
    )


async def control_activations(
    client: InferenceClient,
    control: ControlSet,
    target: str,
    layer: str,
    units: Sequence[int] | None = None,
    generator: str | None = None,
    batch: int = 64,
) -> np.ndarray:
    """Activations ``[images, units]`` of a layer on the control set (all units by default).

    Rows are the usable images only; use ``measure_control`` for their labels and the skipped
    files.
    """
    measured = await measure_control(client, control, target, layer, units, generator, batch)
    return measured.values


def control_cache_key(
    server: str, target: str, layer: str, control: ControlSet, generator: str | None = None
) -> str:
    """The cache key of a control matrix: (server store or URL, target, layer, control set)."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "server": server,
            "target": target,
            "layer": layer,
            "control": control.fingerprint(generator),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_file(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"control-{key}.npz"


def _load_cached(path: Path) -> ControlActivations | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            values = np.asarray(data["values"])
    except (OSError, ValueError, KeyError) as error:
        log.warning("ignoring unreadable control cache %s (%s)", path, error)
        return None
    return ControlActivations(
        values=values,
        units=[int(unit) for unit in meta["units"]],
        kept=[int(index) for index in meta["kept"]],
        labels=meta["labels"],
        skipped=[SkippedImage(**item) for item in meta["skipped"]],
        cached=True,
    )


def _save_cached(path: Path, measured: ControlActivations, description: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **description,
        "units": measured.units,
        "kept": measured.kept,
        "labels": measured.labels,
        "skipped": [{"path": item.path, "reason": item.reason} for item in measured.skipped],
    }
    partial = path.with_name(path.name + ".part.npz")
    np.savez(partial, values=measured.values, meta=np.asarray(json.dumps(meta)))
    partial.replace(path)


async def cached_control_activations(
    client: InferenceClient,
    control: ControlSet,
    target: str,
    layer: str,
    cache_dir: str | Path,
    server: str | None = None,
    generator: str | None = None,
    batch: int = 64,
) -> ControlActivations:
    """All units of a layer on the control set, from ``cache_dir`` when measured before.

    ``server`` names what the activations come from (a local server's store folder, or the
    server URL; the client's URL by default). A cache hit sends nothing to the server.
    """
    server = server or client.base_url
    key = control_cache_key(server, target, layer, control, generator if control.is_toy else None)
    path = _cache_file(Path(cache_dir), key)
    if path.is_file():
        cached = _load_cached(path)
        if cached is not None and len(cached.kept) == len(cached.values):
            return cached
    measured = await measure_control(client, control, target, layer, None, generator, batch)
    description = {"server": server, "target": target, "layer": layer, "control": control.name}
    try:
        _save_cached(path, measured, description)
    except OSError as error:
        log.warning("cannot write the control cache %s (%s); continuing without it", path, error)
    return measured
