"""Load test: 1,000 concurrent neurons in one ``line run`` process; its peak memory per neuron.

The server (``procedural:shapes`` + the 1,024-unit ``bench/wide_toy.py`` target) and the scripted
LLM run in their own processes, so the runner's peak resident memory is its own. It is measured
twice, for a 1-neuron run and for the big run, and the difference is divided by the extra neurons.

``python -m bench.load_bench [--neurons 1000] [--iterations 2]``; ``make bench`` runs it and
writes ``bench-results/load.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from inference.app import free_port

ROOT = Path(__file__).resolve().parent.parent
TARGET = f"python:{ROOT / 'bench' / 'wide_toy.py'}:build"
LINE = [sys.executable, "-m", "cli.app"]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited at start")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start")
        time.sleep(0.2)


def _run(
    server: str, llm: str, out: Path, units: str, iterations: int
) -> tuple[float, float, list[dict]]:
    """One ``line run`` process: its wall time, its own peak RSS (MB) and its result rows.

    The peak comes from ``os.wait4`` on the runner's pid, so it is the runner's alone: neither the
    server nor the scripted LLM (children of this process too) is in it.
    """
    command = [
        *LINE, "run", "--target", TARGET, "--layer", "relu", "--units", units,
        "--llm", "openai-compatible:scripted", "--llm-base-url", llm, "--server", server,
        "--out", str(out), "--iterations", str(iterations), "--concurrency", "1000",
        "--quiet", "--no-groups", "--no-report",
    ]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        runner = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(runner.pid, 0)
        runner.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        if runner.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"line run failed:\n{output.read().decode(errors='replace')}")
    with (out / "results.csv").open() as stream:
        return elapsed, usage.ru_maxrss / 1024, list(csv.DictReader(stream))  # Linux: KiB


def measure(neurons: int = 1000, iterations: int = 2) -> dict:
    """Run 1 neuron, then ``neurons`` at once; figures of the big run."""
    with tempfile.TemporaryDirectory(prefix="line-load-") as folder:
        folder = Path(folder)
        port, llm_port = free_port(), free_port()
        env = {**os.environ, "LINE_CACHE": str(folder / "cache")}
        server = subprocess.Popen(
            [*LINE, "serve", "--generator", "procedural:shapes", "--target", TARGET,
             "--device", "cpu", "--port", str(port), "--store", str(folder / "store"),
             "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        llm = subprocess.Popen(
            [sys.executable, "-m", "testing.scripted_llm", "--port", str(llm_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url, llm_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{llm_port}/v1"
            _wait_healthy(f"{url}/healthz", server)
            _wait_healthy(f"{llm_url}/models", llm)
            _, one_mb, _ = _run(url, llm_url, folder / "one", "0", iterations)
            elapsed, many_mb, rows = _run(
                url, llm_url, folder / "many", f"0-{neurons - 1}", iterations
            )
        finally:
            for process in (server, llm):
                process.terminate()
                process.wait(timeout=30)
    done = sum(row["status"] == "done" for row in rows)
    images = sum(int(row["images"]) for row in rows)
    return {
        "neurons": neurons,
        "iterations": iterations,
        "done": done,
        "failed": len(rows) - done,
        "wall_s": round(elapsed, 1),
        "neurons_per_min": round(neurons / elapsed * 60, 1),
        "images": images,
        "images_per_s": round(images / elapsed, 1),
        "runner_peak_rss_mb_1_neuron": round(one_mb, 1),
        "runner_peak_rss_mb": round(many_mb, 1),
        "runner_kb_per_neuron": round((many_mb - one_mb) * 1024 / max(neurons - 1, 1), 1),
    }


def run(neurons: int = 1000, iterations: int = 2) -> dict:
    """``make bench``: print the figures and write ``bench-results/load.json``."""
    figures = measure(neurons, iterations)
    print(
        f"{figures['neurons']} concurrent neurons ({iterations} rounds each): "
        f"{figures['done']} done, {figures['failed']} failed in {figures['wall_s']} s "
        f"({figures['neurons_per_min']} neurons/min, {figures['images_per_s']} images/s); "
        f"runner peak RSS {figures['runner_peak_rss_mb']} MB "
        f"(1 neuron: {figures['runner_peak_rss_mb_1_neuron']} MB), "
        f"{figures['runner_kb_per_neuron']} KB per neuron"
    )
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=2)
    arguments = parser.parse_args()
    run(arguments.neurons, arguments.iterations)
