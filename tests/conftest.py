"""Shared fixtures: offline models, a toy-world server and in-process runs, in a temporary
LINE cache built once per session."""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.providers import build_llm_client
from agent.run_folder import RunFolder, RunSettings
from agent.runner import run_neurons
from inference.app import create_app, start_server_thread
from inference.registry import load_generator, load_target
from inference.store import default_cache_dir
from prompts.variant import load_variant
from testing.toy_service import toy_world_service
from tools.pool import connect


@pytest.fixture(scope="session", autouse=True)
def line_cache(tmp_path_factory):
    """Keep tiny-sd and stores out of the user's home folder."""
    folder = tmp_path_factory.mktemp("line-cache")
    previous = os.environ.get("LINE_CACHE")
    os.environ["LINE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LINE_CACHE", None)
    else:
        os.environ["LINE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_sd(line_cache):
    """The offline tiny Stable Diffusion generator on the CPU."""

    return load_generator("tiny-sd", "cpu")


@pytest.fixture(scope="session")
def resnet18(line_cache):
    """A random-weight ResNet-18 target."""

    return load_target("torchvision:resnet18:random", "cpu")


@pytest.fixture(scope="session")
def toy_world_server(line_cache):
    """procedural:shapes + planted:shapes behind a real server on 127.0.0.1."""
    folder = default_cache_dir() / "store"  # the session's cache: runs reuse each other's images
    running = start_server_thread(create_app(toy_world_service(folder)))
    yield running.url
    running.stop()


@pytest.fixture(scope="session")
def explain():
    """Run neurons in-process against a server: ``explain(url, out, units, ...)``."""
    return explain_neurons


def explain_neurons(
    server_url: str | list[str],
    out,
    units: list[int],
    llm: str = "offline:vocab",
    llm_base_url: str | None = None,
    prompts: str = "paper",
    layer: str = "planted",
    target: str = "planted:shapes",
    generator: str | None = None,
    concurrency: int = 8,
    control=None,
    llm_timeout_s: float = 10,
    llm_retry=None,
    outage_patience_s: float = 300,
    editor: str | None = None,
    **overrides,
):
    """Run neurons in-process against a server, waiting for an endpoint that stops answering
    as `line run` does (``outage_patience_s``); returns (rows, folder)."""
    settings = RunSettings(
        target=target,
        layer=layer,
        units=units,
        llm=llm,
        llm_base_url=llm_base_url,
        generator=generator,
        editor=editor,
        prompts=prompts,
        variant_overrides=overrides,
        concurrency=concurrency,
        server=server_url,
    )
    folder = RunFolder(out)
    if not folder.config.exists():  # an existing folder is resumed
        folder.create(settings)
    variant = load_variant(prompts, **overrides)

    async def go():
        llm_client = build_llm_client(
            llm,
            base_url=llm_base_url,
            temperature=variant.settings.temperature,
            timeout_s=llm_timeout_s,
            retry=llm_retry,
            outage_patience_s=outage_patience_s,
        )
        async with connect(server_url, patience_s=outage_patience_s) as client:
            return await run_neurons(settings, folder, client, llm_client, variant, control=control)

    return asyncio.run(go()), folder
