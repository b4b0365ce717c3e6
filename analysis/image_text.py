"""Image-text similarity with a CLIP-style model, run in the calling process.

:class:`ImageTextModel` loads any ``transformers`` model that has ``get_image_features`` and
``get_text_features`` (CLIP, SigLIP, ...) with its processor, by hub id or local folder, only
when a user names it. ``tiny-clip`` is a random-weight CLIP built offline from configs (its
tokenizer and text settings are tiny-sd's) for tests and smoke runs: **its similarities are
noise**.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from analysis.simulator_specs import TINY_CLIP
from inference.registry import resolve_device

if TYPE_CHECKING:  # transformers and torch are imported when a model is first loaded
    from transformers import PreTrainedModel, ProcessorMixin

TINY_CLIP_IMAGE_SIZE = 32


class ImageTextModelError(ValueError):
    """A model that cannot be loaded or is not an image-text model; the message says why."""


def build_tiny_clip(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random-weight CLIP (2-layer text and vision towers, 32x32 images) and its processor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
    )

    from inference.generators.tiny_sd import ensure_tiny_sd  # torch and diffusers, on use

    sd_folder = ensure_tiny_sd()
    tokenizer = CLIPTokenizer.from_pretrained(str(sd_folder / "tokenizer"))
    text_config = CLIPTextConfig.from_pretrained(str(sd_folder / "text_encoder")).to_dict()
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": TINY_CLIP_IMAGE_SIZE,
        "patch_size": 8,
    }
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    model = CLIPModel(config).eval()
    side = TINY_CLIP_IMAGE_SIZE
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _load(spec: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    from transformers import AutoModel, AutoProcessor

    source = str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec
    try:
        model = AutoModel.from_pretrained(source)
        if not all(hasattr(model, name) for name in ("get_image_features", "get_text_features")):
            raise ImageTextModelError(
                f"{spec!r} is a {type(model).__name__}, not an image-text model; name a "
                "CLIP-style model (CLIP, SigLIP, ...) that embeds both images and texts"
            )
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        if isinstance(error, ImageTextModelError):
            raise
        raise ImageTextModelError(
            f"cannot load image-text model {spec!r} ({error}); give a hub id such as "
            "openai/clip-vit-base-patch32 (downloaded on first use) or a folder saved with "
            "save_pretrained"
        ) from error
    return model.eval(), processor


def _features(output: Any) -> Any:
    """Projected embeddings: transformers 4 returns a tensor, 5 an output with ``pooler_output``."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ImageTextModel:
    """A CLIP-style model: unit-length image and text embeddings whose dot product is their
    cosine similarity."""

    def __init__(self, spec: str, device: str = "auto", batch_size: int = 64) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model, self.processor = build_tiny_clip() if spec == TINY_CLIP else _load(spec)
        # mypy reads transformers' wrapped ``to`` as taking the model itself
        self.model = model.to(self.device)  # type: ignore[arg-type]

    def _embed(self, method: str, inputs: dict[str, Any]) -> np.ndarray:
        import torch

        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            features = _features(getattr(self.model, method)(**inputs))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``[images, dim]`` float32 unit vectors."""
        rows = [
            self._embed(
                "get_image_features",
                dict(self.processor(images=list(chunk), return_tensors="pt")),
            )
            for chunk in _chunks([image.convert("RGB") for image in images], self.batch_size)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``[texts, dim]`` float32 unit vectors."""
        rows = [
            self._embed(
                "get_text_features",
                dict(
                    self.processor(
                        text=list(chunk), padding=True, truncation=True, return_tensors="pt"
                    )
                ),
            )
            for chunk in _chunks(list(texts), self.batch_size)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]
