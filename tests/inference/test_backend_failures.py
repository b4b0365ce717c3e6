"""A backend that raises fails only the requests of its own batch; the server keeps serving."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from PIL import Image

from inference.app import create_app, start_server_thread
from inference.registry import load_target
from inference.service import BatchingConfig, InferenceService, open_service
from inference.store import ActivationCache, ImageStore
from tools.client import LineClient, LineServerError

FRAGILE_MODEL = '''
import torch

class Fragile(torch.nn.Module):
    """Raises on bright images, like a model that fails on some inputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean(dim=(1, 2, 3)).max() > 1.5:
            raise RuntimeError("fragile model cannot take bright images")
        return self.conv(x)

def build():
    torch.manual_seed(0)
    return Fragile()
'''


async def test_a_failing_batch_fails_only_its_requests(tmp_path, tiny_sd):
    source = tmp_path / "fragile.py"
    source.write_text(FRAGILE_MODEL)
    target = load_target(f"python:{source}:build", "cpu")
    service = open_service(
        [tiny_sd],
        [target],
        tmp_path / "store",
        batching=BatchingConfig(max_batch=2, max_wait_ms=200),
    )
    store = service.store
    running = start_server_thread(create_app(service))
    try:
        async with LineClient(running.url, retries=0) as client:
            ids = [image.id for image in await client.generate_images(["x", "y", "z"], [1, 2, 3])]
            bright = "f" * 64
            store.put(bright, Image.new("RGB", (64, 64), (255, 255, 255)), {})
            results = await asyncio.gather(
                client.activations(target.name, "conv", [bright]),
                client.activations(target.name, "conv", [ids[0]]),
                return_exceptions=True,
            )
            assert all(isinstance(result, LineServerError) for result in results)
            assert results[0].status == 500
            assert "fragile model cannot take bright images" in results[0].message
            good = await client.activations(target.name, "conv", ids)
            assert good.values.shape == (3, 4)
            async with httpx.AsyncClient(base_url=running.url) as http:
                metrics = (await http.get("/metrics")).text
            assert 'line_batch_failures_total{backend="python:' in metrics
    finally:
        running.stop()


def test_service_needs_a_backend(tmp_path):
    with pytest.raises(ValueError, match="at least one generator, target or editor"):
        InferenceService([], [], ImageStore(tmp_path), ActivationCache(tmp_path / "a.sqlite"))
