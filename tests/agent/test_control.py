"""Control sets: uploads, class seeding of the paper strategy, MAD/AUC scoring."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from agent.runner import seed_concepts
from tools.client import LineClient
from tools.controlset import ControlSet, ControlSetError, control_activations
from toyworld.procedural import render_prompt

CLASSES = {"red_things": "a red circle", "blue_things": "a blue square", "stars": "a green star"}


@pytest.fixture
def control_folder(tmp_path):
    root = tmp_path / "control"
    for folder, prompt in CLASSES.items():
        (root / folder).mkdir(parents=True)
        for seed in range(4):
            render_prompt(prompt, seed, 96, 96).image.save(root / folder / f"{seed}.png")
    return root


def test_folders_flat_or_in_classes(control_folder, tmp_path):
    control = ControlSet.from_folder(control_folder)
    assert control.classes == ["blue things", "red things", "stars"]
    assert len(control.images) == 12
    flat = tmp_path / "flat"
    flat.mkdir()
    render_prompt("a circle", 1, 64, 64).image.save(flat / "a.jpg")
    assert ControlSet.from_folder(flat).classes == []
    with pytest.raises(ControlSetError, match="is not a folder"):
        ControlSet.from_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ControlSetError, match="holds no image files"):
        ControlSet.from_folder(tmp_path / "empty")


def test_uploads_are_content_addressed_and_checked(toy_world_server, control_folder):
    async def go():
        async with LineClient(toy_world_server) as client:
            files = [p.read_bytes() for p in sorted((control_folder / "stars").iterdir())]
            first = await client.upload_images(files)
            again = await client.upload_images(files)
            acts = await client.activations("planted:shapes", "planted", first, units=[22])
            return first, again, acts

    first, again, acts = asyncio.run(go())
    assert first == again and len(set(first)) == 4
    assert acts.values.shape == (4, 1)
    with httpx.Client(base_url=toy_world_server) as http:
        not_b64 = http.post("/v1/images/upload", json={"images": ["***"]})
        not_image = http.post(
            "/v1/images/upload", json={"images": [base64.b64encode(b"hello").decode()]}
        )
    assert not_b64.status_code == 400 and "not valid base64" in not_b64.json()["detail"]
    assert not_image.status_code == 400 and "not a readable image" in not_image.json()["detail"]


def test_seed_concepts_take_top_classes_then_random_ones():
    labels = ["a", "a", "b", "b", "c", "c", "d", None]
    acts = np.array([5, 5, 1, 1, 3, 3, 0, 9], dtype=float)
    assert seed_concepts(labels, acts, top=2, random_count=0, seed=0) == ["a", "c"]
    picked = seed_concepts(labels, acts, top=1, random_count=2, seed=0)
    assert picked[0] == "a" and len(set(picked)) == 3 and set(picked) <= {"a", "b", "c", "d"}
    assert seed_concepts([None, None], acts[:2], 5, 5, 0) == []


def test_paper_run_is_seeded_with_the_top_control_classes(
    toy_world_server, explain, control_folder, tmp_path
):
    (control_folder / "blue_things" / "0broken.png").write_bytes(b"not a png")  # skipped, reported
    control = ControlSet.from_folder(control_folder)
    rows, folder = explain(
        toy_world_server, tmp_path / "run", [0], iterations=1, control=control,
        seed_top_classes=1, seed_random_classes=1,
    )  # fmt: skip
    neuron = json.loads(folder.record_path("planted", 0).read_text())
    seeds = [e["concept"] for e in neuron["entries"] if e["source"] == "seed"]
    assert seeds[0] == "red things" and len(seeds) == 2  # the red unit's top class first
    assert rows[0]["status"] == "done"


def test_auc_scores_against_the_toy_control_set(toy_world_server, explain, tmp_path):
    rows, folder = explain(
        toy_world_server, tmp_path / "run", [0], iterations=2, control=ControlSet.toy(40),
        score="auc", llm="offline:vocab",
    )  # fmt: skip
    assert rows[0]["status"] == "done"
    neuron = json.loads(folder.record_path("planted", 0).read_text())
    assert all(0.0 <= e["score"] <= 1.0 for e in neuron["entries"])
    assert neuron["entries"][0]["concept"] == "red" and neuron["entries"][0]["score"] > 0.9

    async def matrix():
        async with LineClient(toy_world_server) as client:
            return await control_activations(
                client, ControlSet.toy(40), "planted:shapes", "planted"
            )

    assert asyncio.run(matrix()).shape == (40, 28)
