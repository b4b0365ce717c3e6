"""Prompt-variant comparison: statistics on synthetic inputs and a real toy-world comparison."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from cli.app import app
from evals.variants import Arm, ArmRun, mean_ci, paired_wilcoxon, pairwise_tests, summarize

runner = CliRunner()
FADED = "procedural:shapes:faded"


def test_mean_ci_matches_the_t_interval():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, low, high = mean_ci(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert mean == 2.5 and low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert mean_ci([7.0]) == (7.0, 7.0, 7.0)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_paired_wilcoxon():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    b = [x + 1.0 + 0.1 * i for i, x in enumerate(a)]
    w, p = paired_wilcoxon(a, b)
    expected = stats.wilcoxon(a, b)
    assert (w, p) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert paired_wilcoxon(a, a) == (0.0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_wilcoxon(a, a[:3])


def synthetic_runs() -> dict[Arm, list[ArmRun]]:
    def rows(scores, status="done"):
        return [
            {"unit": u, "layer": "l", "score": s, "status": status, "llm_calls": 2, "tokens": 10,
             "images": 5}
            for u, s in enumerate(scores)
        ]  # fmt: skip

    better, worse = Arm("better", "x"), Arm("worse", "x")
    return {
        better: [
            ArmRun(better, 0, "unused", rows([3.0, 4.0, 5.0, 6.0, 7.0, 8.0]), 6.0),
            ArmRun(better, 1, "unused", rows([3.2, 4.2, 5.2, 6.2, 7.2, 8.2]), 6.0),
        ],
        worse: [ArmRun(worse, 0, "unused", rows([1.0, 2.5, 2.0, 4.5, 4.0, 6.5]), 12.0)],
    }


def test_summary_and_pairwise_on_synthetic_runs():
    runs = synthetic_runs()
    table = {row["arm"]: row for row in summarize(runs)}
    assert table["better / x"]["score"] == pytest.approx(5.6)
    assert table["better / x"]["done"] == "12/12" and table["worse / x"]["repeats"] == 1
    assert table["worse / x"]["wall_s_per_neuron"] == 2.0
    assert table["better / x"]["llm_calls_per_neuron"] == 2
    (pair,) = pairwise_tests(runs)
    assert pair["neurons"] == 6
    per_neuron_better = [3.1, 4.1, 5.1, 6.1, 7.1, 8.1]
    expected = stats.wilcoxon(per_neuron_better, [1.0, 2.5, 2.0, 4.5, 4.0, 6.5])
    assert pair["p"] == pytest.approx(expected.pvalue)
    worse = [1.0, 2.5, 2.0, 4.5, 4.0, 6.5]
    assert pair["mean_difference"] == pytest.approx(np.mean(per_neuron_better) - np.mean(worse))


def test_variants_command_on_the_toy_world(tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        ["eval", "variants", "--variants", "paper,agentic", "--target", "planted:shapes",
         "--layer", "planted", "--units", "0,5", "--generator", "procedural:shapes", "--out",
         str(out), "--repeats", "2", "--iterations", "3", "--device", "cpu", "--quiet",
         "--control", "toy", "--n-images", "8"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| paper / offline:vocab | 4/4 |" in result.output
    with (out / "comparison.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [row["variant"] for row in table] == ["paper", "agentic"]
    assert {"score", "score_ci", "match", "llm_calls_per_neuron", "wall_s_per_neuron"} <= set(
        table[0]
    )
    assert (out / "pairwise.csv").read_text().count("\n") == 2
    assert Image.open(out / "convergence.png").size[0] > 300
    assert len(list((out / "runs").iterdir())) == 4


def test_generators_are_arms(tmp_path):
    out = tmp_path / "t2i"
    result = runner.invoke(
        app,
        ["eval", "variants", "--variants", "paper", "--generators",
         "procedural:shapes,procedural:shapes:faded", "--target", "planted:shapes", "--layer",
         "planted", "--units", "0,15", "--out", str(out), "--repeats", "1", "--iterations", "3",
         "--device", "cpu", "--quiet", "--control", "toy:20", "--n-images", "6", "--show-unit",
         "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plain, faded = "paper / offline:vocab / procedural:shapes", f"paper / offline:vocab / {FADED}"
    with (out / "comparison.csv").open() as stream:
        table = {row["arm"]: row for row in csv.DictReader(stream)}
    assert list(table) == [plain, faded]
    assert table[faded]["generator"] == FADED and float(table[faded]["images_per_s"]) > 0
    assert {"auc", "mad"} <= set(table[plain])
    # units 0 and 15 are red and yellow: the faded generator's washed-out colours score lower
    assert float(table[plain]["score"]) == 1.0 > float(table[faded]["score"])
    with (out / "labels.csv").open() as stream:
        labels = list(csv.DictReader(stream))
    assert [(row["unit"], row[plain]) for row in labels] == [("0", "red (1)"), ("15", "yellow (1)")]
    # CoSy renders every arm's labels with the first generator: the same label, the same figures
    runs = out / "runs"
    cosy = [list(csv.DictReader((runs / f"paper__offline_vocab__{slug}__r0" / "cosy.csv").open()))
            for slug in ("procedural_shapes", "procedural_shapes_faded")]  # fmt: skip
    same = [(mine, theirs) for mine, theirs in zip(*cosy, strict=True)
            if mine["concept"] == theirs["concept"]]  # fmt: skip
    assert same and all(mine["AUC"] == theirs["AUC"] for mine, theirs in same)
    for name in ("scores.png", "convergence.png", "neuron-0.png"):
        assert Image.open(out / name).size[0] > 300


def test_generators_the_server_lacks_are_named(toy_world_server, tmp_path):
    args = ["eval", "variants", "--variants", "paper", "--target", "planted:shapes", "--layer",
            "planted", "--units", "0", "--repeats", "1", "--device", "cpu"]  # fmt: skip
    remote = runner.invoke(
        app, [*args, "--server", toy_world_server, "--out", str(tmp_path / "a"),
              "--generators", f"procedural:shapes,{FADED}"],
    )  # fmt: skip
    assert remote.exit_code == 2
    assert f"has no generator '{FADED}'; it has: procedural:shapes" in remote.output
    local = runner.invoke(
        app,
        [*args, "--out", str(tmp_path / "b"), "--generators", "procedural:shapes,procedural:blobs"],
    )
    assert local.exit_code == 2
    assert "valid: 'procedural:shapes', 'procedural:shapes:faded'" in " ".join(local.output.split())
    both = runner.invoke(
        app, [*args, "--out", str(tmp_path / "c"), "--generator", "x", "--generators", "y"]
    )
    assert both.exit_code == 2 and "--generators (one arm each)" in both.output
