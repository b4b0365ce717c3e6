"""``POST /v1/probe`` over real HTTP: one round trip equals the two-request path (ids and values,
measured again from the stored PNGs), a GET waits for a PNG still being written, a restarted
server renders only what its store lacks, and bad input gets the two endpoints' own messages."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import numpy as np
import pytest

from inference.app import create_app, start_server_thread
from inference.registry import load_generator, load_target
from inference.service import BatchingConfig, InferenceService, ServiceLimits, open_service
from inference.store import ActivationCache, ImageStore
from tests.inference.test_server import metric
from tools.client import LineClient

USER_MODULE = """
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
"""


def backends(kind, tmp_path, tiny_sd, resnet18):
    """(generators, targets, target name, layer) of one kind of probe."""
    if kind == "torchvision":
        return [tiny_sd], [resnet18], "torchvision:resnet18:random", "layer3"
    if kind == "user module":
        source = tmp_path / "user_model.py"
        source.write_text(USER_MODULE)
        spec = f"python:{source}:build"
        return [tiny_sd], [load_target(spec, "cpu")], spec, "1"
    toy = [load_generator("procedural:shapes", "cpu")], [load_target("planted:shapes", "cpu")]
    return (*toy, "planted:shapes", "planted")


def serve(folder, generators, targets, **options):
    service = open_service(
        generators, targets, folder, batching=BatchingConfig(max_batch=8, max_wait_ms=20), **options
    )
    return start_server_thread(create_app(service))


@pytest.mark.parametrize("kind", ["torchvision", "user module", "toy world"])
async def test_a_probe_equals_rendering_then_measuring_the_stored_images(
    kind, tmp_path, tiny_sd, resnet18
):
    generators, targets, target, layer = backends(kind, tmp_path, tiny_sd, resnet18)
    prompts, seeds = [f"a probe {i}" for i in range(5)], [10, 11, 12, 13, 14]
    running = serve(tmp_path / "store", generators, targets)
    try:
        async with LineClient(running.url, retries=0) as client:
            probed = await client.probe(prompts, seeds, target, layer)
            again = await client.generate_images(prompts, seeds)
    finally:
        running.stop()
    assert [image.id for image in probed.images] == [image.id for image in again]
    assert not any(image.cached for image in probed.images) and all(i.cached for i in again)
    # measured afresh from the stored PNGs by a server with an empty activation cache
    shutil.copytree(tmp_path / "store" / "images", tmp_path / "fresh" / "images")
    fresh = serve(tmp_path / "fresh", generators, targets)
    try:
        async with LineClient(fresh.url, retries=0) as client:
            stored = await client.activations(target, layer, [i.id for i in again])
    finally:
        fresh.stop()
    assert probed.units == stored.units and probed.values.shape == stored.values.shape
    np.testing.assert_allclose(probed.values, stored.values, rtol=1e-5, atol=1e-5)


class SlowDisk(ImageStore):
    """An image store on a slow disk: every write takes half a second."""

    def put_png(self, image_id_: str, png: bytes) -> None:
        time.sleep(0.5)
        super().put_png(image_id_, png)


async def test_a_get_of_an_image_still_being_written_waits_for_it(tmp_path, tiny_sd, resnet18):
    store = SlowDisk(tmp_path / "store")
    service = InferenceService(
        [tiny_sd], [resnet18], store, ActivationCache(tmp_path / "store" / "activations.sqlite")
    )
    running = start_server_thread(create_app(service))
    try:
        async with LineClient(running.url, retries=0) as client:
            probed = await client.probe(["a slow write"], [1], "torchvision:resnet18:random", "fc")
            key = probed.images[0].id
            assert not store.has(key)  # the answer came before the PNG was on disk
            png = await client.image_png(key)
            assert png.startswith(b"\x89PNG") and store.has(key)
    finally:
        running.stop()


async def test_a_restarted_server_renders_only_what_its_store_lacks(tmp_path):
    toy = [load_generator("procedural:shapes", "cpu")], [load_target("planted:shapes", "cpu")]
    prompts, seeds = [f"a red circle number {i}" for i in range(6)], list(range(6))
    running = serve(tmp_path / "store", *toy)
    try:
        async with LineClient(running.url, retries=0) as client:
            first = await client.probe(prompts, seeds, "planted:shapes", "planted", units=[0, 10])
    finally:
        running.stop()  # waits for the background writes
    store = ImageStore(tmp_path / "store")
    lost = [image.id for image in first.images[:2]]
    for key in lost:  # as if the server had crashed before writing them
        store.path(key).unlink()
    restarted = serve(tmp_path / "store", *toy)
    try:
        async with LineClient(restarted.url, retries=0) as client:
            second = await client.probe(prompts, seeds, "planted:shapes", "planted", units=[0, 10])
            rendered = metric(
                await client.metrics_text(),
                "line_images_generated_total",
                generator="procedural:shapes",
            )
    finally:
        restarted.stop()
    assert rendered == 2 and all(store.has(key) for key in lost)
    assert [image.cached for image in second.images] == [False, False, True, True, True, True]
    np.testing.assert_array_equal(first.values, second.values)


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    toy = [load_generator("procedural:shapes", "cpu")], [load_target("planted:shapes", "cpu")]
    folder = tmp_path_factory.mktemp("probe") / "store"
    service = open_service(*toy, folder, limits=ServiceLimits(max_images_per_request=4))
    running = start_server_thread(create_app(service))
    yield running.url
    running.stop()


@pytest.mark.parametrize(
    ("change", "twin"),
    [
        ({"generator": "nope"}, "images"),
        ({"seeds": [1, 2]}, "images"),
        ({"prompts": ["  "]}, "images"),
        ({"prompts": ["x"] * 5, "seeds": [1] * 5}, "images"),
        ({"width": 12}, "images"),
        ({"steps": 0}, "images"),
        ({"target": "nope"}, "activations"),
        ({"layer": "nope"}, "activations"),
        ({"units": [99]}, "activations"),
    ],
)
def test_bad_probes_get_the_messages_of_the_endpoint_they_replace(toy_server, change, twin):
    probe = {"prompts": ["a circle"], "seeds": [1], "target": "planted:shapes", "layer": "planted"}
    probe.update(change)
    answer = httpx.post(f"{toy_server}/v1/probe", json=probe)
    if twin == "images":
        keys = ("prompts", "seeds", "generator", "width", "height", "steps", "guidance")
        twin_answer = httpx.post(
            f"{toy_server}/v1/images", json={k: v for k, v in probe.items() if k in keys}
        )
    else:
        [image] = httpx.post(
            f"{toy_server}/v1/images", json={"prompts": ["a"], "seeds": [1]}
        ).json()["images"]
        keys = ("target", "layer", "units")
        body = {k: v for k, v in probe.items() if k in keys} | {"image_ids": [image["id"]]}
        twin_answer = httpx.post(f"{toy_server}/v1/activations", json=body)
    assert answer.status_code == twin_answer.status_code and answer.status_code >= 400
    assert answer.json()["detail"] == twin_answer.json()["detail"]


async def test_concurrent_probes_of_one_image_render_it_once(toy_server):
    async with LineClient(toy_server, retries=0) as client:
        before = metric(
            await client.metrics_text(),
            "line_images_generated_total",
            generator="procedural:shapes",
        )
        answers = await asyncio.gather(
            *(client.probe(["a shared star"], [5], "planted:shapes", "planted") for _ in range(4))
        )
        after = metric(
            await client.metrics_text(),
            "line_images_generated_total",
            generator="procedural:shapes",
        )
    assert after - before == 1
    assert len({answer.images[0].id for answer in answers}) == 1
