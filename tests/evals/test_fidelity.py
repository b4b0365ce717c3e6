"""Fidelity through the real toy-world server: generated images against "real" toy images of a
class drawn from another scene distribution, class matching, `line eval fidelity` and its
errors."""

from __future__ import annotations

import asyncio
import csv
import shutil

import pytest
from typer.testing import CliRunner

from agent.run_folder import RunFolder
from cli.evals import eval_app
from evals.fidelity import FIDELITY_COLUMNS, evaluate_fidelity, fidelity_summary_rows, match_classes
from testing.toy_classes import write_toy_class_folders
from tools.client import LineClient
from tools.controlset import ControlSet, ControlSetError
from toyworld.procedural import render_prompt
from toyworld.truth import planted_ground_truth

runner = CliRunner()
UNITS = {u.concept: u.unit for u in planted_ground_truth() if u.kind == "single"}
AND_UNITS = {u.concept: u.unit for u in planted_ground_truth() if u.kind == "and"}
PER_CLASS = 6


@pytest.fixture(scope="module")
def toy_classes(tmp_path_factory):
    """Class folders of toy images: two small objects of the class on a named background."""
    root = tmp_path_factory.mktemp("toy-classes")
    return write_toy_class_folders(root, ["red", "blue", "green", "yellow", "circles"], PER_CLASS)


def _fidelity(url, folder, control, labels=None, notes=None):
    async def go():
        async with LineClient(url) as client:
            return await evaluate_fidelity(
                folder, client, control, n_images=8, labels=labels, notes=notes
            )

    return asyncio.run(go())


def test_match_classes_exact_then_by_similarity():
    classes = ["red", "circles", "golden retriever"]
    matches = match_classes(["Red", "circle", "blue", "star"], classes)
    assert (matches["Red"].name, matches["Red"].how, matches["Red"].similarity) == (
        "red",
        "exact",
        1,
    )
    assert matches["circle"].name == "circles" and matches["circle"].how == "similar"
    assert 0.8 <= matches["circle"].similarity < 1
    assert "blue" not in matches and "star" not in matches  # "blue" is near "red", not near enough


def test_generated_close_ups_against_real_small_objects(
    cosy_toy_server, cosy_run, cosy_units, toy_classes
):
    labels = {UNITS[c]: c for c in ("red", "blue", "green", "yellow", "circle", "star")}
    # half labels of AND units: weaker on generated and on real images alike
    labels |= {AND_UNITS["red circle"]: "red", AND_UNITS["blue triangle"]: "blue"}
    labels[cosy_units["constant"]] = "red"
    notes: list[str] = []
    rows = _fidelity(
        cosy_toy_server, cosy_run, ControlSet.from_folder(toy_classes), labels, notes.append
    )
    assert notes == ["1 of 9 labels name no control class (e.g. 'star'); they are not compared"]
    by_unit = {row["unit"]: row for row in rows}
    assert set(by_unit) == set(labels) - {UNITS["star"]}
    assert (
        by_unit[UNITS["circle"]]["class"] == "circles"
        and by_unit[UNITS["circle"]]["match"] == "similar"
    )
    for concept in ("red", "blue", "green", "yellow", "circle"):
        row = by_unit[UNITS[concept]]
        assert (row["n_synthetic"], row["n_real"]) == (8, PER_CLASS)
        # a close-up of one medium object drives a "most prominent" unit harder than two small
        # objects do, and both stand out from the other classes' images
        assert row["ratio"] > 1.5, row
        assert row["auc_synthetic"] > 0.8 and row["auc_real"] > 0.8, row
    constant = by_unit[cosy_units["constant"]]
    assert constant["ratio"] == 1 and constant["auc_synthetic"] == constant["auc_real"] == 0.5
    for half_label in (AND_UNITS["red circle"], AND_UNITS["blue triangle"]):
        row = by_unit[half_label]
        assert row["mean_synthetic"] < 0.5 and row["mean_real"] < 0.2, row
    (summary,) = fidelity_summary_rows(rows)
    # the neurons that respond most to generated images of a class respond most to real ones
    assert summary["neurons"] == 8 and summary["rank_correlation"] > 0.5 and summary["p"] < 0.05
    assert summary["median_ratio"] > 1.5 and summary["verdict"] == "yes"
    assert summary["auc_synthetic"] > 0.7 and summary["auc_real"] > 0.7


def test_fidelity_command(cosy_run, cosy_toy_server, toy_classes, tmp_path):
    shutil.copytree(cosy_run.path, tmp_path / "run")
    run = RunFolder(tmp_path / "run")
    args = ["fidelity", str(run.path), "--control", str(toy_classes), "--server", cosy_toy_server]
    result = runner.invoke(eval_app, [*args, "--n-images", "6"])
    assert result.exit_code == 0, result.output
    files = run.evaluation("fidelity")
    with files.csv.open() as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == FIDELITY_COLUMNS
    assert "red" in {row["label"] for row in rows}
    assert all(row["n_synthetic"] == "6" for row in rows)
    assert "synthetic stands in for real?" in files.summary.read_text()
    assert "AUC synthetic" in result.output and "wrote" in result.output


def test_fidelity_needs_class_folders(cosy_run, tmp_path):
    result = runner.invoke(eval_app, ["fidelity", str(cosy_run.path), "--control", "toy"])
    assert result.exit_code == 2 and "needs a control folder in class folders" in result.output
    flat = tmp_path / "flat"
    flat.mkdir()
    render_prompt("red", 0, 64, 64).image.save(flat / "a.png")
    result = runner.invoke(eval_app, ["fidelity", str(cosy_run.path), "--control", str(flat)])
    assert result.exit_code == 2 and "needs a control folder in class folders" in result.output
    with pytest.raises(ControlSetError, match="class folders"):
        asyncio.run(evaluate_fidelity(cosy_run, None, ControlSet.from_folder(flat)))  # type: ignore[arg-type]
