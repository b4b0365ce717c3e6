"""The toy world served like any other backend: batched, cached, black-box."""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np
import pytest
from PIL import Image

from inference.app import create_app, start_server_thread
from testing.toy_service import toy_world_service
from tools.client import LineClient
from toyworld.procedural import render_prompt
from toyworld.truth import planted_ground_truth


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy-store")
    service = toy_world_service(folder, max_batch=16, max_wait_ms=100)
    running = start_server_thread(create_app(service))
    yield running.url, service
    running.stop()


async def test_models_lists_the_planted_layers_but_not_the_truth(toy_server):
    async with LineClient(toy_server[0]) as client:
        models = await client.models()
    layers = {layer["name"]: layer["units"] for layer in models["targets"][0]["layers"]}
    assert models["generators"][0]["name"] == "procedural:shapes"
    assert layers["planted"] == len(planted_ground_truth())
    assert "features" in layers
    assert "concept" not in str(models) and "blue triangle" not in str(models)


async def test_toy_world_requests_are_batched_and_measured_exactly(toy_server):
    url, service = toy_server
    prompts = ["a red circle", "a blue square", "three crimson circles", "a green star"]
    async with LineClient(url) as client:
        answers = await asyncio.gather(
            *(client.generate_images([prompt] * 3, [1, 2, 3]) for prompt in prompts)
        )
        ids = [image.id for answer in answers for image in answer]
        activations = await client.activations("planted:shapes", "planted", ids, units=[0, 10])
        metrics = await client.metrics_text()
        png = await client.image_png(ids[0])
    count = float(
        re.search(r'line_batch_size_count\{backend="procedural:shapes"\} (\S+)', metrics)[1]
    )
    assert count < len(ids)  # several prompts met in one batch
    served = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(
        served, np.asarray(render_prompt("a red circle", 1, 224, 224).image)
    )
    direct = service.targets["planted:shapes"].activations(
        [service.store.load(image_id) for image_id in ids], "planted"
    )[:, [0, 10]]
    np.testing.assert_allclose(activations.values, direct, rtol=1e-6)
    red, red_circle = activations.values[:, 0], activations.values[:, 1]
    assert red[:3].min() > red[3:6].max()  # red circles fire the red unit, blue squares do not
    assert red_circle[:3].min() > red_circle[9:12].max()
    assert service.store.metadata(ids[0])["understood"] == ["red", "circle"]
