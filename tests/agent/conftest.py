"""Fixtures for agent runs: a toy-world inference server and a way to run neurons in-process."""

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


@pytest.fixture(scope="session")
def toy_world_server(tmp_path_factory):
    """procedural:shapes + planted:shapes behind a real server on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("agent-store")
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


@pytest.fixture
def explain():
    """Run neurons in-process against a server: ``explain(url, out, units, ...)``."""
    return explain_neurons


def explain_neurons(
    server_url: str,
    out,
    units: list[int],
    llm: str = "offline:vocab",
    llm_base_url: str | None = None,
    prompts: str = "paper",
    layer: str = "planted",
    target: str = "planted:shapes",
    concurrency: int = 8,
    control=None,
    **overrides,
):
    """Run neurons in-process against a server; returns (rows, folder)."""
    settings = RunSettings(
        target=target,
        layer=layer,
        units=units,
        llm=llm,
        llm_base_url=llm_base_url,
        prompts=prompts,
        variant_overrides=overrides,
        concurrency=concurrency,
        server=server_url,
    )
    folder = RunFolder(out)
    folder.create(settings)
    variant = load_variant(prompts, **overrides)

    async def go():
        llm_client = build_llm_client(
            llm, base_url=llm_base_url, temperature=variant.settings.temperature, timeout_s=10
        )
        async with LineClient(server_url) as client:
            return await run_neurons(settings, folder, client, llm_client, variant, control=control)

    return asyncio.run(go()), folder
