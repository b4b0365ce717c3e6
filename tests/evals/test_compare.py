"""`line eval compare`: several methods' labels scored with CoSy on the same footing."""

from __future__ import annotations

import asyncio
import csv
import shutil

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats
from typer.testing import CliRunner

from agent.offline import DEFAULT_VOCABULARY_PATH
from cli.evals import eval_app
from evals.baseline import read_vocabulary, vocabulary_baseline
from evals.compare import method_table, method_tests, parse_method_sources
from prompts.variant import load_variant
from tools.client import LineClient

runner = CliRunner()
N_IMAGES, N_CONTROL = 6, 30


def _images_requested(url: str) -> float:
    """Image requests the server has answered so far (rendered or from the store)."""

    async def read() -> str:
        async with LineClient(url) as client:
            return await client.metrics_text()

    families = text_string_to_metric_families(asyncio.run(read()))
    return sum(
        sample.value
        for family in families
        if family.name in ("line_images_generated", "line_image_cache_hits")
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@pytest.fixture(scope="module")
def vocab_labels(cosy_toy_server, cosy_run, tmp_path_factory):
    """The vocabulary baseline's labels of the run's units, as `line eval vocab` writes them."""
    units = cosy_run.read_settings().units

    async def label(client):
        return await vocabulary_baseline(
            client, "planted:shapes", "planted", units, read_vocabulary(DEFAULT_VOCABULARY_PATH),
            load_variant("paper"), "procedural:shapes",
        )  # fmt: skip

    async def go():
        async with LineClient(cosy_toy_server) as client:
            return await label(client)

    path = tmp_path_factory.mktemp("vocab") / "vocab-labels.csv"
    asyncio.run(go()).write_labels(path)
    return path


def test_compare_scores_every_method_like_cosy(
    cosy_toy_server, cosy_run, cosy_units, vocab_labels, tmp_path
):
    red, blue, constant = cosy_units["red"], cosy_units["blue"], cosy_units["constant"]
    run_dir = tmp_path / "run"
    shutil.copytree(cosy_run.path, run_dir)
    clip_dissect = tmp_path / "cd.csv"
    clip_dissect.write_text(
        "layer,unit,description,similarity\n"
        f"planted,{red},red,0.61\nplanted,{blue},star,0.4\nplanted,{constant},red,0.1\n"
        "planted,40,circle,0.2\n"
        "conv9,1,red,0.3\n"
    )
    vocabulary = tmp_path / "classes.txt"
    vocabulary.write_text("red\nstar\n")
    line_labels = {
        int(r["unit"]): r["label"] for r in csv.DictReader(open(run_dir / "results.csv"))
    }
    vocab = {int(r["unit"]): r["label"] for r in csv.DictReader(open(vocab_labels))}
    distinct = {*line_labels.values(), *vocab.values(), "red", "star"}
    before = _images_requested(cosy_toy_server)
    common = ["--server", cosy_toy_server, "--control", f"toy:{N_CONTROL}", "--n-images",
              str(N_IMAGES)]  # fmt: skip
    result = runner.invoke(
        eval_app,
        ["compare", "--labels", f"line={run_dir}", "--labels", f"vocab={vocab_labels}",
         "--labels", f"clip-dissect={clip_dissect}", "--vocabulary", str(vocabulary),
         "--cache-dir", str(tmp_path / "cache"), *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # one render per distinct label (whichever methods and units name it), plus the control set
    assert _images_requested(cosy_toy_server) - before == N_CONTROL + N_IMAGES * len(distinct)
    assert "clip-dissect: layer 'planted' of planted:shapes has units 0 to 27; labels not " \
        "scored: unit 40" in result.output  # fmt: skip
    assert "clip-dissect: planted:shapes has no layer 'conv9'" in result.output
    with (run_dir / "compare.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [(row["method"], row["layer"], row["neurons"]) for row in table] == [
        ("line", "planted", "3"), ("vocab", "planted", "3"), ("clip-dissect", "planted", "3"),
    ]  # fmt: skip
    assert table[2]["new_concepts"] == "0.0"  # red and star are both in the vocabulary
    assert table[0]["source"] == str(run_dir)
    summary = (run_dir / "compare.md").read_text()
    assert "| line | planted | 3 |" in summary and "Wilcoxon" in summary
    assert Image.open(run_dir / "compare.png").size[0] > 300
    assert "wrote" in result.output and "compare.png" in result.output

    # the same labels scored alone by `line eval cosy` give the same figures
    for name, labels in (("vocab", vocab_labels), ("clip-dissect", clip_dissect)):
        cosy = runner.invoke(eval_app, ["cosy", str(run_dir), "--labels", str(labels), *common])
        assert cosy.exit_code == 0, cosy.output
        alone = list(csv.DictReader(open(run_dir / f"cosy-{labels.stem}.csv")))
        together = list(csv.DictReader(open(run_dir / f"cosy-{name}.csv")))
        assert together == alone
    cosy = runner.invoke(eval_app, ["cosy", str(run_dir), *common])
    assert cosy.exit_code == 0, cosy.output
    assert list(csv.DictReader(open(run_dir / "cosy.csv"))) == list(
        csv.DictReader(open(run_dir / "cosy-line.csv"))
    )
    scores = {r["unit"]: float(r["AUC"]) for r in csv.DictReader(open(run_dir / "cosy-line.csv"))}
    assert scores[str(red)] > 0.9 and scores[str(constant)] == 0.5


def test_compare_bad_input_says_what_to_do(cosy_run, vocab_labels, tmp_path):
    def compare(*labels: str) -> str:
        args = ["compare", *(arg for spec in labels for arg in ("--labels", spec))]
        result = runner.invoke(eval_app, [*args, "--control", "toy:4"])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    run = str(cosy_run.path)
    assert "two --labels are named 'line'" in compare(f"line={run}", f"line={vocab_labels}")
    assert "name at least one LINE run folder" in compare(f"vocab={vocab_labels}")
    assert "needs a name and a path" in compare(run)
    assert "does not exist" in compare(f"line={run}", f"x={tmp_path / 'missing.csv'}")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(cosy_run.config, unfinished / "config.json")
    assert f"has no results.csv yet; finish it with `line run --resume {unfinished}`" in compare(
        f"line={unfinished}"
    )
    odd = tmp_path / "odd.csv"
    odd.write_text("id,text\n1,red\n")
    assert "has the columns id, text; a labels file needs one of" in compare(
        f"line={run}", f"odd={odd}"
    )


def test_parse_method_sources_keeps_order(tmp_path):
    (tmp_path / "a.csv").write_text("unit,label\n0,red\n")
    assert parse_method_sources([f"b={tmp_path}", f" a = {tmp_path / 'a.csv'}"]) == [
        ("b", tmp_path),
        ("a", tmp_path / "a.csv"),
    ]
    with pytest.raises(ValueError, match="must start with a letter"):
        parse_method_sources([f"a/b={tmp_path}"])


def test_method_table_and_tests_on_known_figures():
    def rows(aucs, layer="l"):
        return [
            {"layer": layer, "unit": unit, "concept": f"c{unit}", "auc": auc, "mad": 10 * auc}
            for unit, auc in enumerate(aucs)
        ]

    a = [0.9, 0.8, 0.95, 0.7, 0.85, 0.99]
    b = [0.6, 0.75, 0.5, 0.72, 0.55, 0.6, 0.9]  # one more neuron than a: not paired
    table = method_table({"a": rows(a), "b": rows(b)}, vocabulary=["c0", "c1"])
    assert [(row["method"], row["neurons"]) for row in table] == [("a", 6), ("b", 7)]
    assert table[0]["auc"] == f"{sum(a) / 6:.3g} ± {stats.tstd(a):.3g}"
    assert table[0]["new_concepts"] == pytest.approx(4 / 6)
    auc, mad = method_tests({"a": rows(a), "b": rows(b)})
    expected = stats.wilcoxon(a, b[:6])
    assert (auc["metric"], auc["neurons"], mad["metric"]) == ("AUC", 6, "MAD")
    assert auc["p"] == pytest.approx(expected.pvalue)
    assert auc["mean_difference"] == pytest.approx(sum(a) / 6 - sum(b[:6]) / 6)
