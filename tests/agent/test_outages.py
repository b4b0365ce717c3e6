"""One outage, one wait: an inference server or LLM endpoint that stops answering is waited for
by every neuron together, the outage is counted in the results, and one that outlasts the
patience stops the run with a clear message and a folder that resumes."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import time

from agent.run_folder import RunFolder
from inference.app import create_app, start_server_thread
from testing.cuttable_proxy import CuttableProxy, start_cuttable_proxy
from testing.scripted_llm import ProposerPolicy, start_scripted_llm
from testing.toy_service import toy_world_service

TOY = ["--target", "planted:shapes", "--layer", "planted", "--generator", "procedural:shapes"]
LINE = [sys.executable, "-m", "cli.app"]
OPENAI = "openai-compatible:scripted"
UNITS = list(range(16))


def results(folder: RunFolder) -> list[dict]:
    with folder.results_csv.open() as stream:
        return list(csv.DictReader(stream))


def wait_until(condition, alive, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert alive(), "the run ended before the outage"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def run_through_an_outage(explain, tmp_path, cut: CuttableProxy, llm, server_url, llm_url):
    """A 16-neuron run, cut off from one endpoint for about 2 s in the middle; returns the
    run's rows and folder and the connections the proxy refused while cut."""
    outcome: dict = {}

    def go() -> None:
        outcome["run"] = explain(
            server_url, tmp_path / "run", UNITS, llm=OPENAI, llm_base_url=llm_url,
            iterations=4, concurrency=len(UNITS),
        )  # fmt: skip

    thread = threading.Thread(target=go)
    thread.start()
    wait_until(lambda: llm.stats.requests >= len(UNITS), thread.is_alive)
    cut.cut()
    time.sleep(2.0)  # the endpoint is unreachable for a while
    refused = cut.stats.while_cut
    cut.restore()
    thread.join(300)
    rows, folder = outcome["run"]
    return rows, folder, refused


def assert_waited_together(rows, folder: RunFolder, endpoint: str, refused: int) -> None:
    assert [row["status"] for row in rows] == ["done"] * len(UNITS)
    [outage] = folder.read_outages()
    assert outage.endpoint == endpoint and outage.outcome == "recovered"
    assert outage.waiting_neurons >= 2  # several neurons waited for the same outage
    waited = [row for row in rows if row["outages"]]
    assert len(waited) == outage.waiting_neurons
    assert all(row["outages"] == 1 and row["outage_s"] > 0 for row in waited)
    table = results(folder)
    assert sum(int(row["outages"]) for row in table) == outage.waiting_neurons
    # attempts during the outage: the requests in flight when it began and one prober, not a
    # retry loop per neuron
    assert outage.probes < len(UNITS)
    assert refused < len(UNITS)


def test_a_server_outage_is_waited_for_once_by_every_neuron(explain, tmp_path):
    server = start_server_thread(create_app(toy_world_service(tmp_path / "store")))
    try:
        with (
            start_cuttable_proxy(server.url) as proxy,
            start_scripted_llm(ProposerPolicy(), latency_ms=30) as llm,
        ):
            rows, folder, refused = run_through_an_outage(
                explain, tmp_path, proxy, llm, proxy.url, llm.url
            )
    finally:
        server.stop()
    assert_waited_together(rows, folder, f"inference server {proxy.url}", refused)


def test_an_llm_outage_is_waited_for_once_by_every_neuron(explain, tmp_path):
    server = start_server_thread(create_app(toy_world_service(tmp_path / "store")))
    try:
        with (
            start_scripted_llm(ProposerPolicy(), latency_ms=30) as llm,
            start_cuttable_proxy(llm.url) as proxy,
        ):
            rows, folder, refused = run_through_an_outage(
                explain, tmp_path, proxy, llm, server.url, proxy.url
            )
    finally:
        server.stop()
    assert_waited_together(rows, folder, f"LLM endpoint {proxy.url}", refused)
    # the calls in flight when it went down failed once each, and were asked again
    assert 0 < sum(row["connection_errors"] for row in rows) <= len(UNITS)


def test_an_outage_longer_than_the_patience_stops_the_run_and_resume_finishes_it(tmp_path):
    out = tmp_path / "run"
    server = start_server_thread(create_app(toy_world_service(tmp_path / "store")))
    folder = RunFolder(out)
    try:
        with (
            start_cuttable_proxy(server.url) as proxy,
            start_scripted_llm(ProposerPolicy(), latency_ms=30) as llm,
        ):
            run = subprocess.Popen(
                [*LINE, "run", *TOY, "--units", "0-7", "--llm", OPENAI, "--llm-base-url",
                 llm.url, "--out", str(out), "--server", proxy.url, "--iterations", "6",
                 "--concurrency", "8", "--outage-patience", "1", "--quiet", "--no-groups"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            wait_until(lambda: llm.stats.requests >= 12, lambda: run.poll() is None)
            proxy.cut()  # and it never comes back during this run
            output, _ = run.communicate(timeout=300)
            assert run.returncode == 4, output
            assert f"inference server {proxy.url}" in output
            assert f"line run --resume {out}" in output
            assert "--outage-patience" in output
            stopped = results(folder)
            assert {row["status"] for row in stopped} <= {"done", "unfinished"}
            assert any(row["status"] == "unfinished" for row in stopped)
            [outage] = folder.read_outages()
            assert outage.outcome == "gave up" and outage.seconds >= 1
            assert outage.endpoint == f"inference server {proxy.url}"
            assert (out / "report" / "index.html").is_file()  # the report so far
            assert "gave up" in (out / "report" / "index.html").read_text()

            proxy.restore()
            resumed = subprocess.run(
                [*LINE, "run", "--resume", str(out), "--quiet", "--no-groups", "--no-report"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
    finally:
        server.stop()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [row["status"] for row in results(folder)] == ["done"] * 8
    assert [record.outcome for record in folder.read_outages()] == ["gave up"]
