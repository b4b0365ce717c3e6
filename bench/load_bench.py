"""Load test: 1,000 concurrent neurons in one ``line run`` process; its memory per neuron.

The server (``procedural:shapes`` + the 1,024-unit ``bench/wide_toy.py`` target) and the scripted
LLM run in their own processes, so the runner's resident memory is its own. The runner runs twice,
with 100 and with 1,000 neurons at once. While each runs, its RSS is sampled from ``/proc``; its
steady state is the median of the samples between 25% and 90% of the run's wall time (after
start-up and warm-up, before the results are written), and the memory per neuron is the
difference of the two steady states over the 900 extra neurons. The peak is the kernel's
``ru_maxrss`` of the big run. The runner's mapped files are read too: a runner that talks to a
remote server must not load torch.

``python -m bench.load_bench [--neurons 1000] [--iterations 2]``; ``make bench`` runs it and
writes ``bench-results/load.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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


@dataclass
class RunnerFigures:
    """One ``line run`` process, measured from outside."""

    wall_s: float
    peak_mb: float
    """``ru_maxrss`` from ``os.wait4`` on the runner's pid: the runner's alone, neither the
    server nor the scripted LLM (children of this process too) is in it."""
    steady_mb: float
    """The median RSS sampled between 25% and 90% of the wall time."""
    torch_loaded: bool
    """Whether a torch library was ever mapped into the runner."""
    rows: list[dict]
    timeline: list[tuple[float, float]]
    """(seconds, RSS MB), one sample per second."""


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _sample(pid: int, samples: list[tuple[float, float]], torch_seen: list[bool], stop) -> None:
    """Sample the runner's RSS every 0.1 s (and its mapped libraries every second)."""
    started, last_maps = time.perf_counter(), 0.0
    while not stop.is_set():
        now = time.perf_counter() - started
        rss = _rss_mb(pid)
        if rss is not None:
            samples.append((now, rss))
        if now - last_maps >= 1.0:
            last_maps = now
            torch_seen[0] = torch_seen[0] or _maps_torch(pid)
        stop.wait(0.1)


def _run(server: str, llm: str, out: Path, units: str, iterations: int) -> RunnerFigures:
    """One ``line run`` process with its memory sampled while it runs."""
    command = [
        *LINE, "run", "--target", TARGET, "--layer", "relu", "--units", units,
        "--llm", "openai-compatible:scripted", "--llm-base-url", llm, "--server", server,
        "--out", str(out), "--iterations", str(iterations), "--concurrency", "1000",
        "--quiet", "--no-groups", "--no-report",
    ]  # fmt: skip
    started = time.perf_counter()
    samples: list[tuple[float, float]] = []
    torch_seen, stop = [False], threading.Event()
    with tempfile.TemporaryFile() as output:
        runner = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=_sample, args=(runner.pid, samples, torch_seen, stop))
        sampler.start()
        try:
            _pid, status, usage = os.wait4(runner.pid, 0)
        finally:
            stop.set()
            sampler.join()
        runner.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        if runner.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"line run failed:\n{output.read().decode(errors='replace')}")
    window = [rss for at, rss in samples if 0.25 * elapsed <= at <= 0.9 * elapsed]
    with (out / "results.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    return RunnerFigures(
        wall_s=elapsed,
        peak_mb=usage.ru_maxrss / 1024,  # Linux: KiB
        steady_mb=statistics.median(window or [rss for _, rss in samples] or [0.0]),
        torch_loaded=torch_seen[0],
        rows=rows,
        timeline=_per_second(samples),
    )


def _per_second(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The largest sample of each second (so the peak shows in the timeline)."""
    seconds: dict[int, float] = {}
    for at, rss in samples:
        seconds[int(at)] = max(seconds.get(int(at), 0.0), rss)
    return [(float(second), round(rss, 1)) for second, rss in sorted(seconds.items())]


def measure(neurons: int = 1000, iterations: int = 2, baseline: int = 100) -> dict:
    """Run ``baseline`` neurons at once, then ``neurons``; figures of the big run and the
    steady-state memory per neuron between the two."""
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
            small = _run(url, llm_url, folder / "small", f"0-{baseline - 1}", iterations)
            big = _run(url, llm_url, folder / "big", f"0-{neurons - 1}", iterations)
        finally:
            for process in (server, llm):
                process.terminate()
                process.wait(timeout=30)
    done = sum(row["status"] == "done" for row in big.rows)
    images = sum(int(row["images"]) for row in big.rows)
    extra = max(neurons - baseline, 1)
    return {
        "neurons": neurons,
        "baseline_neurons": baseline,
        "iterations": iterations,
        "done": done,
        "failed": len(big.rows) - done,
        "wall_s": round(big.wall_s, 1),
        "neurons_per_min": round(neurons / big.wall_s * 60, 1),
        "images": images,
        "images_per_s": round(images / big.wall_s, 1),
        "runner_steady_rss_mb_baseline": round(small.steady_mb, 1),
        "runner_steady_rss_mb": round(big.steady_mb, 1),
        "runner_kb_per_neuron": round((big.steady_mb - small.steady_mb) * 1024 / extra, 1),
        "runner_peak_rss_mb_baseline": round(small.peak_mb, 1),
        "runner_peak_rss_mb": round(big.peak_mb, 1),
        "runner_loaded_torch": small.torch_loaded or big.torch_loaded,
        "runner_rss_timeline_mb": big.timeline,
    }


KB_PER_NEURON_GOAL = 100
PEAK_MB_GOAL = 400


def run(neurons: int = 1000, iterations: int = 2, baseline: int = 100) -> dict:
    """``make bench``: print the figures and write ``bench-results/load.json``."""
    figures = measure(neurons, iterations, baseline)
    print(
        f"{figures['neurons']} concurrent neurons ({iterations} rounds each): "
        f"{figures['done']} done, {figures['failed']} failed in {figures['wall_s']} s "
        f"({figures['neurons_per_min']} neurons/min, {figures['images_per_s']} images/s)\n"
        f"runner steady-state RSS {figures['runner_steady_rss_mb']} MB "
        f"({baseline} neurons: {figures['runner_steady_rss_mb_baseline']} MB): "
        f"{figures['runner_kb_per_neuron']} KB per neuron (goal < {KB_PER_NEURON_GOAL}); "
        f"peak {figures['runner_peak_rss_mb']} MB (goal < {PEAK_MB_GOAL}); "
        f"torch loaded in the runner: {figures['runner_loaded_torch']}"
    )
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--baseline", type=int, default=100)
    arguments = parser.parse_args()
    run(arguments.neurons, arguments.iterations, arguments.baseline)
