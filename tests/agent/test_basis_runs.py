"""Runs in a unit basis: the toy world's SAE and directions explained through `line run` and
`line eval groundtruth`, dead latents marked before the run, the cache reused by a second run."""

from __future__ import annotations

import asyncio
import csv
import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from agent.launch import execute_run, settings_from_options
from agent.run_folder import RunFolder
from cli.app import app
from inference.app import create_app, start_server_thread
from inference.bases import BasisRegistry, load_basis, write_sae
from inference.registry import load_generator, load_target
from inference.service import open_service
from inference.store import default_cache_dir
from tools.client import LineClient
from tools.controlset import RANDOM_CONCEPT_CONTROL_SIZE
from tools.server_session import RunSetupError, server_session
from toyworld.latents import write_toy_bases
from toyworld.vocabulary import parse_attributes

runner = CliRunner()
TOY = ["--target", "planted:shapes", "--layer", "planted", "--generator", "procedural:shapes"]
TRIANGLE, DENSE, DEAD = 5, 6, 7  # latents of the toy bases (toyworld.latents)


@pytest.fixture(scope="module")
def toy_bases(tmp_path_factory) -> dict[str, str]:
    """The toy SAE and directions on disk: their specs by kind."""
    return write_toy_bases(tmp_path_factory.mktemp("toy-bases"))


@pytest.fixture(scope="module")
def loopback_server():
    """A toy-world server on loopback (it loads bases by path), sharing the session's store."""
    service = open_service(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        default_cache_dir() / "store",
        bases=BasisRegistry(allow_paths=True),
    )
    running = start_server_thread(create_app(service))
    yield running.url
    running.stop()


def _results(folder: RunFolder) -> dict[int, dict[str, str]]:
    return {int(row["unit"]): row for row in folder.read_results()}


def test_line_run_explains_toy_directions_and_marks_the_dead_one(toy_bases, tmp_path):
    spec = toy_bases["directions"]
    out = tmp_path / "run"
    args = [*TOY, "--basis", spec, "--units", f"{TRIANGLE},{DEAD}", "--llm", "offline:vocab",
            "--iterations", "13", "--out", str(out), "--quiet", "--no-groups",
            "--no-report"]  # fmt: skip
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    folder = RunFolder(out)
    basis = load_basis(spec)
    config = json.loads(folder.config.read_text())
    assert config["layer"] == f"planted@{basis.key}"
    assert (config["basis"], config["basis_hash"]) == (basis.source, basis.hash)
    rows = _results(folder)
    assert rows[TRIANGLE]["status"] == "done"
    assert parse_attributes(rows[TRIANGLE]["label"]) == {"triangle"}
    assert rows[DEAD]["status"] == "dead" and rows[DEAD]["label"] == ""
    assert rows[DEAD]["selective"] == "False"
    # the census reads the run's control set: without --control, the generator's random concepts
    size = RANDOM_CONCEPT_CONTROL_SIZE
    census_images = f"{size} census images (random-concepts:toy:{size})"
    assert f"fires on none of the {census_images}" in rows[DEAD]["reason"]
    assert rows[DEAD]["llm_calls"] == "0" and rows[DEAD]["images"] == "0"
    census = folder.evaluation("census")
    with census.csv.open() as stream:
        statuses = {int(row["unit"]): row["status"] for row in csv.DictReader(stream)}
    assert statuses == {TRIANGLE: "live", DEAD: "dead"}
    assert "1 of 2 units dead (7)" in census.summary.read_text()


def test_a_second_run_over_the_same_images_runs_no_model(toy_bases, loopback_server, tmp_path):
    """The loopback server is given the SAE by path at run start; the second run finds every
    image in the store and every layer vector in the cache."""

    def run(out: str) -> list[dict]:
        settings, folder = settings_from_options(
            target="planted:shapes", layer="planted", units=f"{TRIANGLE},{DENSE}",
            llm="offline:vocab", prompts="paper", out=tmp_path / out, server=loopback_server,
            concurrency=4, seed=0, iterations=2, basis=toy_bases["sae"],
        )  # fmt: skip
        return execute_run(settings, folder)

    def counters() -> dict[str, float]:
        async def read() -> str:
            async with LineClient(loopback_server) as client:
                return await client.metrics_text()

        text = asyncio.run(read())
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    first = run("first")
    before = counters()
    second = run("second")
    after = counters()
    assert [row["status"] for row in first] == ["done", "done"]
    assert [row["label"] for row in second] == [row["label"] for row in first]
    for name in ("line_images_generated_total", "line_activations_computed_total"):
        assert after.get(name, 0.0) == before.get(name, 0.0), name
    hits = "line_activation_cache_hits_total"
    assert after[hits] >= before[hits] + 64 + sum(row["images"] for row in second)


def test_groundtruth_scores_the_toy_sae_latents(toy_bases, tmp_path):
    out = tmp_path / "gt"
    args = ["eval", "groundtruth", "--basis", toy_bases["sae"], "--units", f"{TRIANGLE}-{DEAD}",
            "--iterations", "13", "--no-baseline", "--out", str(out), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with (out / "groundtruth.csv").open() as stream:
        rows = {int(row["unit"]): row for row in csv.DictReader(stream)}
    assert rows[TRIANGLE]["truth"] == "triangle" and rows[TRIANGLE]["recovered"] == "True"
    assert rows[DENSE]["kind"] == "none" and rows[DENSE]["claimed"] == "False"
    assert rows[DEAD]["status"] == "dead" and rows[DEAD]["verdict_right"] == "True"
    with (out / "groundtruth-summary.csv").open() as stream:
        summary = {row["kind"]: row for row in csv.DictReader(stream)}
    assert summary["single"]["recovery"] == "1.0"
    assert summary["none"]["false_claims"] == "0.0"


def _wide_sae(folder) -> str:
    rng = np.random.default_rng(0)
    tensors = {"W_enc": rng.normal(size=(16, 4)).astype(np.float32)}
    return f"sae:{write_sae(folder / 'wide', tensors, {})}"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda bases, _tmp: [*TOY, "--basis", bases["sae"], "--units", "0-8"],
         "unit 8 is out of range: basis sae:{bases}/shapes-sae has 8 latents, indices 0 to 7"),
        (lambda _bases, tmp: [*TOY, "--basis", _wide_sae(tmp), "--units", "0"],
         "reads 16-wide vectors (d_in 16), but layer 'planted' of 'planted:shapes' has 28 units"),
        (lambda _bases, tmp: [*TOY, "--basis", f"directions:{tmp / 'none.npy'}", "--units", "0"],
         "none.npy does not exist"),
    ],
)  # fmt: skip
def test_bad_basis_runs_fail_with_what_is_wrong(toy_bases, tmp_path, make_args, message):
    args = [*make_args(toy_bases, tmp_path), "--llm", "offline:vocab", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2, result.output
    folder = toy_bases["sae"].removeprefix("sae:").removesuffix("/shapes-sae")
    assert message.format(bases=folder) in " ".join(result.output.split())
    assert not (tmp_path / "r" / "config.json").exists()


def test_a_given_server_checks_the_basis_width(loopback_server, tmp_path):
    spec = _wide_sae(tmp_path)
    layer = f"planted@{load_basis(spec).key}"
    with pytest.raises(RunSetupError, match="reads 16-wide vectors"):
        with server_session(loopback_server, "planted:shapes", layer, [0], None, basis=spec):
            pass


def test_groundtruth_needs_a_toy_basis(tmp_path):
    rng = np.random.default_rng(1)
    spec = f"sae:{write_sae(tmp_path / 'other', {'W_enc': rng.normal(size=(28, 3))}, {})}"
    result = runner.invoke(app, ["eval", "groundtruth", "--basis", spec, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not one of the toy world's bases" in result.output


def test_resume_refuses_a_changed_basis(toy_bases, tmp_path):
    folder = tmp_path / "bases"
    specs = write_toy_bases(folder)
    settings, run_folder = settings_from_options(
        target="planted:shapes", layer="planted", units="0", llm="offline:vocab",
        prompts="paper", out=tmp_path / "run", generator="procedural:shapes", concurrency=1,
        seed=0, basis=specs["sae"],
    )  # fmt: skip
    run_folder.create(settings)
    weights = folder / "shapes-sae" / "sae_weights.safetensors"
    rng = np.random.default_rng(2)
    write_sae(weights.parent, {"W_enc": rng.normal(size=(28, 8))}, {})
    with pytest.raises(RunSetupError, match="changed since the run started"):
        settings_from_options(prompts="paper", concurrency=1, seed=0, resume=tmp_path / "run")
