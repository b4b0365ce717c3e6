"""`line toyworld`: the ground-truth table and JSON, and sample renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.toyworld import toyworld_app
from inference.toyworld.truth import planted_ground_truth

runner = CliRunner()


def test_truth_json() -> None:
    result = runner.invoke(toyworld_app, ["truth", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == len(planted_ground_truth())
    assert rows[0] == {
        "layer": "planted",
        "unit": 0,
        "concept": "red",
        "kind": "single",
        "attributes": ["red"],
        "note": "most prominent red object",
    }


def test_truth_table() -> None:
    result = runner.invoke(toyworld_app, ["truth"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["layer", "unit", "kind", "concept"]
    assert any("blue triangle" in line and "and" in line for line in lines)
    assert len(lines) == len(planted_ground_truth()) + 2


def test_render_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "star.png"
    result = runner.invoke(
        toyworld_app, ["render", "two crimson stars", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "understood: two, crimson, stars" in result.output
    assert Image.open(out).size == (224, 224)


@pytest.mark.slow
def test_bench_reports_generator_speed() -> None:
    from bench.toyworld_bench import run

    numbers = run()
    assert numbers["procedural_images_per_s"] > 50
    assert numbers["planted_batch64_s"] < 2.0
