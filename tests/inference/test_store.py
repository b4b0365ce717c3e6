"""Content-addressed image store and activation cache."""

from __future__ import annotations

import asyncio
import os
import tempfile

import httpx
import numpy as np
import pytest
from PIL import Image

from inference.app import create_app, start_server_thread
from inference.protocols import RenderSettings
from inference.registry import load_generator, load_target
from inference.service import BatchingConfig, InferenceService
from inference.store import (
    ActivationCache,
    ImageStore,
    InvalidImageIdError,
    StoreWriteError,
    image_id,
)
from testing.toy_service import toy_world_service

SETTINGS = RenderSettings(64, 64, 1, 0.0)


def test_image_id_hashes_everything_that_sets_pixels():
    base = image_id("tiny-sd-v1:float32", "a cat", 1, SETTINGS)
    assert base == image_id("tiny-sd-v1:float32", "a cat", 1, RenderSettings(64, 64, 1, 0))
    variants = {
        image_id("tiny-sd-v1:float16", "a cat", 1, SETTINGS),
        image_id("tiny-sd-v1:float32", "a cat ", 1, SETTINGS),
        image_id("tiny-sd-v1:float32", "a cat", 2, SETTINGS),
        image_id("tiny-sd-v1:float32", "a cat", 1, RenderSettings(72, 64, 1, 0.0)),
        image_id("tiny-sd-v1:float32", "a cat", 1, RenderSettings(64, 72, 1, 0.0)),
        image_id("tiny-sd-v1:float32", "a cat", 1, RenderSettings(64, 64, 2, 0.0)),
        image_id("tiny-sd-v1:float32", "a cat", 1, RenderSettings(64, 64, 1, 1.5)),
    }
    assert base not in variants and len(variants) == 7
    assert len(base) == 64 and all(c in "0123456789abcdef" for c in base)


def test_store_round_trip_with_provenance(tmp_path):
    store = ImageStore(tmp_path)
    key = image_id("g", "a cat", 1, SETTINGS)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not store.has(key)
    store.put(key, Image.fromarray(pixels), {"prompt": "a cat", "seed": 1})
    assert store.has(key)
    np.testing.assert_array_equal(np.asarray(store.load(key)), pixels)
    assert store.metadata(key) == {"prompt": "a cat", "seed": 1}
    assert ImageStore(tmp_path).has(key)  # survives a restart
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "0" * 63, "g" * 64, "0" * 64 + "/x"])
def test_malformed_ids_never_touch_the_file_system(tmp_path, bad):
    with pytest.raises(InvalidImageIdError, match="64 lowercase hex"):
        ImageStore(tmp_path).path(bad)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_store_is_a_clear_error(tmp_path):
    store = ImageStore(tmp_path)
    key = image_id("g", "p", 1, SETTINGS)
    (tmp_path / "images").chmod(0o500)
    try:
        with pytest.raises(StoreWriteError, match="pass a writable folder"):
            store.put(key, Image.new("RGB", (8, 8)), {})
        assert not store.has(key)
    finally:
        (tmp_path / "images").chmod(0o700)


def test_a_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    key = image_id("g", "p", 1, SETTINGS)

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StoreWriteError, match="No space left on device"):
        store.put(key, Image.new("RGB", (8, 8)), {})
    assert not store.has(key)
    assert not list(tmp_path.rglob("*.part"))


def test_activation_cache_keeps_whole_vectors_across_restarts(tmp_path):
    cache = ActivationCache(tmp_path / "a.sqlite", memory_entries=1)
    vectors = {f"{i:064x}": np.arange(5, dtype=np.float32) + i for i in range(3)}
    cache.put_many("t", "layer4", vectors)
    assert cache.get_many("t", "layer4", ["f" * 64]) == {}
    assert cache.get_many("t", "layer3", list(vectors)) == {}
    cache.close()
    reopened = ActivationCache(tmp_path / "a.sqlite")
    found = reopened.get_many("t", "layer4", list(vectors))
    assert set(found) == set(vectors)
    for key, vector in vectors.items():
        np.testing.assert_array_equal(found[key], vector)


def test_the_activation_cache_holds_a_bounded_number_of_bytes_in_memory(tmp_path):
    """SAE latents per image are d_sae floats: the in-memory LRU is bounded in bytes too, and
    what it let go is read back from disk."""
    cache = ActivationCache(tmp_path / "a.sqlite", memory_bytes=3 * 4096)
    latents = {f"{i:064x}": np.full(1024, i, np.float32) for i in range(10)}  # 4 KiB each
    cache.put_many("t", "conv4@sae-0123456789ab#max", latents)
    assert len(cache._memory) == 3 and cache._held_bytes == 3 * 4096
    found = cache.get_many("t", "conv4@sae-0123456789ab#max", list(latents))
    assert all(np.array_equal(found[key], vector) for key, vector in latents.items())
    assert cache._held_bytes <= 3 * 4096


@pytest.mark.parametrize(
    ("errno_", "words"), [(28, "No space left on device"), (30, "Read-only file system")]
)
def test_a_full_or_read_only_disk_is_a_clear_507_and_the_run_can_go_on(
    tmp_path, monkeypatch, errno_, words
):
    service = toy_world_service(tmp_path / "store")
    store = service.store
    running = start_server_thread(create_app(service))
    body = {"prompts": ["a red circle", "a blue square"], "seeds": [1, 2]}
    real_mkstemp = tempfile.mkstemp

    def failing_disk(*_args, **_kwargs):
        raise OSError(errno_, words)

    try:
        monkeypatch.setattr("tempfile.mkstemp", failing_disk)
        answer = httpx.post(f"{running.url}/v1/images", json=body, timeout=30)
        assert answer.status_code == 507
        assert words in answer.json()["detail"]
        assert "Free disk space or pass a writable folder with --store" in answer.json()["detail"]
        assert not list(store.images.rglob("*.png")) and not list(store.images.rglob("*.part"))
        monkeypatch.setattr("tempfile.mkstemp", real_mkstemp)  # space freed: the same request
        answer = httpx.post(f"{running.url}/v1/images", json=body, timeout=30)
        assert answer.status_code == 200
        ids = [image["id"] for image in answer.json()["images"]]
        assert all(store.load(image).size == (224, 224) for image in ids)  # whole, readable
    finally:
        running.stop()


class CountingCache(ActivationCache):
    """The real cache, noting how many vectors each write commits."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.writes: list[int] = []

    def put_many(self, target: str, layer: str, vectors: dict[str, np.ndarray]) -> None:
        self.writes.append(len(vectors))
        super().put_many(target, layer, vectors)


async def test_a_model_batch_reaches_the_activation_cache_in_one_write(tmp_path):
    cache = CountingCache(tmp_path / "activations.sqlite")
    service = InferenceService(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        ImageStore(tmp_path),
        cache,
        batching=BatchingConfig(max_batch=64, max_wait_ms=200),
    )
    try:
        images = await service.generate_images([f"a red circle {i}" for i in range(6)], range(6))
        ids = [image.id for image in images]
        # three requests at once meet in one model batch, and its six vectors in one write
        tables = await asyncio.gather(
            *(service.activations("planted:shapes", "planted", ids[i : i + 2]) for i in (0, 2, 4))
        )
        assert cache.writes == [6]
        again = await service.activations("planted:shapes", "planted", ids)
        assert cache.writes == [6]  # read back from the cache, nothing measured or written
        np.testing.assert_array_equal(again.values, np.concatenate([t.values for t in tables]))
    finally:
        await service.aclose()
