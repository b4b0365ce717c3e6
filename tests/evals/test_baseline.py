"""The vocabulary baseline and concept discovery."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from agent.offline import DEFAULT_VOCABULARY_PATH
from cli.app import app
from evals.baseline import baseline_seed, concept_discovery, read_vocabulary

runner = CliRunner()


def test_read_vocabulary(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# colours\nRed\n\nred.\nblue sky\n")
    assert read_vocabulary(path) == ["red", "blue sky"]
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no concept"):
        read_vocabulary(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_vocabulary(tmp_path / "missing.txt")


def test_concept_discovery():
    assert (
        concept_discovery(["Red fruit", "zebra", "tabby cat", "dog"], ["dog", "tabby cat"]) == 0.5
    )
    assert concept_discovery([], ["dog"]) == 0.0


def test_baseline_seeds_do_not_depend_on_the_unit():
    assert baseline_seed(0, "red", 1) == baseline_seed(0, "red", 1)
    assert len({baseline_seed(0, "red", i) for i in range(5)}) == 5


def test_vocab_command_labels_toy_units(tmp_path):
    out = tmp_path / "baseline"
    result = runner.invoke(
        app,
        ["eval", "vocab", "--vocabulary", str(DEFAULT_VOCABULARY_PATH), "--target",
         "planted:shapes", "--layer", "planted", "--units", "0,5,9", "--generator",
         "procedural:shapes", "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with (out / "vocab-labels.csv").open() as stream:
        labels = {int(row["unit"]): row["label"] for row in csv.DictReader(stream)}
    assert labels == {0: "red", 5: "circle", 9: "blue"}
    scores = (out / "vocab-scores.csv").read_text().splitlines()
    assert scores[0] == "concept,unit_0,unit_5,unit_9"
    assert len(scores) == 1 + len(read_vocabulary(DEFAULT_VOCABULARY_PATH))


def test_discovery_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text(
        "unit,label,status\n0,red fruit,done\n1,zebra,done\n2,,failed\n"
    )
    vocab = tmp_path / "classes.txt"
    vocab.write_text("zebra\ntabby cat\n")
    result = runner.invoke(app, ["eval", "discovery", str(run), "--vocabulary", str(vocab)])
    assert result.exit_code == 0, result.output
    assert "50.0% of 2 labels are not in classes.txt" in result.output
    missing = runner.invoke(app, ["eval", "discovery", str(tmp_path), "--vocabulary", str(vocab)])
    assert missing.exit_code == 2 and "has no results.csv" in missing.output
