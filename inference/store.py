"""Content-addressed image store and the activation cache, both living in one folder.

An image's id is the SHA-256 of everything that determines its pixels, so the same request is
never rendered twice, across neurons, runs and server restarts. Activations are cached per
(image id, target, layer) as whole layer vectors, so reading another unit costs no model run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from inference.protocols import EditSettings, RenderSettings

IMAGE_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class InvalidImageIdError(ValueError):
    """An image id that is not 64 lowercase hex characters."""


class StoreWriteError(OSError):
    """The store folder cannot be written (disk full, read-only, permissions)."""


def default_cache_dir() -> Path:
    """Where LINE keeps built models and the default store: ``$LINE_CACHE`` or ``~/.cache/line``."""
    return Path(os.environ.get("LINE_CACHE", Path.home() / ".cache" / "line"))


def default_store_dir() -> Path:
    """The image store of a server started without ``--store``: ``$LINE_CACHE/store``."""
    return default_cache_dir() / "store"


def image_path(folder: Path, image_id_: str) -> Path:
    """Where a store folder keeps an image: ``folder/images/<id[:2]>/<id>.png``."""
    return Path(folder) / "images" / image_id_[:2] / f"{image_id_}.png"


def image_id(generator_identity: str, prompt: str, seed: int, settings: RenderSettings) -> str:
    """The content address of an image: a hash of everything that determines its pixels."""
    key = {
        "generator": generator_identity,
        "prompt": prompt,
        "seed": seed,
        "width": settings.width,
        "height": settings.height,
        "steps": settings.steps,
        "guidance": float(settings.guidance),
    }
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def edit_id(
    editor_identity: str, source_id: str, instruction: str, seed: int, settings: EditSettings
) -> str:
    """The content address of an edited image: a hash of the editor, the source image, the
    instruction, the seed and the settings."""
    key = {
        "editor": editor_identity,
        "source": source_id,
        "instruction": instruction,
        "seed": seed,
        "steps": settings.steps,
        "guidance": float(settings.guidance),
    }
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"edit:" + canonical.encode("utf-8")).hexdigest()


def upload_id(data: bytes) -> str:
    """The id of an uploaded image file: a hash of its bytes."""
    return hashlib.sha256(b"upload:" + data).hexdigest()


def decode_image(data: bytes) -> Image.Image:
    """An RGB image from file bytes; ``ValueError`` when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise ValueError(f"not a readable image file ({error})") from error
    except (SyntaxError, TypeError, IndexError, struct.error) as error:  # corrupt files, too
        raise ValueError(f"not a readable image file ({type(error).__name__}: {error})") from error


def check_image_id(value: str) -> str:
    """Return the id if it is well formed, else raise ``InvalidImageIdError``."""
    if not isinstance(value, str) or not IMAGE_ID_PATTERN.match(value):
        raise InvalidImageIdError(
            f"malformed image id {str(value)[:80]!r}: ids are 64 lowercase hex characters as "
            "returned by POST /v1/images"
        )
    return value


class ImageStore:
    """PNG files under ``folder/images/<id[:2]>/<id>.png``, written atomically.

    Each PNG carries its provenance (generator, prompt, seed, settings) as text chunks.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.images = self.folder / "images"
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreWriteError(
                f"cannot create the image store at {str(self.images)!r}: {error}; pass a "
                "writable folder with --store"
            ) from error

    def path(self, image_id_: str) -> Path:
        """Where an image lives (whether or not it exists yet)."""
        check_image_id(image_id_)
        return image_path(self.folder, image_id_)

    def has(self, image_id_: str) -> bool:
        """Whether the image is in the store."""
        return self.path(image_id_).is_file()

    @staticmethod
    def encode_png(image: Image.Image, metadata: dict[str, object]) -> bytes:
        """The PNG bytes of an image with its provenance as a text chunk."""
        info = PngImagePlugin.PngInfo()
        info.add_text("line", json.dumps(metadata, sort_keys=True))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
        return buffer.getvalue()

    def put(self, image_id_: str, image: Image.Image, metadata: dict[str, object]) -> None:
        """Write an image atomically: a reader sees the whole file or none."""
        self.put_png(image_id_, self.encode_png(image, metadata))

    def put_png(self, image_id_: str, png: bytes) -> None:
        """Write encoded PNG bytes atomically."""
        target = self.path(image_id_)
        temporary = None
        try:
            target.parent.mkdir(exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
            with os.fdopen(handle, "wb") as stream:
                stream.write(png)
            os.replace(temporary, target)
        except OSError as error:
            if temporary and os.path.exists(temporary):
                os.unlink(temporary)
            raise StoreWriteError(
                f"cannot write image {image_id_} to the store {str(self.folder)!r}: {error}. "
                "Free disk space or pass a writable folder with --store"
            ) from error

    def read_bytes(self, image_id_: str) -> bytes:
        """The PNG file's bytes; ``FileNotFoundError`` if the id is not stored."""
        return self.path(image_id_).read_bytes()

    def load(self, image_id_: str) -> Image.Image:
        """The stored image as an RGB PIL image."""
        with Image.open(self.path(image_id_)) as image:
            return image.convert("RGB")

    def metadata(self, image_id_: str) -> dict[str, object]:
        """The provenance saved with the image (``{}`` for a PNG without it)."""
        with PngImagePlugin.PngImageFile(self.path(image_id_)) as image:
            return json.loads(image.text.get("line", "{}"))


class ActivationCache:
    """Layer vectors per (image id, target, layer): SQLite on disk, an in-memory LRU in front
    (at most ``memory_entries`` vectors and ``memory_bytes`` bytes)."""

    def __init__(
        self, path: str | Path, memory_entries: int = 100_000, memory_bytes: int = 1 << 30
    ) -> None:
        self.path = Path(path)
        self._memory: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._memory_entries = memory_entries
        self._memory_bytes = memory_bytes  # an SAE's latents per image are d_sae floats
        self._held_bytes = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS activations (image_id TEXT, target TEXT, layer TEXT, "
            "vector BLOB, PRIMARY KEY (image_id, target, layer))"
        )
        self._db.commit()

    def _remember(self, key: tuple[str, str, str], vector: np.ndarray) -> None:
        previous = self._memory.get(key)
        if previous is not None:
            self._held_bytes -= previous.nbytes
        self._memory[key] = vector
        self._memory.move_to_end(key)
        self._held_bytes += vector.nbytes
        while self._memory and (
            len(self._memory) > self._memory_entries or self._held_bytes > self._memory_bytes
        ):
            self._held_bytes -= self._memory.popitem(last=False)[1].nbytes

    def get_many(self, target: str, layer: str, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``image_ids`` (missing ids are left out)."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            missing = []
            for image_id_ in image_ids:
                key = (image_id_, target, layer)
                if key in self._memory:
                    self._memory.move_to_end(key)
                    found[image_id_] = self._memory[key]
                else:
                    missing.append(image_id_)
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT image_id, vector FROM activations WHERE target = ? AND layer = ? "
                    f"AND image_id IN ({marks})",
                    (target, layer, *chunk),
                ).fetchall()
                for image_id_, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    found[image_id_] = vector
                    self._remember((image_id_, target, layer), vector)
        return found

    def put_many(self, target: str, layer: str, vectors: dict[str, np.ndarray]) -> None:
        """Cache whole layer vectors."""
        rows = []
        with self._lock:
            for image_id_, vector in vectors.items():
                vector = np.ascontiguousarray(vector, dtype=np.float32)
                self._remember((image_id_, target, layer), vector)
                rows.append((image_id_, target, layer, vector.tobytes()))
            try:
                self._db.executemany("INSERT OR REPLACE INTO activations VALUES (?, ?, ?, ?)", rows)
                self._db.commit()
            except sqlite3.OperationalError as error:
                self._db.rollback()
                raise StoreWriteError(
                    f"cannot write activations to {str(self.path)!r}: {error}"
                ) from error

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
