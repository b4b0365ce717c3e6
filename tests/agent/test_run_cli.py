"""`line run` as users run it: fail-fast checks, resuming a finished run, concurrency, caching."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent.run_folder import RunFolder
from cli.app import app
from inference.app import free_port
from testing.scripted_llm import ProposerPolicy, start_scripted_llm

runner = CliRunner()
TOY = ["--target", "planted:shapes", "--layer", "planted", "--generator", "procedural:shapes"]


def line_run(*args: str):
    return runner.invoke(app, ["run", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*TOY, "--units", "0-3", "--llm", "offline:vocab", "--out", "{out}", "--prompts",
          "papper"], "unknown prompt variant 'papper'"),
        ([*TOY, "--units", "0-99", "--llm", "offline:vocab", "--out", "{out}"],
         "unit 28 is out of range: layer 'planted' of 'planted:shapes' has 28 units"),
        (["--target", "planted:shapes", "--layer", "conv9", "--generator", "procedural:shapes",
          "--units", "0", "--llm", "offline:vocab", "--out", "{out}"],
         "has no layer 'conv9'; valid layers: planted, features"),
        (["--target", "torchvision:resnet19", "--layer", "fc", "--generator", "tiny-sd",
          "--units", "0", "--llm", "offline:vocab", "--out", "{out}"],
         "no classification model 'resnet19'"),
        ([*TOY, "--units", "x", "--llm", "offline:vocab", "--out", "{out}"], "cannot read units"),
        ([*TOY, "--units", "0", "--llm", "openai:gpt-4o-mini", "--out", "{out}"],
         "OPENAI_API_KEY"),
        ([*TOY, "--units", "0", "--llm", "offline:vocab"], "missing --out"),
        (["--target", "planted:shapes", "--layer", "planted", "--units", "0", "--llm",
          "offline:vocab", "--out", "{out}"], "needs --generator"),
        (["--target", "planted:shapes", "--layer", "planted", "--units", "0", "--llm",
          "offline:vocab", "--out", "{out}", "--server", "http://127.0.0.1:{port}"],
         "cannot reach the inference server"),
    ],
)  # fmt: skip
def test_bad_runs_fail_fast_with_a_clear_message(tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    filled = [a.format(out=tmp_path / "run", port=free_port()) for a in args]
    result = line_run(*filled)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_an_existing_run_folder_is_not_overwritten(tmp_path):
    args = [*TOY, "--units", "0", "--llm", "offline:vocab", "--out", str(tmp_path / "run"),
            "--iterations", "1", "--quiet"]  # fmt: skip
    first = line_run(*args)
    assert first.exit_code == 0, first.output
    again = line_run(*args)
    assert again.exit_code == 2 and "already holds a run; continue it with --resume" in again.output
    resumed = line_run("--resume", str(tmp_path / "run"), "--quiet")
    assert resumed.exit_code == 0, resumed.output
    header = (tmp_path / "run" / "results.csv").read_text().splitlines()[0]
    assert header.endswith(",groups,group_concepts")  # polysemanticity columns
    assert f"report: {tmp_path / 'run' / 'report' / 'index.html'}" in resumed.output
    assert (tmp_path / "run" / "report" / "index.html").is_file()


def csv_rows(folder):
    import csv

    with folder.results_csv.open() as stream:
        yield from csv.DictReader(stream)


def test_32_concurrent_neurons_meet_in_server_batches(tmp_path, tiny_sd, resnet18, explain):
    import asyncio
    import re

    from inference.app import create_app, start_server_thread
    from inference.service import BatchingConfig, open_service
    from tools.client import LineClient

    service = open_service(
        [tiny_sd], [resnet18], tmp_path / "s", batching=BatchingConfig(max_batch=64, max_wait_ms=20)
    )
    running = start_server_thread(create_app(service))
    try:
        rows, _ = explain(
            running.url, tmp_path / "run", list(range(32)), target="torchvision:resnet18:random",
            layer="layer1", concurrency=32, iterations=1,
        )  # fmt: skip

        async def metrics():
            async with LineClient(running.url) as client:
                return await client.metrics_text()

        text = asyncio.run(metrics())
    finally:
        running.stop()
    assert all(row["status"] == "done" for row in rows)
    count = float(re.search(r'line_batch_size_count\{backend="tiny-sd"\} (\S+)', text)[1])
    total = float(re.search(r'line_batch_size_sum\{backend="tiny-sd"\} (\S+)', text)[1])
    assert total / count > 5  # 32 neurons' 5-image requests were merged


def test_llm_cache_makes_a_repeated_run_cost_no_calls(tmp_path):
    cache = tmp_path / "llm-cache"
    with start_scripted_llm(ProposerPolicy()) as llm:
        common = [*TOY, "--units", "0-1", "--llm", "openai-compatible:scripted", "--llm-base-url",
                  llm.url, "--iterations", "2", "--llm-cache", str(cache), "--quiet",
                  "--no-report"]  # fmt: skip
        first = line_run(*common, "--out", str(tmp_path / "a"))
        after_first = llm.stats.requests
        second = line_run(*common, "--out", str(tmp_path / "b"))
        assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
        assert after_first == 2 * 3 and llm.stats.requests == after_first
    first_rows = list(csv_rows(RunFolder(tmp_path / "a")))
    second_rows = list(csv_rows(RunFolder(tmp_path / "b")))
    assert [r["label"] for r in first_rows] == [r["label"] for r in second_rows]
    assert [r["llm_calls"] for r in first_rows] == ["3", "3"]
    assert [r["llm_calls"] for r in second_rows] == ["0", "0"]  # every answer came from the cache


def test_json_output_for_scripts(tmp_path):
    result = line_run(
        *TOY, "--units", "0,9", "--llm", "offline:vocab", "--out", str(tmp_path / "run"),
        "--iterations", "1", "--json", "--no-groups", "--no-report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["run_folder"] == str(tmp_path / "run") and answer["report"] is None
    assert [row["unit"] for row in answer["neurons"]] == [0, 9]
    assert all(row["status"] == "done" and row["label"] for row in answer["neurons"])


def test_a_learned_target_runs_end_to_end_with_a_verdict(tmp_path):
    """learned:shapes through `line run`: every neuron gets a label and a selective verdict."""
    out = tmp_path / "learned"
    result = line_run(
        "--target", "learned:shapes", "--layer", "conv4", "--units", "0-2",
        "--generator", "procedural:shapes", "--llm", "offline:vocab", "--iterations", "3",
        "--out", str(out), "--no-report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = RunFolder(out).read_results()
    assert [row["status"] for row in rows] == ["done"] * 3
    assert all(row["selective"] in ("True", "False") for row in rows)
    assert all(row["verdict"] in ("selective", "weak", "none") for row in rows)
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in rows)  # the confirmed AUC
    assert all(
        float(row["score_low"]) <= float(row["score"]) <= float(row["score_high"]) for row in rows
    )
    assert "with a selective concept" in result.output
