"""Fixtures for CoSy: a toy-world server and a short real run against it."""

from __future__ import annotations

import asyncio

import pytest

from agent.prompts import load_variant
from agent.providers import build_llm_client
from agent.runner import RunFolder, RunSettings, run_neurons
from tools.client import LineClient
from tools.registry import load_generator, load_target
from tools.server import create_app, start_server_thread
from tools.service import BatchingConfig, InferenceService
from tools.store import ActivationCache, ImageStore
from tools.toyworld.truth import planted_ground_truth


@pytest.fixture(scope="session")
def cosy_units() -> dict[str, int]:
    """The planted units the CoSy run explains: red, blue and the constant one."""
    truth = planted_ground_truth()
    return {
        "red": next(u.unit for u in truth if u.concept == "red"),
        "blue": next(u.unit for u in truth if u.concept == "blue"),
        "constant": next(u.unit for u in truth if "constant" in u.note),
    }


@pytest.fixture(scope="session")
def cosy_toy_server(tmp_path_factory):
    """procedural:shapes + planted:shapes behind a real server on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("cosy-store")
    service = InferenceService(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        ImageStore(folder),
        ActivationCache(folder / "activations.sqlite"),
        BatchingConfig(max_batch=64, max_wait_ms=5),
    )
    running = start_server_thread(create_app(service))
    yield running.url
    running.stop()


@pytest.fixture(scope="session")
def cosy_run(cosy_toy_server, cosy_units, tmp_path_factory) -> RunFolder:
    """A finished offline run (offline:vocab, 2 iterations) of three planted units."""
    settings = RunSettings(
        target="planted:shapes",
        layer="planted",
        units=sorted(cosy_units.values()),
        generator="procedural:shapes",
        llm="offline:vocab",
        variant_overrides={"iterations": 2},
        server=cosy_toy_server,
    )
    folder = RunFolder(tmp_path_factory.mktemp("cosy-run") / "run")
    folder.create(settings)
    variant = load_variant("paper", iterations=2)

    async def go():
        llm = build_llm_client("offline:vocab", temperature=variant.settings.temperature)
        async with LineClient(cosy_toy_server) as client:
            return await run_neurons(settings, folder, client, llm, variant)

    rows = asyncio.run(go())
    assert all(row["status"] == "done" for row in rows), rows
    return folder
