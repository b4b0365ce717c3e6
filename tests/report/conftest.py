"""Fixtures for the report: a real toy-world run made in-process, and headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chromium_cdp import find_chromium
from report_fixtures import TOY_ITERATIONS, TOY_UNITS, ToyRun, add_cosy, add_truth, run_toy

from tools.registry import load_generator, load_target
from tools.server import create_app, start_server_thread
from tools.service import BatchingConfig, InferenceService
from tools.store import ActivationCache, ImageStore


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> tuple[str, Path]:
    """procedural:shapes + planted:shapes behind a real server; yields (url, store folder)."""
    folder = tmp_path_factory.mktemp("report-store")
    service = InferenceService(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        ImageStore(folder),
        ActivationCache(folder / "activations.sqlite"),
        BatchingConfig(max_batch=64, max_wait_ms=5),
    )
    running = start_server_thread(create_app(service))
    yield running.url, folder
    running.stop()


@pytest.fixture(scope="session")
def toy_run(toy_store, tmp_path_factory) -> ToyRun:
    """A finished run of four planted units with ground truth and a CoSy table."""
    url, store = toy_store
    folder = tmp_path_factory.mktemp("report-run") / "toy"
    rows = run_toy(url, folder, TOY_UNITS, TOY_ITERATIONS)
    add_truth(folder, rows)
    add_cosy(folder, TOY_UNITS)
    return ToyRun(folder, store, list(TOY_UNITS))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; skipped where it is not installed (a failure on CI)."""
    binary = find_chromium()
    if binary is None:
        message = (
            "Chromium is not installed; install it with `bash scripts/install-chromium.sh` "
            "(apt-get install -y chromium) or point LINE_CHROMIUM at a Chromium binary"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install it)")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where browser tests save screenshots: ``$LINE_TEST_OUTPUT/report`` or a pytest temp
    folder (printed by the tests)."""
    root = os.environ.get("LINE_TEST_OUTPUT")
    folder = Path(root) / "report" if root else tmp_path_factory.mktemp("report-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
