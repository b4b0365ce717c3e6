"""The iteration analysis: relative best score so far and discovery rate per step."""

from __future__ import annotations

import csv
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from agent.record import NeuronRecord
from agent.run_folder import RunFolder, RunSettings
from cli.evals import eval_app
from evals.iterations import iteration_rows, step_rank
from tools.scoreboard import ConceptEntry

runner = CliRunner()


def entry(concept: str, score: float, iteration: int, source: str = "proposal") -> ConceptEntry:
    return ConceptEntry(
        concept, score, [score], [concept], [concept], [iteration], iteration, source
    )


def history(label: str, entries: list[ConceptEntry], status: str = "done") -> NeuronRecord:
    return NeuronRecord.model_validate(
        {"status": status, "result": {"label": label}, "entries": entries}
    )


HISTORIES = [
    # found by the summary; a seed class first
    history(
        "blue star",
        [
            entry("seed class", 1.0, 0, "seed"),
            entry("red", 2.0, 1),
            entry("blue", 4.0, 2),
            entry("star", 3.0, 3),
            entry("blue star", 5.0, 4, "summary"),
        ],
    ),
    # found in round 1; round 3 lost; the summary concept had been tried (no summary entry)
    history("x", [entry("x", 1.0, 1), entry("y", 1.0, 2)]),
    # final best 0: no relative score, but it counts for the discovery rate
    history("z", [entry("w", 0.0, 1), entry("z", 0.0, 2), entry("q", -1.0, 3)]),
    history("", [entry("v", 9.0, 1)], status="failed"),
]


def test_the_known_curve_of_a_hand_built_history():
    rows, notes = iteration_rows(HISTORIES, "toy")
    table = [
        (r["step"], r["neurons"], r["relative_best"], r["discovered"], r["discovery_rate"])
        for r in rows
    ]
    assert table == [
        ("0", 1, pytest.approx(0.2), 0, 0.0),
        ("1", 2, pytest.approx((0.4 + 1) / 2), 1, pytest.approx(1 / 3)),
        ("2", 2, pytest.approx((0.8 + 1) / 2), 1, pytest.approx(1 / 3)),
        ("3", 2, pytest.approx((0.8 + 1) / 2), 0, 0.0),
        ("S", 2, 1.0, 1, pytest.approx(1 / 3)),
    ]
    assert {row["run"] for row in rows} == {"toy"}
    assert sorted(["S", "10", "2", "0"], key=step_rank) == ["0", "2", "10", "S"]  # pooled runs
    assert notes == [
        "1 neurons not finished or unlabelled",
        "1 neurons whose final best score is not positive are left out of the relative best score",
    ]


def hand_built_run(folder: RunFolder) -> None:
    settings = RunSettings(target="planted:shapes", layer="planted", units=[0, 1, 2, 3], llm="x")
    folder.create(settings)
    records = []
    for unit, neuron in enumerate(HISTORIES):
        spec = {"target": settings.target, "layer": settings.layer, "unit": unit}
        records.append(neuron.model_copy(update={"neuron": neuron.neuron.model_copy(update=spec)}))
        folder.write_record(records[-1])
    folder.write_results(records)


def test_iterations_command_writes_each_run_and_the_pooled_analysis(cosy_run, tmp_path):
    built = RunFolder(tmp_path / "built")
    hand_built_run(built)
    real = tmp_path / "real"
    shutil.copytree(cosy_run.path, real)
    pooled = tmp_path / "pooled"
    result = runner.invoke(
        eval_app, ["iterations", str(built.path), str(real), "--out", str(pooled)]
    )
    assert result.exit_code == 0, result.output
    assert "1 neurons not finished or unlabelled" in result.output
    for folder in (built.path, real, pooled):
        assert Image.open(folder / "iterations.png").size == (1200, 480)
        assert "| run | step |" in (folder / "iterations.md").read_text()
    with (real / "iterations.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    # a real 2-round run (offline:vocab): steps 1, 2, S; every label is found somewhere
    assert [row["step"] for row in rows] == ["1", "2", "S"]
    assert float(rows[-1]["relative_best"]) == 1.0
    assert sum(int(row["discovered"]) for row in rows) == 3
    with (pooled / "iterations.csv").open() as stream:
        assert len(list(csv.DictReader(stream))) == 5 + 3
    assert f"wrote {pooled / 'iterations.csv'}" in " ".join(result.output.split())


def test_iterations_command_needs_finished_runs(cosy_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(cosy_run.config, unfinished / "config.json")
    result = runner.invoke(eval_app, ["iterations", str(unfinished)])
    assert result.exit_code == 2
    assert "has no results.csv yet; finish the run first" in " ".join(result.output.split())
    result = runner.invoke(eval_app, ["iterations", str(tmp_path)])
    assert result.exit_code == 2 and "not a LINE run folder" in result.output
