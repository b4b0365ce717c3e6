"""The inference server over real HTTP on 127.0.0.1, driven by the real async client."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from inference.app import create_app, start_server_thread
from inference.pixels import pixels_of
from inference.protocols import RenderJob
from inference.service import BatchingConfig, ServiceLimits, open_service
from inference.targets.torch_target import imagenet_preprocess
from inference.wire import RenderOptions
from tools.client import LineClient, LineServerError

TARGET = "torchvision:resnet18:random"


def make_service(tmp_path, tiny_sd, resnet18, max_batch=8, max_wait_ms=100.0):
    return open_service(
        [tiny_sd],
        [resnet18],
        tmp_path / "store",
        batching=BatchingConfig(max_batch=max_batch, max_wait_ms=max_wait_ms),
        limits=ServiceLimits(max_images_per_request=16, max_prompt_chars=200),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd, resnet18):
    service = make_service(tmp_path_factory.mktemp("server"), tiny_sd, resnet18)
    running = start_server_thread(create_app(service))
    yield running, service
    running.stop()


@pytest.fixture
async def client(server):
    async with LineClient(server[0].url, retries=0) as line:
        yield line


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


async def test_concurrent_requests_are_merged_into_batches(client):
    before = await client.metrics_text()
    answers = await asyncio.gather(
        *(client.generate_images([f"merged prompt {i}"], [i]) for i in range(8))
    )
    after = await client.metrics_text()
    assert all(not answer[0].cached for answer in answers)
    batches = metric(after, "line_batch_size_count", backend="tiny-sd") - metric(
        before, "line_batch_size_count", backend="tiny-sd"
    )
    images = metric(after, "line_batch_size_sum", backend="tiny-sd") - metric(
        before, "line_batch_size_sum", backend="tiny-sd"
    )
    assert images == 8 and batches < 8  # some batch held more than one request
    rendered = metric(after, "line_images_generated_total", generator="tiny-sd") - metric(
        before, "line_images_generated_total", generator="tiny-sd"
    )
    assert rendered == 8


async def test_a_repeated_request_renders_nothing_new(client):
    first = await client.generate_images(["a cat", "a dog", "a cat"], [1, 2, 1])
    assert [image.cached for image in first] == [False, False, True]  # duplicate rendered once
    assert first[0].id == first[2].id
    before = await client.metrics_text()
    again = await client.generate_images(["a cat", "a dog"], [1, 2])
    after = await client.metrics_text()
    assert [image.id for image in again] == [first[0].id, first[1].id]
    assert all(image.cached for image in again)
    assert metric(after, "line_images_generated_total", generator="tiny-sd") == metric(
        before, "line_images_generated_total", generator="tiny-sd"
    )
    assert metric(after, "line_image_cache_hits_total", generator="tiny-sd") == 2 + metric(
        before, "line_image_cache_hits_total", generator="tiny-sd"
    )


async def test_batched_images_equal_the_same_requests_rendered_alone(client, tiny_sd):
    prompts = [f"batch equality {i}" for i in range(5)]
    seeds = [11, 12, 13, 14, 15]
    images = await client.generate_images(prompts, seeds)
    settings = tiny_sd.default_settings()
    for image, prompt, seed in zip(images, prompts, seeds, strict=True):
        served = np.asarray(Image.open(io.BytesIO(await client.image_png(image.id))))
        alone = np.asarray(tiny_sd.render([RenderJob(prompt, seed, settings)])[0].image)
        assert served.shape == (64, 64, 3)
        assert np.abs(served.astype(int) - alone.astype(int)).max() <= 1


async def test_settings_are_part_of_the_image(client):
    small = await client.generate_images(
        ["a boat"], [3], RenderOptions(width=32, height=48, steps=2)
    )
    default = await client.generate_images(["a boat"], [3])
    assert small[0].id != default[0].id
    png = Image.open(io.BytesIO(await client.image_png(small[0].id)))
    assert png.size == (32, 48)


async def test_activations_equal_a_direct_forward_pass(client, resnet18):
    images = await client.generate_images(["an owl", "a lamp", "a red car"], [5, 6, 7])
    ids = [image.id for image in images]
    result = await client.activations(TARGET, "layer4", ids, units=[0, 7, 511])
    pixels = [
        Image.open(io.BytesIO(await client.image_png(image_id))).convert("RGB") for image_id in ids
    ]
    x = torch.stack([imagenet_preprocess()(pixels_of(image)) for image in pixels])
    module = resnet18.module
    with torch.inference_mode():
        x = module.maxpool(module.relu(module.bn1(module.conv1(x))))
        x = module.layer4(module.layer3(module.layer2(module.layer1(x))))
        expected = x.mean(dim=(2, 3))[:, [0, 7, 511]].numpy()
    assert result.units == [0, 7, 511] and result.values.shape == (3, 3)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4, atol=1e-5)


async def test_another_unit_of_a_measured_layer_runs_no_model(client):
    ids = [image.id for image in await client.generate_images(["a kite", "a fox"], [8, 9])]
    everything = await client.activations(TARGET, "avgpool", ids)
    assert everything.values.shape == (2, 512) and everything.units == list(range(512))
    before = await client.metrics_text()
    one = await client.activations(TARGET, "avgpool", ids, units=[42])
    after = await client.metrics_text()
    np.testing.assert_array_equal(one.values[:, 0], everything.values[:, 42])
    assert metric(after, "line_activations_computed_total", target=TARGET) == metric(
        before, "line_activations_computed_total", target=TARGET
    )
    assert metric(after, "line_activation_cache_hits_total", target=TARGET) == 2 + metric(
        before, "line_activation_cache_hits_total", target=TARGET
    )


async def test_models_lists_generators_targets_layers(client):
    models = await client.models()
    assert models["generators"][0]["name"] == "tiny-sd"
    assert models["generators"][0]["defaults"]["width"] == 64
    layers = {layer["name"]: layer["units"] for layer in models["targets"][0]["layers"]}
    assert layers["layer4"] == 512 and layers["fc"] == 1000
    assert (await client.health())["status"] == "ok"


BAD_IMAGES = [
    (
        {"prompts": ["a"], "seeds": [1], "generator": "dalle"},
        404,
        "unknown generator 'dalle'; this server has: tiny-sd",
    ),
    ({"prompts": [" "], "seeds": [1]}, 400, "prompt 0 is empty"),
    ({"prompts": ["x" * 201], "seeds": [1]}, 400, "prompt 0 has 201 characters; the limit is 200"),
    (
        {"prompts": ["a", "b"], "seeds": [1]},
        400,
        "same length (one seed per image), got 2 prompts and 1 seeds",
    ),
    ({"prompts": ["a"] * 17, "seeds": list(range(17))}, 413, "at most 16"),
    ({"prompts": ["a"], "seeds": [-1]}, 400, "seeds go from 0 to"),
    ({"prompts": ["a"], "seeds": [1], "width": 30}, 400, "width must be a multiple of 8"),
    ({"prompts": ["a"], "seeds": [1], "steps": 0}, 400, "steps must be from 1 to"),
    ({"seeds": [1]}, 422, "prompts: Field required"),
    ({"prompts": ["a"], "seeds": [1], "colour": "red"}, 422, "colour: Extra inputs"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_IMAGES)
async def test_bad_image_requests_say_what_is_wrong(server, body, status, message):
    async with httpx.AsyncClient(base_url=server[0].url) as http:
        response = await http.post("/v1/images", json=body)
        assert response.status_code == status
        assert message in response.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200


async def test_bad_activation_requests_say_what_is_wrong(server, client):
    image = (await client.generate_images(["a shell"], [4]))[0].id
    cases = [
        (
            {"target": "torchvision:vgg16", "layer": "fc", "image_ids": [image]},
            404,
            f"unknown target 'torchvision:vgg16'; this server has: {TARGET}",
        ),
        (
            {"target": TARGET, "layer": "layer9", "image_ids": [image]},
            404,
            "has no layer 'layer9'; valid layers: conv1, bn1, relu",
        ),
        (
            {"target": TARGET, "layer": "layer4", "image_ids": [image], "units": [512]},
            400,
            "unit 512 is out of range: layer 'layer4' of 'torchvision:resnet18:random' has 512 "
            "units, indices 0 to 511",
        ),
        (
            {"target": TARGET, "layer": "layer4", "image_ids": [image], "units": [-1]},
            400,
            "unit -1 is out of range",
        ),
        (
            {"target": TARGET, "layer": "layer4", "image_ids": ["../../etc/passwd"]},
            400,
            "malformed image id '../../etc/passwd'",
        ),
        (
            {"target": TARGET, "layer": "layer4", "image_ids": ["0" * 64]},
            404,
            "1 image id(s) are not in the store: " + "0" * 64,
        ),
        ({"target": TARGET, "layer": "layer4", "image_ids": []}, 400, "image_ids is empty"),
    ]
    async with httpx.AsyncClient(base_url=server[0].url) as http:
        for body, status, message in cases:
            response = await http.post("/v1/activations", json=body)
            assert response.status_code == status, response.text
            assert message in response.json()["detail"]
        malformed = await http.post(
            "/v1/activations", content=b'{"target": ', headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422
        assert "malformed JSON" in malformed.json()["detail"]
        for path, status, message in [
            ("/v1/images/" + "0" * 64, 404, "no image " + "0" * 64),
            ("/v1/images/not-an-id", 400, "malformed image id 'not-an-id'"),
            ("/v1/images/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),
            ("/v1/images/%2E%2E", 400, "malformed image id '..'"),
        ]:
            response = await http.get(path)
            assert response.status_code == status, (path, response.text)
            assert message in response.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200


async def test_client_errors_carry_the_server_message(client):
    with pytest.raises(LineServerError) as raised:
        await client.activations(TARGET, "layer9", ["0" * 64])
    assert raised.value.status == 404
    assert "valid layers: conv1" in raised.value.message


async def test_a_token_is_required_when_set(tmp_path, tiny_sd, resnet18):
    running = start_server_thread(create_app(make_service(tmp_path, tiny_sd, resnet18), "s3cret"))
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            missing = await http.get("/v1/models")
            wrong = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
            assert missing.status_code == wrong.status_code == 401
            assert "Authorization: Bearer <token>" in missing.json()["detail"]
        async with LineClient(running.url, token="s3cret") as line:
            assert (await line.models())["targets"][0]["name"] == TARGET
    finally:
        running.stop()
