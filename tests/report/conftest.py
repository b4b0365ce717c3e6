"""Fixtures for the report: a real toy-world run made in-process, and headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chromium_cdp import find_chromium
from report_fixtures import TOY_ITERATIONS, TOY_UNITS, ToyRun, add_cosy, add_truth, run_toy

from inference.store import default_cache_dir


@pytest.fixture(scope="session")
def toy_store(toy_world_server) -> tuple[str, Path]:
    """The shared toy-world server (tests/conftest.py) and the store folder it writes to."""
    return toy_world_server, default_cache_dir() / "store"


@pytest.fixture(scope="session")
def toy_run(toy_store, tmp_path_factory) -> ToyRun:
    """A finished run of four planted units with ground truth and a CoSy table."""
    url, store = toy_store
    folder = tmp_path_factory.mktemp("report-run") / "toy"
    run_toy(url, folder, TOY_UNITS, TOY_ITERATIONS)
    add_truth(folder)
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
