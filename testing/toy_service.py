"""The toy world behind a real ``InferenceService`` with its own store, for tests."""

from __future__ import annotations

from pathlib import Path

from inference.registry import load_editor, load_generator, load_target
from inference.service import BatchingConfig, InferenceService, open_service


def toy_world_service(
    folder: Path, max_batch: int = 64, max_wait_ms: float = 5
) -> InferenceService:
    """``procedural:shapes`` (generator and editor) + ``planted:shapes`` on the CPU, storing
    under ``folder``."""
    return open_service(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        folder,
        batching=BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
        editors=[load_editor("procedural:shapes", "cpu")],
    )
