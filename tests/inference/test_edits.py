"""``POST /v1/edits`` over real HTTP: the toy world's exact edits, a tiny random-weight
InstructPix2Pix pipeline, batching, content addressing and every refusal."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from inference.app import create_app, start_server_thread
from inference.protocols import BackendSpecError
from inference.registry import load_editor
from inference.service import BatchingConfig, ServiceLimits, open_service
from inference.store import edit_id
from inference.wire import RenderOptions
from tests.inference.test_server import metric
from tools.client import LineClient, LineServerError
from toyworld.truth import planted_ground_truth

UNITS = {unit.concept: unit.unit for unit in planted_ground_truth() if unit.kind != "none"}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.fixture
async def toy(toy_world_server):
    async with LineClient(toy_world_server, retries=0) as client:
        yield client


async def test_removing_the_concept_silences_its_planted_unit(toy):
    images = await toy.generate_images(
        ["a red circle"] * 4, [11, 12, 13, 14], RenderOptions(width=96, height=96)
    )
    ids = [image.id for image in images]
    edited = await toy.edit_images(ids, "remove the red circle", [0] * 4)
    assert [entry.source for entry in edited] == ids
    assert len({entry.id for entry in edited} | set(ids)) == 8  # new ids, one per image
    units = [UNITS["red circle"], UNITS["red"]]  # distractors may be red, never red circles
    before = (await toy.activations("planted:shapes", "planted", ids, units)).values
    after = (
        await toy.activations("planted:shapes", "planted", [e.id for e in edited], units)
    ).values
    assert (before > 0.5).all()
    assert (after[:, 0] < 0.01).all(), after
    assert after[:, 1].mean() < 0.5 * before[:, 1].mean()


async def test_an_edit_of_what_is_not_there_keeps_every_pixel(toy):
    [image] = await toy.generate_images(["a red circle"], [21], RenderOptions(width=64, height=64))
    [edited] = await toy.edit_images([image.id], "remove the green hexagon", [0])
    original, unchanged = await asyncio.gather(toy.image_png(image.id), toy.image_png(edited.id))
    assert edited.id != image.id
    assert np.array_equal(pixels(original), pixels(unchanged))


async def test_replacement_recolours_only_the_named_objects(toy):
    [image] = await toy.generate_images(["a red square"], [31], RenderOptions(width=96, height=96))
    [edited] = await toy.edit_images([image.id], "replace the red square with blue", [0])
    units = [UNITS["red"], UNITS["blue"], UNITS["square"]]
    measured = await toy.activations("planted:shapes", "planted", [image.id, edited.id], units)
    before, after = measured.values
    assert before[0] > 0.5 and after[0] < 0.05  # no longer red
    assert after[1] > 0.5  # blue now
    assert after[2] == pytest.approx(before[2], abs=0.05)  # still a square


async def test_edits_are_content_addressed_and_never_made_twice(toy):
    images = await toy.generate_images(
        ["a striped star"] * 2, [41, 42], RenderOptions(width=64, height=64)
    )
    ids = [image.id for image in images]
    first = await toy.edit_images(ids, "remove the star", [5, 6])
    again = await toy.edit_images(ids, "remove the star", [5, 6])
    other_seed = await toy.edit_images(ids[:1], "remove the star", [7])
    other_text = await toy.edit_images(ids[:1], "remove the stripes", [5])
    assert not any(entry.cached for entry in first)
    assert [e.id for e in again] == [e.id for e in first] and all(e.cached for e in again)
    assert other_seed[0].id != first[0].id and other_text[0].id != first[0].id
    settings = load_editor("procedural:shapes", "cpu").default_settings()
    identity = load_editor("procedural:shapes", "cpu").identity
    assert first[0].id == edit_id(identity, ids[0], "remove the star", 5, settings)


@pytest.fixture(scope="module")
def pix2pix_server(tmp_path_factory, tiny_sd, line_cache):
    editor = load_editor("tiny-pix2pix", "cpu")
    service = open_service(
        [tiny_sd],
        [],
        tmp_path_factory.mktemp("edits") / "store",
        batching=BatchingConfig(max_batch=8, max_wait_ms=200.0),
        limits=ServiceLimits(max_images_per_request=8, max_prompt_chars=100),
        editors=[editor],
    )
    running = start_server_thread(create_app(service))
    yield running.url
    running.stop()


async def test_a_diffusers_editor_batches_concurrent_edits_with_one_seed_each(pix2pix_server):
    async with LineClient(pix2pix_server, retries=0) as client:
        images = await client.generate_images([f"noise {i}" for i in range(4)], [1, 2, 3, 4])
        ids = [image.id for image in images]
        before = await client.metrics_text()
        answers = await asyncio.gather(
            *(client.edit_images([key], "remove the dog", [9]) for key in ids)
        )
        after = await client.metrics_text()
        edited = [answer[0] for answer in answers]
        batches = metric(after, "line_batch_size_count", backend="edit:tiny-pix2pix") - metric(
            before, "line_batch_size_count", backend="edit:tiny-pix2pix"
        )
        assert 1 <= batches < 4  # four concurrent requests met in fewer batches
        source = pixels(await client.image_png(ids[0]))
        result = pixels(await client.image_png(edited[0].id))
        assert result.shape == source.shape  # the editor keeps the size
        reseeded = await client.edit_images(ids[:1], "remove the dog", [10])
        assert reseeded[0].id != edited[0].id
        models = await client.models()
        assert [entry["name"] for entry in models["editors"]] == ["tiny-pix2pix"]


async def test_uploads_can_be_edited_by_a_diffusers_editor(pix2pix_server):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, format="PNG")
    async with LineClient(pix2pix_server, retries=0) as client:
        [upload] = await client.upload_images([buffer.getvalue()])
        [edited] = await client.edit_images([upload], "make it blue", [0])
        assert pixels(await client.image_png(edited.id)).shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {"image_ids": ["0" * 64], "instruction": "remove it", "seeds": [0]},
            404,
            "not in the store",
        ),
        ({"image_ids": [], "instruction": "remove it", "seeds": []}, 400, "image_ids is empty"),
        (
            {"image_ids": ["IMG"], "instruction": "remove it", "seeds": [0]},
            400,
            "malformed image id",
        ),
        ({"instruction": "  ", "seeds": [0]}, 400, "instruction is empty"),
        ({"instruction": "x" * 101, "seeds": [0]}, 400, "the limit is 100"),
        ({"instruction": "remove it", "seeds": [0, 1]}, 400, "one seed per image"),
        ({"instruction": "remove it", "seeds": [-1]}, 400, "seeds go from 0"),
        ({"instruction": "remove it", "seeds": [0], "editor": "magic"}, 404, "tiny-pix2pix"),
        ({"instruction": "remove it", "seeds": [0], "steps": 0}, 400, "steps must be"),
    ],
)
async def test_bad_edit_requests_say_what_is_wrong(pix2pix_server, body, status, words):
    async with LineClient(pix2pix_server, retries=0) as client:
        [image] = await client.generate_images(["a source"], [0])
        body = {"image_ids": [image.id], **body}
        response = await client._http.post("/v1/edits", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


async def test_the_toy_editor_refuses_what_it_cannot_edit(toy):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buffer, format="PNG")
    [upload] = await toy.upload_images([buffer.getvalue()])
    with pytest.raises(LineServerError) as refused:
        await toy.edit_images([upload], "remove the red", [0])
    assert refused.value.status == 400 and "comes from an upload" in str(refused.value)
    [image] = await toy.generate_images(["a red circle"], [1], RenderOptions(width=64, height=64))
    with pytest.raises(LineServerError) as vague:
        await toy.edit_images([image.id], "make it nicer", [0])
    assert "names no attribute the toy world knows" in str(vague.value)


async def test_a_server_without_editors_says_how_to_add_one(tmp_path, tiny_sd):
    service = open_service([tiny_sd], [], tmp_path / "store")
    running = start_server_thread(create_app(service))
    try:
        async with LineClient(running.url, retries=0) as client:
            [image] = await client.generate_images(["x"], [0])
            with pytest.raises(LineServerError) as refused:
                await client.edit_images([image.id], "remove it", [0])
    finally:
        running.stop()
    assert "no editor; start it with --editor" in str(refused.value)


def test_a_pipeline_that_does_not_edit_is_refused_with_the_kinds_that_do(line_cache):
    from inference.generators.tiny_sd import ensure_tiny_sd

    with pytest.raises(BackendSpecError) as refused:
        load_editor(str(ensure_tiny_sd()), "cpu")
    message = str(refused.value)
    assert "StableDiffusionPipeline, which does not edit images" in message
    assert "instruction-editing" in message and "image-to-image" in message
    assert "registered editor family (procedural, tiny-pix2pix)" in message


def test_unknown_toy_editors_and_arguments_are_refused():
    with pytest.raises(BackendSpecError, match="'procedural:shapes'"):
        load_editor("procedural:dots", "cpu")
    with pytest.raises(BackendSpecError, match="takes no arguments"):
        load_editor("tiny-pix2pix:big", "cpu")
