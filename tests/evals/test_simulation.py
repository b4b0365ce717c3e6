"""Simulation scoring through the real toy-world server: the exact simulator, a tiny random
CLIP, the missing-labels check, `line eval simulate` and its errors."""

from __future__ import annotations

import asyncio
import csv
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.run_folder import RunFolder, RunSettings
from analysis.image_text import ImageTextModelError, build_tiny_clip
from analysis.simulators import (
    ExactToySimulator,
    SimulatedImage,
    SimulatorError,
    load_simulator,
)
from cli.evals import eval_app
from evals.simulation import (
    SIMULATION_COLUMNS,
    evaluate_simulation,
    half_labels,
    missing_label_checks,
    simulation_scores,
    top_activations,
)
from inference.generators.tiny_sd import ensure_tiny_sd
from tools.client import LineClient
from tools.controlset import ControlSet
from toyworld.procedural import render_prompt
from toyworld.truth import planted_ground_truth

runner = CliRunner()
OR_UNITS = {u.unit: u.concept for u in planted_ground_truth() if u.kind == "or"}


def _simulate(url, folder, control, simulators, labels=None, notes=None):
    async def go():
        async with LineClient(url) as client:
            return await evaluate_simulation(
                folder, client, control, simulators, labels, notes=notes
            )

    return asyncio.run(go())


def test_top_activations_and_undefined_figures():
    sparse = np.array([0.0] * 18 + [3.0, 5.0])
    assert top_activations(sparse).tolist() == [False] * 18 + [True, True]
    spread = np.arange(20.0)
    assert top_activations(spread).sum() == 2  # the top 10%
    perfect = simulation_scores(spread, spread * 2 + 1)
    assert perfect["pearson"] == pytest.approx(1) and perfect["spearman"] == pytest.approx(1)
    assert perfect["auprc"] == pytest.approx(1) and (perfect["n_images"], perfect["n_top"]) == (
        20,
        2,
    )
    reversed_ = simulation_scores(spread, -spread)
    assert reversed_["pearson"] == pytest.approx(-1) and reversed_["auprc"] < 0.2
    constant = simulation_scores(np.ones(20), spread)
    assert math.isnan(constant["pearson"]) and "same on every control image" in constant["note"]
    blind = simulation_scores(spread, np.zeros(20))
    assert math.isnan(blind["auprc"]) and "predicts the same value" in blind["note"]


def test_half_labels():
    assert half_labels("star or cross") == ["star", "cross"]
    assert half_labels("cats / dogs / birds") == ["cats", "dogs", "birds"]
    assert half_labels("red circle") == [] and half_labels("orange") == []


def test_exact_simulator_reads_the_known_scene():
    image = SimulatedImage(scene=("a large red circle on a blue background", 3))
    red, blue_bg, green, red_circle = ExactToySimulator().simulate(
        ["red", "blue background", "green square", "red circle on a blue background"], [image]
    )[:, 0]
    assert red >= math.pi * 0.27**2  # a large object covers at least this share
    assert blue_bg == 1.0 and green < red and red_circle == pytest.approx((red + 1) / 2)
    with pytest.raises(SimulatorError, match="toy-world scenes only"):
        ExactToySimulator().simulate(
            ["red"], [SimulatedImage(source=render_prompt("red", 0).image)]
        )


def test_full_or_labels_score_above_their_halves(cosy_toy_server, cosy_run, cosy_units):
    """Neuron_Eval's missing-labels check on the planted OR units, with a matched single unit."""
    labels = {**OR_UNITS, cosy_units["red"]: "red", cosy_units["constant"]: "blue"}
    notes: list[str] = []
    rows = _simulate(
        cosy_toy_server, cosy_run, ControlSet.toy(120), [ExactToySimulator()], labels, notes.append
    )
    assert notes == []
    finals = {r["unit"]: r for r in rows if r["role"] == "final"}
    assert set(finals) == set(labels) and all(r["n_images"] == 120 for r in rows)
    assert finals[cosy_units["red"]]["pearson"] >= 0.8 and finals[cosy_units["red"]]["auprc"] > 0.8
    constant = finals[cosy_units["constant"]]
    assert math.isnan(constant["pearson"]) and "same on every control image" in constant["note"]
    for unit, concept in OR_UNITS.items():
        halves = [r for r in rows if r["unit"] == unit and r["role"] == "half"]
        assert sorted(r["label"] for r in halves) == sorted(half_labels(concept))
        assert all(finals[unit]["pearson"] > half["pearson"] + 0.1 for half in halves), unit
        assert all(finals[unit]["auprc"] > half["auprc"] for half in halves), unit
    checks = missing_label_checks(rows)
    assert len(checks) == len(OR_UNITS) and all(check["passed"] for check in checks)


def test_image_text_simulators_load_by_folder_and_refuse_other_models(tmp_path):
    model, processor = build_tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    simulator = load_simulator(f"clip:{tmp_path / 'clip'}", "cpu")
    render_prompt("blue", 0, 64, 64).image.save(tmp_path / "blue.png")
    images = [SimulatedImage(source=render_prompt("red", 0, 64, 64).image),
              SimulatedImage(source=tmp_path / "blue.png")]  # fmt: skip
    predicted = simulator.simulate(["red", "a blue square", "star"], images)
    assert predicted.shape == (3, 2) and np.all(np.abs(predicted) <= 1 + 1e-5)
    assert simulator.name == f"clip:{tmp_path / 'clip'}" and simulator.reads_pixels
    with pytest.raises(ImageTextModelError, match="CLIPTextModel, not an image-text model"):
        load_simulator(f"clip:{ensure_tiny_sd() / 'text_encoder'}", "cpu")  # a text encoder only
    with pytest.raises(ImageTextModelError, match="cannot load image-text model"):
        load_simulator(f"clip:{tmp_path}", "cpu")  # no model in the folder
    with pytest.raises(SimulatorError, match="unknown simulator 'gpt4v'; valid: exact"):
        load_simulator("gpt4v")


@pytest.fixture
def run_copy(cosy_run, tmp_path) -> RunFolder:
    """A copy of the finished toy run, so an evaluation's files stay out of the shared one."""
    shutil.copytree(cosy_run.path, tmp_path / "run")
    return RunFolder(tmp_path / "run")


def test_simulate_command(run_copy, cosy_toy_server, cosy_units):
    args = ["simulate", str(run_copy.path), "--control", "toy:40", "--server", cosy_toy_server]
    result = runner.invoke(eval_app, [*args, "--simulator", "exact", "--simulator", "tiny-clip"])
    assert result.exit_code == 0, result.output
    files = run_copy.evaluation("simulation")
    with files.csv.open() as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == SIMULATION_COLUMNS
    assert {(r["unit"], r["simulator"]) for r in rows} == {
        (str(unit), simulator)
        for unit in cosy_units.values()
        for simulator in ("exact", "tiny-clip")
    }
    red = next(r for r in rows if r["unit"] == str(cosy_units["red"]) and r["simulator"] == "exact")
    assert red["label"] == "red" and float(red["pearson"]) >= 0.8
    summary = files.summary.read_text()
    assert "mean Pearson" in summary and "toy:40" in summary and "90% quantile" in summary
    assert "Pearson" in result.output and "tiny-clip" in result.output and "wrote" in result.output


def test_simulate_errors_say_what_to_do(run_copy, tmp_path):
    result = runner.invoke(eval_app, ["simulate", str(run_copy.path), "--simulator", "gpt4v"])
    assert result.exit_code == 2 and "unknown simulator 'gpt4v'; valid: exact" in result.output
    folder = tmp_path / "photos"
    folder.mkdir()
    render_prompt("red", 0, 64, 64).image.save(folder / "a.png")
    result = runner.invoke(eval_app, ["simulate", str(run_copy.path), "--control", str(folder)])
    assert result.exit_code == 2 and "name a simulator" in result.output
    result = runner.invoke(
        eval_app, ["simulate", str(run_copy.path), "--control", str(folder), "--simulator", "exact"]
    )
    assert result.exit_code == 2 and "toy-world scenes only" in result.output
    empty = RunFolder(tmp_path / "empty")
    empty.create(
        RunSettings(target="planted:shapes", layer="planted", units=[0, 1], llm="offline:vocab",
                    generator="procedural:shapes")
    )  # fmt: skip
    result = runner.invoke(eval_app, ["simulate", str(empty.path)])
    assert result.exit_code == 2 and "has a final label to score" in result.output
    assert "not explained yet" in result.output and "line run --resume" in result.output
