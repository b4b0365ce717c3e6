"""`line toyworld`: the ground-truth table and JSON, and sample renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.toyworld import toyworld_app
from toyworld.learned import create_learned_target
from toyworld.truth import inhibited_ground_truth, planted_ground_truth

runner = CliRunner()


def test_truth_json() -> None:
    result = runner.invoke(toyworld_app, ["truth", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == len(planted_ground_truth()) + len(inhibited_ground_truth())
    assert rows[0] == {
        "layer": "planted",
        "unit": 0,
        "concept": "red",
        "kind": "single",
        "attributes": ["red"],
        "note": "most prominent red object",
        "inhibitor": "",
    }
    assert rows[-1]["inhibitor"] == "blue" and rows[-1]["layer"] == "inhibited"


def test_truth_table() -> None:
    result = runner.invoke(toyworld_app, ["truth"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["layer", "unit", "kind", "concept"]
    assert any("blue triangle" in line and "and" in line for line in lines)
    assert len(lines) == len(planted_ground_truth()) + len(inhibited_ground_truth()) + 2
    # the inhibited units: no concept excites them, a known one silences them
    inhibited = [line.split() for line in lines if line.startswith("inhibited")]
    assert [(row[1], row[6]) for row in inhibited] == [("0", "red"), ("1", "blue")]  # "no concept"
    only = runner.invoke(toyworld_app, ["truth", "--layer", "inhibited"]).output.splitlines()
    assert len(only) == len(inhibited_ground_truth()) + 2


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


def test_truth_dissects_planted_shapes_as_a_cross_check() -> None:
    result = runner.invoke(toyworld_app, ["truth", "--dissect", "--layer", "planted", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("[") :])
    assert len(rows) == len(planted_ground_truth())
    for row, planted in zip(rows, planted_ground_truth(), strict=True):
        assert set(row) >= {"layer", "unit", "concept", "kind", "attributes", "auc"}
        assert set(row["attributes"]) == set(planted.attributes), (row, planted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["truth", "--target", "torchvision:resnet18:random"], "needs scenes with known"),
        (["truth", "--target", "learned:shapes", "--layer", "conv9"], "conv1, conv2, conv3"),
        (["truth", "--target", "planted:circles", "--dissect"], "'planted:shapes'"),
        (["truth", "--layer", "features"], "use --dissect"),
        (["train", "--target", "planted:shapes"], "trainable targets: learned:shapes"),
        (["train", "--epochs", "0"], "must be at least 1"),
    ],
)
def test_bad_toyworld_input_is_explained(args: list[str], message: str) -> None:
    result = runner.invoke(toyworld_app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_train_writes_weights_that_serve_as_the_learned_target(tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    args = ["train", "--scenes", "32", "--held-out", "24", "--epochs", "1", "--out", str(out)]
    result = runner.invoke(toyworld_app, args)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    target = create_learned_target("shapes", "cpu", weights=out)
    assert {info.name for info in target.layers()} >= {"conv1", "conv4", "head"}
