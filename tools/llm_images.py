"""Images for vision-capable LLMs: the scoreboard's extremes, small and labelled.

With a variant's ``llm_images`` = N (``line run --llm-images N``), every proposal request (the
paper strategy's ``propose``, every turn of the agentic strategy) carries the N images of the
concepts measured so far that activate the unit most and the N that activate it least, each
after a text block that names its concept and the unit's activation on it. The images are
thumbnails of at most :data:`LLM_IMAGE_PIXELS` pixels a side, sent as LangChain standard image
content blocks (``{"type": "image", "base64": ..., "mime_type": "image/png"}``), which every
LangChain chat model converts to its provider's format (``ChatOpenAI``: an ``image_url`` part
with a data URL). With N = 0 nothing here runs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from tools.client import InferenceClient, LineServerError

LLM_IMAGE_PIXELS = 128
"""Longest side of an image shown to the LLM (a vision model's smallest tile is larger)."""
IMAGE_MIME = "image/png"


@dataclass(frozen=True)
class ShownImage:
    """One image shown to the LLM: its id, concept, the unit's activation on it, and where it
    sits (``end``: ``most`` or ``least`` activating; ``rank``: 1 for the extreme one)."""

    image_id: str
    concept: str
    activation: float
    end: str
    rank: int

    def label(self) -> str:
        """The text block before the image (no ``concept: score`` line, which a reader of
        the transcript would take for a scoreboard entry)."""
        return (
            f"{self.end} activating image {self.rank}, concept '{self.concept}', "
            f"activation {self.activation:.4f}"
        )


def extreme_images(entries: Sequence[Mapping[str, Any]], count: int) -> list[ShownImage]:
    """The ``count`` images of the scoreboard's entries that activate the unit most (highest
    first), then the ``count`` that activate it least (lowest first); each image once, ties in
    the order measured."""
    values: dict[str, tuple[float, str]] = {}
    for entry in entries:
        for image_id, value in zip(
            entry.get("image_ids") or (), entry.get("activations") or (), strict=False
        ):
            if image_id not in values and math.isfinite(float(value)):
                values[image_id] = (float(value), str(entry.get("concept", "")))
    ranked = sorted(values, key=lambda image_id: -values[image_id][0])
    top = ranked[:count]
    bottom = [image_id for image_id in reversed(ranked) if image_id not in top][:count]
    return [
        ShownImage(image_id, values[image_id][1], values[image_id][0], end, rank)
        for end, ids in (("most", top), ("least", bottom))
        for rank, image_id in enumerate(ids, 1)
    ]


def thumbnail_png(data: bytes, size: int = LLM_IMAGE_PIXELS) -> bytes:
    """An image file's bytes as an RGB PNG of at most ``size`` pixels a side."""
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=True)
    return out.getvalue()


async def encoded_thumbnails(
    client: InferenceClient, image_ids: Sequence[str], cache: MutableMapping[str, str]
) -> dict[str, str]:
    """Base64 PNG thumbnails of stored images, fetched once per ``cache`` (a neuron's); an image
    the server no longer has is left out."""
    missing = [image_id for image_id in dict.fromkeys(image_ids) if image_id not in cache]

    async def fetch(image_id: str) -> bytes | None:
        try:
            return await client.image_png(image_id)
        except LineServerError:
            return None

    files = await asyncio.gather(*(fetch(image_id) for image_id in missing))

    def encode() -> list[tuple[str, str]]:
        return [
            (image_id, base64.b64encode(thumbnail_png(data)).decode("ascii"))
            for image_id, data in zip(missing, files, strict=True)
            if data is not None
        ]

    cache.update(await asyncio.to_thread(encode))
    return {image_id: cache[image_id] for image_id in image_ids if image_id in cache}


def image_blocks(shown: Sequence[ShownImage], encoded: Mapping[str, str]) -> list[dict[str, Any]]:
    """Content blocks: a caption, then a label and a standard image block per image."""
    kept = [image for image in shown if image.image_id in encoded]
    if not kept:
        return []
    most = sum(image.end == "most" for image in kept)
    blocks: list[dict[str, Any]] = [
        {
            "type": "text",
            "text": f"Images of the concepts measured so far, each after its label. First the "
            f"{most} that activate the unit most, then the {len(kept) - most} that activate "
            "it least.",
        }
    ]
    for image in kept:
        blocks.append({"type": "text", "text": image.label()})
        blocks.append({"type": "image", "base64": encoded[image.image_id], "mime_type": IMAGE_MIME})
    return blocks


async def scoreboard_image_blocks(
    client: InferenceClient,
    entries: Sequence[Mapping[str, Any]],
    count: int,
    cache: MutableMapping[str, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The content blocks that show the scoreboard's ``count`` most and least activating
    images, and a record of each image shown (for the LLM log); both empty when nothing is
    measured yet or ``count`` is 0."""
    if count < 1:
        return [], []
    shown = extreme_images(entries, count)
    if not shown:
        return [], []
    encoded = await encoded_thumbnails(client, [image.image_id for image in shown], cache)
    blocks = image_blocks(shown, encoded)
    return blocks, [asdict(image) for image in shown if image.image_id in encoded]


def is_image_block(block: object) -> bool:
    """Whether a content block is an image (standard, or OpenAI's ``image_url``)."""
    return isinstance(block, Mapping) and block.get("type") in ("image", "image_url")


def count_image_blocks(messages: Sequence[Any]) -> int:
    """Image blocks in the messages' contents."""
    return sum(
        sum(is_image_block(block) for block in content)
        for content in (getattr(message, "content", None) for message in messages)
        if isinstance(content, list)
    )


def without_image_data(content: Any) -> Any:
    """A message content for logs: image blocks keep their type and MIME type, and their
    base64 data gives way to its length."""
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if isinstance(block, Mapping) and block.get("type") == "image":
            data = str(block.get("base64") or "")
            out.append(
                {"type": "image", "mime_type": block.get("mime_type"), "base64_chars": len(data)}
            )
        else:
            out.append(block)
    return out
