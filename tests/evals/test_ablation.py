"""``line eval ablation`` on the toy world: editing a matched label out silences its planted unit,
a random unrelated concept's edit does not, and bad input says what to do."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.run_folder import RunFolder, RunSettings
from cli.evals import eval_app
from evals.ablation import control_concept, normalised_drops
from report.build import build_report
from toyworld.vocabulary import describes_disjoint_objects

runner = CliRunner()


@pytest.fixture
def run_copy(cosy_run, tmp_path) -> RunFolder:
    """A private copy of the short CoSy run, so evaluations write into their own folder."""
    shutil.copytree(cosy_run.path, tmp_path / "run")
    return RunFolder(tmp_path / "run")


def rows_of(folder: RunFolder) -> dict[int, dict]:
    with folder.evaluation("ablation").csv.open() as stream:
        return {int(row["unit"]): row for row in csv.DictReader(stream)}


def test_a_matched_label_ablates_its_unit_and_the_control_edit_does_not(
    cosy_toy_server, run_copy, cosy_units
):
    labels = {int(row["unit"]): row["label"] for row in run_copy.read_results()}
    assert labels[cosy_units["red"]] == "red"  # the offline proposer's first concept
    args = ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--control", "toy:40"]
    result = runner.invoke(eval_app, [*args, "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert "mean drop" in result.output and "control concept" in result.output
    rows = rows_of(run_copy)
    red = rows[cosy_units["red"]]
    assert int(red["k"]) == 5 and float(red["before"]) > 0.3
    assert float(red["drop"]) >= 0.8 and float(red["fell"]) == 1.0
    assert float(red["control_drop"]) <= 0.2
    assert red["control_concept"] and describes_disjoint_objects("red", red["control_concept"])
    constant = rows[cosy_units["constant"]]  # nothing to remove: never above its typical level
    assert constant["drop"] == "" and int(constant["above"]) == 0
    pairs = json.loads(run_copy.evaluation("ablation").details.read_text())
    red_pairs = pairs[f"planted#{cosy_units['red']}"]
    assert len(red_pairs) == 5 and all(p["after"] < p["before"] for p in red_pairs)
    assert "# Concept ablation" in run_copy.evaluation("ablation").summary.read_text()


def test_without_a_control_set_the_top_generated_images_are_edited(
    cosy_toy_server, run_copy, cosy_units
):
    result = runner.invoke(
        eval_app, ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--top-k", "3"]
    )
    assert result.exit_code == 0, result.output
    red = rows_of(run_copy)[cosy_units["red"]]
    assert red["source"] == "generated" and int(red["k"]) == 3
    assert float(red["drop"]) >= 0.8


def test_top_k_beyond_the_control_set_uses_what_there_is_and_says_so(cosy_toy_server, run_copy):
    args = ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--control", "toy:3"]
    result = runner.invoke(eval_app, [*args, "--top-k", "10"])
    assert result.exit_code == 0, result.output
    assert "more than the 3 usable control images; using all 3" in result.output
    assert {row["k"] for row in rows_of(run_copy).values()} == {"3"}


def test_bad_input_says_what_to_do(cosy_toy_server, run_copy, tmp_path):
    template = runner.invoke(
        eval_app,
        ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--template", "erase it"],
    )
    assert template.exit_code == 2 and "has no {label}" in template.output
    empty = RunFolder(tmp_path / "empty")
    settings = RunSettings(target="planted:shapes", layer="planted", units=[0], llm="x")
    empty.create(settings.model_copy(update={"generator": "procedural:shapes"}))
    unlabelled = runner.invoke(eval_app, ["ablation", str(empty.path), "--server", cosy_toy_server])
    assert unlabelled.exit_code == 2 and "no labelled neuron to ablate" in unlabelled.output
    real = RunFolder(tmp_path / "real")
    real.create(
        RunSettings(
            target="torchvision:resnet18:random", layer="fc", units=[0], llm="x"
        ).model_copy(update={"generator": "tiny-sd"})
    )
    no_editor = runner.invoke(eval_app, ["ablation", str(real.path)])
    assert no_editor.exit_code == 2 and "pass --editor SPEC" in no_editor.output
    missing = runner.invoke(
        eval_app,
        ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--editor", "tiny-pix2pix"],
    )
    assert missing.exit_code == 2 and "has no editor 'tiny-pix2pix'" in missing.output


def test_control_concepts_are_unrelated_to_the_label():
    concepts = ["red", "crimson circle", "triangle", "purple", "blue square", "many small objects"]
    for seed in range(20):
        chosen = control_concept("red", concepts, seed, "planted#0")
        assert chosen in ("purple", "blue square")  # a red triangle is both red and a triangle
    everyday = ["dog", "retriever", "car"]
    assert control_concept("golden retriever", everyday, 0, "n") in ("dog", "car")
    assert control_concept("red", ["red car", "dog"], 0, "n") == "dog"  # no toy concepts to use


def test_normalised_drop_counts_only_images_above_the_floor():
    drops = normalised_drops(np.array([1.0, 0.5, 0.1]), np.array([0.0, 0.5, 0.0]), floor=0.2)
    assert drops.tolist() == pytest.approx([1.0, 0.0])


def test_the_report_shows_the_pairs_side_by_side_and_the_table(
    cosy_toy_server, run_copy, cosy_units
):
    args = ["ablation", str(run_copy.path), "--server", cosy_toy_server, "--top-k", "2"]
    assert runner.invoke(eval_app, args).exit_code == 0
    index = build_report(run_copy.path)
    page = (index.parent / "neurons" / f"planted__{cosy_units['red']}.html").read_text()
    section = page[page.index('id="ablation"') :]
    assert section.count('class="ablation-row"') == 2
    assert section.count("<img") >= 6 and "red removed" in section
    listing = index.read_text()
    assert 'id="eval-ablation"' in listing and "control_concept" in listing
