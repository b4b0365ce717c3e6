"""Thumbnails of the run's images, written once into the report folder.

Images come from the image store (``<store>/images/<id[:2]>/<id>.png``); when one is not there
and the run used a server, from that server's ``GET /v1/images/{id}``. A thumbnail that exists
is never written again, so rebuilding a report (or the live viewer) costs nothing for them.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from inference.store import IMAGE_ID_PATTERN, image_path

log = logging.getLogger("line.report")

THUMBNAIL_SIZE = 160
"""Longest side of a thumbnail, in pixels."""


def thumbnail_path(image_id: str) -> str:
    """A thumbnail's path relative to the report folder."""
    return f"thumbs/{image_id[:2]}/{image_id}.jpg"


class ImageSource:
    """Reads original images from a store folder, falling back to the run's LINE server(s)."""

    def __init__(
        self, store: Path, server: str | list[str] | None = None, timeout_s: float = 5.0
    ) -> None:
        self.store = Path(store)
        urls = [server] if isinstance(server, str) else list(server or [])
        self.servers = [url.rstrip("/") for url in urls if url]
        self.timeout_s = timeout_s
        self._down: set[str] = set()

    def read(self, image_id: str) -> bytes | None:
        """The image file's bytes, or None when neither the store nor the server has it."""
        path = image_path(self.store, image_id)
        try:
            return path.read_bytes()
        except OSError:
            pass
        import httpx

        headers = {}
        token = os.environ.get("LINE_SERVER_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for server in self.servers:  # a pool's images live on the server that rendered them
            if server in self._down:
                continue
            try:
                response = httpx.get(
                    f"{server}/v1/images/{image_id}", headers=headers, timeout=self.timeout_s
                )
            except httpx.HTTPError:
                self._down.add(server)  # an unreachable server is not asked again per image
                continue
            if response.status_code == 200:
                return response.content
        return None


def write_thumbnail(data: bytes, target: Path, size: int = THUMBNAIL_SIZE) -> bool:
    """Write a JPEG thumbnail atomically; False when the bytes are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            picture = image.convert("RGB")
    except (OSError, Image.DecompressionBombError):
        return False
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            picture.save(stream, format="JPEG", quality=85)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True


class ThumbnailWriter:
    """Makes sure thumbnails exist in a report folder; remembers which images are missing."""

    def __init__(self, report_dir: Path, source: ImageSource, workers: int | None = None) -> None:
        self.report_dir = Path(report_dir)
        self.source = source
        self.workers = workers or min(8, (os.cpu_count() or 2) + 2)

    def _make(self, image_id: str) -> bool:
        target = self.report_dir / thumbnail_path(image_id)
        if target.is_file():
            return True
        data = self.source.read(image_id)
        return data is not None and write_thumbnail(data, target)

    def ensure(self, image_ids: Iterable[str]) -> set[str]:
        """Write the missing thumbnails; returns the ids that have one afterwards."""
        wanted = sorted({i for i in image_ids if IMAGE_ID_PATTERN.match(i)})
        todo = [i for i in wanted if not (self.report_dir / thumbnail_path(i)).is_file()]
        available = set(wanted) - set(todo)
        if todo:
            with ThreadPoolExecutor(self.workers) as pool:
                for image_id, made in zip(todo, pool.map(self._make, todo), strict=True):
                    if made:
                        available.add(image_id)
        return available
