"""Small local models and a runner that says what is wrong: a chat model that ignores the answer
format at a 2048-token context, pre-flight before a run folder exists, what `--resume` may
change, and exit statuses a scheduler can read."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from agent.run_folder import RunFolder
from cli.app import app
from inference.app import free_port
from prompts.variant import PROMPTS_DIR
from testing.scripted_llm import ChatDebrisPolicy, Reply, ScriptedReplies, start_scripted_llm
from tools.scoreboard import validate_concept

runner = CliRunner()
TOY = ["--target", "planted:shapes", "--layer", "planted"]
QUIET = ["--quiet", "--no-report", "--no-groups"]


def line_run(*args: str):
    return runner.invoke(app, ["run", *args])


@pytest.mark.parametrize("prompts", ["paper", "agentic"])
def test_a_chatty_small_model_at_2048_tokens_fails_no_neuron_and_labels_no_debris(
    toy_world_server, tmp_path, prompts
):
    out = tmp_path / "run"
    with start_scripted_llm(ChatDebrisPolicy(), context_window=2048) as llm:
        result = line_run(
            *TOY, "--units", "0-5", "--server", toy_world_server, "--llm", "openai-compatible:smol",
            "--llm-base-url", llm.url, "--prompts", prompts, "--iterations", "5", "--out",
            str(out), *QUIET,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert llm.stats.overflows == 0 and llm.stats.max_prompt_tokens <= 2048
    rows = RunFolder(out).read_results()
    assert [row["status"] for row in rows] == ["done"] * 6
    for row in rows:
        assert validate_concept(row["label"]) == row["label"]
    histories = RunFolder(out).records()
    refused = sum(int(row["reasks"]) + int(row["tool_errors"]) for row in rows)
    assert refused > 0  # debris came, and was re-asked (paper) or answered as a tool error
    if prompts == "paper":
        for history in histories:  # a re-ask replaces the last one: the request never grows
            assert all(len(entry["request"]) <= 4 for entry in history.llm_log)
    else:  # the agentic conversation outgrew the window and was trimmed
        assert sum(h.counter("trimmed_turns") for h in histories) > 0
    assert json.loads(RunFolder(out).config.read_text())["llm_context"] is None  # read, not given


def test_an_unreachable_llm_fails_in_seconds_and_leaves_no_run_folder(toy_world_server, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    result = line_run(
        *TOY, "--units", "0", "--server", toy_world_server, "--llm", "openai-compatible:smol",
        "--llm-base-url", url, "--out", str(tmp_path / "run"), *QUIET,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 10
    assert f"cannot reach the LLM server at {url}" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_takes_a_new_llm_address_and_concurrency_and_records_them(
    toy_world_server, tmp_path
):
    out = tmp_path / "run"
    with start_scripted_llm(ChatDebrisPolicy(max_debris=0)) as first:
        common = [*TOY, "--units", "0", "--server", toy_world_server, "--iterations", "1"]
        result = line_run(
            *common, "--llm", "openai-compatible:smol", "--llm-base-url", first.url,
            "--out", str(out), *QUIET,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    dead = f"http://127.0.0.1:{free_port()}/v1"
    refused = line_run("--resume", str(out), "--llm-base-url", dead, *QUIET)
    assert refused.exit_code == 2 and "cannot reach the LLM server" in refused.output
    with start_scripted_llm(ChatDebrisPolicy(max_debris=0)) as second:
        resumed = line_run(
            "--resume", str(out), "--llm-base-url", second.url, "--concurrency", "3",
            "--llm-max-tokens", "64", *QUIET,
        )  # fmt: skip
        assert resumed.exit_code == 0, resumed.output
    config = json.loads(RunFolder(out).config.read_text())
    assert config["llm_base_url"] == second.url and config["concurrency"] == 3
    changes = {change["setting"]: change for change in config["history"]}
    assert changes["llm_base_url"]["old"] == first.url
    assert changes["llm_base_url"]["new"] == second.url
    assert changes["concurrency"]["old"] == 64 and changes["concurrency"]["new"] == 3
    assert changes["llm_max_tokens"]["old"] is None and config["llm_max_tokens"] == 64


def test_a_placeholder_typo_fails_before_anything_runs(tmp_path):
    variant = tmp_path / "mine"
    shutil.copytree(PROMPTS_DIR / "paper", variant)
    (variant / "image_prompt.txt").write_text("a photo of a $concpt, $angle, $lighting")
    result = line_run(
        *TOY, "--units", "0", "--generator", "procedural:shapes", "--llm", "offline:vocab",
        "--prompts", str(variant), "--out", str(tmp_path / "run"), *QUIET,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "uses $concpt" in result.output and "did you mean $concept?" in result.output
    assert not (tmp_path / "run").exists()


def test_a_changed_variant_is_refused_on_resume_unless_allowed(toy_world_server, tmp_path):
    variant, out = tmp_path / "mine", tmp_path / "run"
    shutil.copytree(PROMPTS_DIR / "paper", variant)
    common = [*TOY, "--units", "0", "--server", toy_world_server, "--llm", "offline:vocab"]
    first = line_run(*common, "--prompts", str(variant), "--iterations", "1", "--out", str(out))
    assert first.exit_code == 0, first.output
    proposal = variant / "proposal.txt"
    proposal.write_text(proposal.read_text() + "\nThink about textures first.\n")
    refused = line_run("--resume", str(out), *QUIET)
    assert refused.exit_code == 2
    assert "changed since" in refused.output and "--allow-variant-change" in refused.output
    allowed = line_run("--resume", str(out), "--allow-variant-change", "--quiet")
    assert allowed.exit_code == 0, allowed.output
    config = json.loads(RunFolder(out).config.read_text())
    assert [change["setting"] for change in config["history"]] == ["variant"]
    assert "prompt variant changed" in (out / "report" / "index.html").read_text()
    again = line_run("--resume", str(out), *QUIET)  # the edited variant is the run's now
    assert again.exit_code == 0, again.output


class Debris:
    """Never a usable answer."""

    def respond(self, request):
        return Reply.text_reply("no")


def test_exit_status_three_when_the_run_finished_with_failed_neurons(toy_world_server, tmp_path):
    with start_scripted_llm(ScriptedReplies([], then=Debris())) as llm:
        result = line_run(
            *TOY, "--units", "0-1", "--server", toy_world_server, "--llm",
            "openai-compatible:smol", "--llm-base-url", llm.url, "--iterations", "1",
            "--out", str(tmp_path / "run"), "--no-report", "--no-groups",
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "rerun with --resume" in result.output
    assert [row["status"] for row in RunFolder(tmp_path / "run").read_results()] == ["failed"] * 2
