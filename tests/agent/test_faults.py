"""Faults a long run meets, each survived with nothing lost: a server killed and restarted, the
runner killed and resumed, an LLM that misbehaves in every way we know."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from agent.run_folder import RunFolder
from inference.app import create_app, free_port, start_server_thread
from testing.scripted_llm import ProposerPolicy, Reply, ScriptedReplies, start_scripted_llm
from testing.toy_service import toy_world_service
from tools.controlset import RANDOM_CONCEPT_CONTROL_SIZE
from tools.retry import FaultKind, RetryPolicy

TOY = ["--target", "planted:shapes", "--layer", "planted", "--generator", "procedural:shapes"]
LINE = [sys.executable, "-m", "cli.app"]
OPENAI = "openai-compatible:scripted"


def results(folder: RunFolder) -> list[dict]:
    with folder.results_csv.open() as stream:
        return list(csv.DictReader(stream))


def history(folder: RunFolder, unit: int) -> dict:
    return json.loads(folder.record_path("planted", unit).read_text())


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)", text, re.M))


def stored_images(store) -> set[str]:
    return {path.stem for path in (store / "images").glob("*/*.png")}


def run_image_ids(folder: RunFolder, units) -> set[str]:
    """Every image a neuron's history uses: its search entries' and its confirmation's."""
    images: set[str] = set()
    for unit in units:
        neuron = history(folder, unit)
        for entry in [
            *neuron["entries"],
            *(neuron.get("confirmation") or {}).get("candidates", []),
        ]:
            images.update(entry["image_ids"])
    return images


def assert_no_holes(folder: RunFolder, unit: int, iterations: int) -> None:
    """Every round of the neuron is there once, measured on all its images."""
    neuron = history(folder, unit)
    proposals = [e for e in neuron["entries"] if e["source"] == "proposal"]
    assert [e["iteration"] for e in proposals] == list(range(1, iterations + 1)), unit
    for entry in neuron["entries"]:
        assert entry["image_ids"] and len(entry["activations"]) == len(entry["image_ids"])


def start_server_process(port: int, store) -> subprocess.Popen:
    command = [*LINE, "serve", "--generator", "procedural:shapes", "--target", "planted:shapes",
               "--device", "cpu", "--port", str(port), "--store", str(store)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "line serve exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "line serve did not start"
        time.sleep(0.1)


def wait_for(condition, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_server_killed_mid_run_and_restarted(tmp_path):
    store, out, port = tmp_path / "store", tmp_path / "run", free_port()
    units, iterations = list(range(8)), 6
    server = start_server_process(port, store)
    try:
        with start_scripted_llm(ProposerPolicy(), latency_ms=60) as llm:
            run = subprocess.Popen(
                [*LINE, "run", *TOY, "--units", "0-7", "--llm", OPENAI, "--llm-base-url",
                 llm.url, "--out", str(out), "--server", f"http://127.0.0.1:{port}",
                 "--iterations", str(iterations), "--concurrency", "8", "--quiet",
                 "--no-groups", "--no-report"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_for(lambda: llm.stats.requests >= 16, run)
            server.send_signal(signal.SIGKILL)
            server.wait()
            rendered_before = stored_images(store)
            time.sleep(1.0)  # the run keeps asking a server that is not there
            server = start_server_process(port, store)
            output, _ = run.communicate(timeout=300)
            assert run.returncode == 0, output.decode()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.kill()
        server.wait()
    folder = RunFolder(out)
    assert [row["status"] for row in results(folder)] == ["done"] * len(units)
    for unit in units:
        assert_no_holes(folder, unit, iterations)
    rendered_after = stored_images(store)
    assert rendered_before and rendered_before < rendered_after  # killed in the middle
    assert run_image_ids(folder, units) <= rendered_after
    # the restarted server rendered only images the store did not have
    assert metric(metrics, "line_images_generated_total") == len(rendered_after - rendered_before)


def test_runner_killed_and_resumed_repeats_no_step(tmp_path):
    out, units, iterations, concurrency = tmp_path / "run", list(range(8)), 6, 4
    service = toy_world_service(tmp_path / "store")
    server = start_server_thread(create_app(service))
    folder = RunFolder(out)
    resume = [*LINE, "run", "--resume", str(out), "--quiet", "--no-groups", "--no-report"]
    try:
        with start_scripted_llm(ProposerPolicy(), latency_ms=100) as llm:
            run = subprocess.Popen(
                [*LINE, "run", *TOY, "--units", "0-7", "--llm", OPENAI, "--llm-base-url",
                 llm.url, "--out", str(out), "--server", server.url, "--iterations",
                 str(iterations), "--concurrency", str(concurrency), "--quiet", "--no-groups",
                 "--no-report"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_for(lambda: any(folder.neurons.glob("*.json")) and llm.stats.requests >= 40, run)
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            killed_at = llm.stats.requests
            finished = {p.name: p.read_text() for p in folder.neurons.glob("*.json")}
            assert not folder.results_csv.exists()
            resumed = subprocess.run(resume, capture_output=True, text=True, timeout=300)
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            total_requests = llm.stats.requests
        metrics = service.render_metrics().decode()
    finally:
        server.stop()
    assert killed_at < total_requests
    assert [row["status"] for row in results(folder)] == ["done"] * len(units)
    for name, text in finished.items():  # neurons done before the kill were left alone
        assert folder.neurons.joinpath(name).read_text() == text
    recorded_calls = 0
    for unit in units:
        assert_no_holes(folder, unit, iterations)
        recorded_calls += history(folder, unit)["counters"]["llm_calls"]
    # every LLM call of a finished step is recorded once; only the calls in flight at the kill
    # (at most one per concurrent neuron) were lost and asked again
    assert 0 <= total_requests - recorded_calls <= concurrency
    # images: each rendered once; at most the in-flight steps' images were left unused
    used = run_image_ids(folder, units)
    rendered = metric(metrics, "line_images_generated_total")
    per_concept = len(history(folder, 0)["entries"][0]["image_ids"])
    # ...besides the control set, rendered once for the whole run
    control = RANDOM_CONCEPT_CONTROL_SIZE
    assert len(used) + control <= rendered <= len(used) + control + concurrency * per_concept


STORM = [
    Reply.rate_limited(0.05), Reply.rate_limited(0.05), Reply.rate_limited(0.05),  # a burst
    Reply.server_error(500), Reply.server_error(503),
    Reply.hang(3.0),  # longer than the client's 1 s timeout
    Reply.empty(),
    Reply.malformed_arguments("propose_concept"),
    Reply.unknown_tool(),
    Reply.long_concept("propose_concept"),  # 10,000 characters
]  # fmt: skip


def test_a_misbehaving_llm_is_survived_and_every_fault_counted(toy_world_server, explain, tmp_path):
    units = [0, 4, 9]
    with start_scripted_llm(ScriptedReplies(STORM)) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", units, llm=OPENAI, llm_base_url=llm.url,
            iterations=3, concurrency=1, llm_timeout_s=1,
            llm_retry=RetryPolicy(base_delay_s=0.01, max_attempts=8),
        )  # fmt: skip
    table = results(folder)
    assert [row["status"] for row in table] == ["done"] * 3
    assert all(row["label"] and len(row["label"]) < 200 for row in table)
    columns = ("rate_limited", "server_errors", "timeouts", "reasks", "lost_rounds", "faults")
    total = {key: sum(int(row[key]) for row in table) for key in columns}
    assert total["rate_limited"] == 3
    assert total["server_errors"] == 2
    assert total["timeouts"] == 1
    assert total["reasks"] == 4  # empty, malformed, unknown tool, 10,000 characters
    assert total["lost_rounds"] == 1  # four unusable answers in a row outlast the 3 re-asks
    assert total["faults"] == 3 + 2 + 1 + 4
    assert [row["faults"] for row in rows] == [int(row["faults"]) for row in table]


RESULTS_HEADER = [
    "target", "layer", "unit", "label", "score", "score_low", "score_high", "verdict",
    "selective", "mean_activation", "inhibitor", "inhibitor_score", "inhibitor_verdict",
    "search_score", "candidates", "choice", "status", "reason", "summary", "llm_calls", "tokens",
    "llm_images", "images", "edits", "confirmation_images", "reasks", "faults",
    "rate_limited", "server_errors", "timeouts", "connection_errors", "tool_errors",
    "lost_rounds", "restarts", "outages", "outage_s",
]  # fmt: skip
RETRIED_FAULTS = [
    Reply.disconnect(),  # the connection drops before the answer
    Reply.rate_limited(0),  # 429, Retry-After: 0
    Reply.server_error(502),
    Reply.hang(3.0),  # longer than the client's 1 s timeout
]


def test_each_retried_llm_fault_reaches_its_own_results_column_once(
    toy_world_server, explain, tmp_path
):
    with start_scripted_llm(ScriptedReplies(RETRIED_FAULTS)) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [6], llm=OPENAI, llm_base_url=llm.url,
            iterations=1, concurrency=1, llm_timeout_s=1,
            llm_retry=RetryPolicy(base_delay_s=0.01, max_attempts=5),
        )  # fmt: skip
    assert [llm.stats.count(reply.kind) for reply in RETRIED_FAULTS] == [1, 1, 1, 1]
    with folder.results_csv.open() as stream:
        # then the polysemanticity columns: a run groups each neuron's concepts by default
        assert next(csv.reader(stream)) == [*RESULTS_HEADER, "groups", "group_concepts"]
    [row] = results(folder)
    assert row["status"] == "done" and row["label"]
    assert {kind.value: row[kind.value] for kind in FaultKind} == {
        "rate_limited": "1",
        "server_errors": "1",
        "timeouts": "1",
        "connection_errors": "1",
    }
    assert (row["faults"], row["reasks"], row["tool_errors"]) == ("4", "0", "0")
    assert rows[0]["connection_errors"] == 1 and rows[0]["faults"] == 4
    assert history(folder, 6)["counters"]["connection_errors"] == 1


class EndlessToolCalls:
    """An agent that only ever renders, never measures nor concludes."""

    def respond(self, request):
        return Reply.tool_call("generate_images", concept="blue", n=2)


class AlwaysFailing:
    def respond(self, request):
        return Reply.server_error(500)


@pytest.mark.parametrize(
    ("prompts", "policy", "reason"),
    [
        ("agentic", EndlessToolCalls(), "no concept could be measured"),
        ("paper", AlwaysFailing(), "failed after 2 attempts"),
    ],
)
def test_a_neuron_that_cannot_finish_fails_with_its_reason_and_resume_retries_it(
    toy_world_server, explain, tmp_path, prompts, policy, reason
):
    budget = {"max_concepts": 3, "max_llm_turns": 6} if prompts == "agentic" else {}
    options = dict(
        llm=OPENAI, prompts=prompts, iterations=2, concurrency=1,
        llm_retry=RetryPolicy(base_delay_s=0.01, max_attempts=2), **budget,
    )  # fmt: skip
    with start_scripted_llm(policy) as bad:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [3], llm_base_url=bad.url, **options
        )
    assert rows[0]["status"] == "failed" and rows[0]["label"] == ""
    assert reason in rows[0]["reason"]
    first = history(folder, 3)
    assert first["status"] == "failed" and reason in first["reason"]
    calls_before = rows[0]["llm_calls"] + first["failed_calls"].get("llm_calls_failed", 0)
    faults_before = rows[0]["faults"]
    assert faults_before > 0 or prompts == "agentic"
    with start_scripted_llm(ProposerPolicy()) as good:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [3], llm_base_url=good.url, **options
        )
    assert rows[0]["status"] == "done" and rows[0]["label"]
    assert rows[0]["faults"] >= faults_before  # the first attempt's faults still count
    assert rows[0]["llm_calls"] > calls_before - first["failed_calls"].get("llm_calls_failed", 0)
    if prompts == "agentic":
        assert rows[0]["restarts"] == 1  # nothing was measured: the neuron started over
