"""Fixtures for CoSy: a toy-world server and a short real run against it."""

from __future__ import annotations

import pytest

from agent.run_folder import RunFolder
from toyworld.truth import planted_ground_truth


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
def cosy_toy_server(toy_world_server):
    """The shared toy-world server (see tests/conftest.py)."""
    return toy_world_server


@pytest.fixture(scope="session")
def cosy_run(cosy_toy_server, cosy_units, tmp_path_factory, explain) -> RunFolder:
    """A finished offline run (offline:vocab, 2 iterations) of three planted units."""
    rows, folder = explain(
        cosy_toy_server,
        tmp_path_factory.mktemp("cosy-run") / "run",
        sorted(cosy_units.values()),
        generator="procedural:shapes",
        iterations=2,
    )
    assert all(row["status"] == "done" for row in rows), rows
    return folder
