"""Several plain servers share a run: least outstanding requests, images measured at home."""

from __future__ import annotations

import asyncio
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from inference.app import create_app, free_port, start_server_thread
from testing.cuttable_proxy import start_cuttable_proxy
from testing.toy_service import toy_world_service
from tools.client import InferenceClient, LineServerUnavailable
from tools.pool import ServerPool, connect


def toy_server(folder, port: int = 0):
    """A toy-world server with its own store (as on another machine)."""
    service = toy_world_service(folder, max_batch=32)
    return start_server_thread(create_app(service), port=port), service


@pytest.fixture
def three_servers(tmp_path):
    servers = [toy_server(tmp_path / f"store{i}") for i in range(3)]
    yield servers
    for running, _service in servers:
        running.stop()


def counter(metrics: str, name: str) -> float:
    return sum(float(value) for value in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)", metrics, re.M))


def test_several_servers_share_a_run(three_servers, toy_world_server, explain, tmp_path):
    urls = [running.url for running, _ in three_servers]
    units = [0, 3, 9, 12, 20, 25]
    rows, pooled = explain(urls, tmp_path / "pooled", units, iterations=4, concurrency=6)
    single, _ = explain(toy_world_server, tmp_path / "single", units, iterations=4)
    assert [row["status"] for row in rows] == ["done"] * len(units)
    # spreading the work does not change what is found: the toy world is deterministic
    assert [(r["label"], r["score"]) for r in rows] == [(r["label"], r["score"]) for r in single]
    held = []
    for running, service in three_servers:
        metrics = service.render_metrics().decode()
        assert counter(metrics, "line_images_generated_total") > 0, running.url
        assert counter(metrics, "line_activations_computed_total") > 0, running.url
        held += [path.stem for path in service.store.images.glob("*/*.png")]
    # each search image was rendered once, on one server, and measured there (a wrong route
    # would have rendered it again on a second server); the confirmation's images are shared by
    # every neuron of the run, so two neurons asking for one at the same moment on two servers
    # may each render it: at most once per server
    twice = {image for image in held if held.count(image) > 1}
    confirmation = set()
    for unit in units:
        neuron = json.loads(pooled.record_path(rows[0]["layer"], unit).read_text())
        for candidate in neuron["confirmation"]["candidates"]:
            confirmation.update(candidate["image_ids"])
    assert twice <= confirmation
    assert all(held.count(image) <= len(three_servers) for image in twice)


async def test_least_outstanding_requests_and_owner_routing(three_servers):
    urls = [running.url for running, _ in three_servers]
    async with ServerPool(urls) as pool:
        batches = [await pool.generate_images([f"a red circle {i}"] * 2, [1, 2]) for i in range(6)]
        ids = [image.id for batch in batches for image in batch]
        stats = pool.stats()
        # one request at a time: ties go round, so every server renders two batches
        assert sorted(stats.images_rendered.values()) == [4, 4, 4]
        values = (await pool.activations("planted:shapes", "planted", ids, [0, 1])).values
    stores = [service.store for _, service in three_servers]
    assert all(sum(store.has(image) for store in stores) == 1 for image in ids)
    async with ServerPool([urls[0]]) as alone:
        own = [image for image in ids if stores[0].has(image)]
        direct = (await alone.activations("planted:shapes", "planted", own, [0, 1])).values
    assert np.array_equal(values[[ids.index(image) for image in own]], direct)


async def test_uploads_reach_every_server(three_servers):
    urls = [running.url for running, _ in three_servers]
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    async with ServerPool(urls) as pool:
        [image_id] = await pool.upload_images([buffer.getvalue()], ["red.png"])
        await pool.activations("planted:shapes", "features", [image_id])
    assert all(service.store.has(image_id) for _, service in three_servers)


async def test_a_dead_server_is_passed_over_and_its_images_rendered_again(tmp_path):
    (first, first_service), (second, second_service) = (
        toy_server(tmp_path / "a"),
        toy_server(tmp_path / "b"),
    )
    try:
        async with ServerPool([first.url, second.url], patience_s=5) as pool:
            images = await pool.generate_images(["a blue square", "a green star"], [1, 2])
            owner = first_service if first_service.store.has(images[0].id) else second_service
            other = second_service if owner is first_service else first_service
            before = (
                await pool.activations("planted:shapes", "planted", [i.id for i in images])
            ).values
            (first if owner is first_service else second).stop()
            after = (
                await pool.activations("planted:shapes", "planted", [i.id for i in images])
            ).values
            assert pool.stats().rerendered == 2
            assert all(other.store.has(image.id) for image in images)  # same ids elsewhere
            more = await pool.generate_images(["a yellow circle"], [3])
            assert other.store.has(more[0].id)  # new work goes to the live server
        assert np.allclose(before, after)
    finally:
        first.stop()
        second.stop()


async def test_no_server_answering_fails_clearly():
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    async with ServerPool(urls, patience_s=0.5, backoff_s=0.01) as pool:
        with pytest.raises(LineServerUnavailable, match="none of the inference servers answered"):
            await pool.generate_images(["a red circle"], [1])


def test_connect_gives_one_client_or_a_pool():
    one, several = (
        connect("http://127.0.0.1:1"),
        connect(["http://127.0.0.1:1", "http://127.0.0.1:2"]),
    )
    assert type(one).__name__ == "LineClient"
    assert isinstance(several, ServerPool)
    assert isinstance(one, InferenceClient) and isinstance(several, InferenceClient)


async def test_when_no_server_answers_requests_wait_together_for_the_first_one_back(tmp_path):
    (first, _), (second, _) = toy_server(tmp_path / "a"), toy_server(tmp_path / "b")
    try:
        with start_cuttable_proxy(first.url) as a, start_cuttable_proxy(second.url) as b:
            async with ServerPool([a.url, b.url], patience_s=60) as pool:
                await pool.generate_images(["a red circle"], [1])
                await asyncio.to_thread(a.cut)
                await asyncio.to_thread(b.cut)
                trying = asyncio.create_task(pool.generate_images(["a blue square"], [2]))
                while pool.gate.down is None:  # both servers failed it: none answers
                    await asyncio.sleep(0.01)
                waiting = [
                    asyncio.create_task(pool.generate_images([f"a green star {i}"], [i]))
                    for i in range(20)
                ]
                while pool.gate.waiting < 21:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(b.restore)
                answers = await asyncio.gather(trying, *waiting)
    finally:
        first.stop()
        second.stop()
    assert all(len(images) == 1 for images in answers)
    [outage] = pool.gate.outages
    assert outage.outcome == "recovered" and outage.endpoint.startswith("inference servers ")
    # the first request tried each server once, each member's gate and the pool's prober asked
    # them; the twenty waiting requests tried nothing
    assert a.stats.while_cut + b.stats.while_cut <= 4 + 2 * outage.probes
