"""Server benchmark: raw generator throughput vs the batched server under concurrent clients.

Raw: ``tiny-sd`` at 64x64 called directly at batch 1, 8 and ``max_batch``. Server: a real
``line serve`` process (tiny-sd + ``TARGET``) under 1, 8 and 64 concurrent clients, each asking
for 5 images of distinct prompts. Writes ``bench-results/server.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference.app import free_port
from inference.protocols import RenderJob
from inference.registry import GeneratorOptions, load_generator
from tools.client import LineClient


def env_ints(name: str, default: str) -> tuple[int, ...]:
    """A comma-separated list of integers from the environment variable ``name``."""
    return tuple(int(part) for part in os.environ.get(name, default).split(",") if part.strip())


# Defaults are the figures the README reports; LINE_BENCH_* variables rerun it elsewhere (a GPU).
GENERATOR = "tiny-sd"
TARGET = os.environ.get("LINE_BENCH_TARGET", "torchvision:resnet18:random")
DEVICE = os.environ.get("LINE_BENCH_DEVICE", "cpu")
SIZE = int(os.environ.get("LINE_BENCH_SIZE", "64"))
STEPS = int(os.environ.get("LINE_BENCH_STEPS", "1"))
MAX_BATCH = int(os.environ.get("LINE_BENCH_MAX_BATCH", "32"))
MAX_WAIT_MS = 10.0
IMAGES_PER_CLIENT = 5
CLIENT_COUNTS = (1, 8, 64)
REPEATS = 3  # shared machines are noisy: every figure is the median of this many runs
RESULTS = Path(os.environ.get("LINE_BENCH_RESULTS", "bench-results"))


def raw_throughput(generator, batch: int, min_seconds: float = 1.5) -> float:
    """Images per second of ``generator.render`` on batches of ``batch`` distinct prompts."""
    settings = generator.default_settings()
    generator.render([RenderJob("warm up", 0, settings)] * batch)
    images, started, call = 0, time.perf_counter(), 0
    while time.perf_counter() - started < min_seconds or call < 2:
        prompts = [f"raw {batch} {call} {i} {time.perf_counter_ns()}" for i in range(batch)]
        generator.render([RenderJob(p, i, settings) for i, p in enumerate(prompts)])
        images += batch
        call += 1
    return images / (time.perf_counter() - started)


def machine() -> str:
    """The machine a benchmark ran on: architecture, cores, Python, the GPU when on CUDA."""
    described = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    if DEVICE.startswith("cuda"):
        import torch

        described += f", {torch.cuda.get_device_name(DEVICE)}"
    return described


def _metric_sum(text: str, name: str, backend: str) -> float:
    match = re.search(rf'{re.escape(name)}\{{backend="{re.escape(backend)}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


async def _load(url: str, clients: int, round_: str) -> dict[str, float]:
    # image requests are not retried (a failure must show); /metrics reads are, on their own
    # client, since a pooled connection the server closed while idle fails its first request
    async with (
        LineClient(url, retries=0, max_connections=max(clients, 1)) as client,
        LineClient(url) as metrics,
    ):
        await client.generate_images([f"warm {round_}"], [0])
        before = await metrics.metrics_text()
        started = time.perf_counter()
        await asyncio.gather(
            *(
                client.generate_images(
                    [f"client {c} image {i} round {round_}" for i in range(IMAGES_PER_CLIENT)],
                    list(range(IMAGES_PER_CLIENT)),
                )
                for c in range(clients)
            )
        )
        wall = time.perf_counter() - started
        after = await metrics.metrics_text()
    count = _metric_sum(after, "line_batch_size_count", GENERATOR) - _metric_sum(
        before, "line_batch_size_count", GENERATOR
    )
    total = _metric_sum(after, "line_batch_size_sum", GENERATOR) - _metric_sum(
        before, "line_batch_size_sum", GENERATOR
    )
    busy = _metric_sum(after, "line_backend_busy_seconds_total", GENERATOR) - _metric_sum(
        before, "line_backend_busy_seconds_total", GENERATOR
    )
    images = clients * IMAGES_PER_CLIENT
    return {
        "clients": clients,
        "images": images,
        "seconds": wall,
        "images_per_s": images / wall,
        "mean_batch": total / count if count else 0.0,
        "generator_busy": busy / wall,
    }


def paired_runs(generator, url: str, clients: int) -> dict[str, float]:
    """Server runs, each followed by raw runs at once, so both see the same machine state.

    Every figure is the median over ``REPEATS`` pairs.
    """
    runs = []
    for repeat in range(REPEATS):
        run_ = asyncio.run(_load(url, clients, f"{clients}-{repeat}"))
        same = max(1, round(run_["mean_batch"]))
        run_["raw_at_same_batch"] = raw_throughput(generator, same)
        run_["raw_at_max_batch"] = raw_throughput(generator, MAX_BATCH)
        run_["server_over_raw_same_batch"] = run_["images_per_s"] / run_["raw_at_same_batch"]
        run_["server_over_raw_max_batch"] = run_["images_per_s"] / run_["raw_at_max_batch"]
        runs.append(run_)
    return {key: statistics.median(run_[key] for run_ in runs) for key in runs[0]}


def wait_until_idle(
    process: subprocess.Popen,
    idle_share: float = 0.05,
    window_s: float = 0.5,
    timeout_s: float = 30,
) -> None:
    """Wait until ``process`` uses under ``idle_share`` of a core over ``window_s`` (a server
    finishing background work), at most ``timeout_s``; returns at once where /proc is missing."""
    stat = Path(f"/proc/{process.pid}/stat")
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def cpu_seconds() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime + stime

    if not stat.exists():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used = cpu_seconds()
        time.sleep(window_s)
        if cpu_seconds() - used < idle_share * window_s:
            return


def start_server(store: str) -> tuple[subprocess.Popen, str]:
    """A real ``line serve`` process on a free port; returns once /healthz answers."""
    import httpx

    port = free_port()
    command = [
        sys.executable, "-m", "cli.app", "serve",
        "--generator", GENERATOR, "--target", TARGET,
        "--port", str(port), "--store", store, "--device", DEVICE,
        "--width", str(SIZE), "--height", str(SIZE), "--steps", str(STEPS),
        "--max-batch", str(MAX_BATCH), "--max-wait-ms", str(MAX_WAIT_MS),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("line serve exited during start-up")
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("line serve did not start in 180 s")


def run() -> dict:
    """Run the benchmark, print its table, write ``bench-results/server.json``."""
    options = GeneratorOptions(steps=STEPS, width=SIZE, height=SIZE)
    generator = load_generator(GENERATOR, DEVICE, options)
    raw = {
        batch: statistics.median(raw_throughput(generator, batch) for _ in range(REPEATS))
        for batch in (1, 8, MAX_BATCH)
    }
    with tempfile.TemporaryDirectory() as store:
        process, url = start_server(store)
        try:
            rows = [paired_runs(generator, url, clients) for clients in CLIENT_COUNTS]
        finally:
            process.terminate()
            process.wait(timeout=30)
    result = {
        "machine": machine(),
        "generator": f"tiny-sd {SIZE}x{SIZE}, {STEPS} step(s), {DEVICE}",
        "max_batch": MAX_BATCH,
        "max_wait_ms": MAX_WAIT_MS,
        "repeats": REPEATS,
        "raw_images_per_s": {str(batch): value for batch, value in sorted(raw.items())},
        "server": rows,
        "server_over_raw": rows[-1]["server_over_raw_max_batch"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The benchmark as a Markdown table (pasted into the README)."""
    raw = result["raw_images_per_s"]
    lines = [
        f"Raw generator ({result['generator']}), images/s: "
        + ", ".join(f"batch {batch}: {value:.1f}" for batch, value in raw.items()),
        "",
        "| clients | server images/s | mean batch | generator busy | raw images/s (same batch) "
        f"| server/raw (same batch) | server/raw (batch {result['max_batch']}) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["server"]:
        lines.append(
            f"| {row['clients']} | {row['images_per_s']:.1f} | {row['mean_batch']:.1f} "
            f"| {row['generator_busy']:.0%} | {row['raw_at_same_batch']:.1f} "
            f"| {row['server_over_raw_same_batch']:.2f} "
            f"| {row['server_over_raw_max_batch']:.2f} |"
        )
    lines.append(
        f"\nserver_over_raw (64 clients vs raw at max_batch): {result['server_over_raw']:.2f} "
        f"(medians of {result['repeats']} runs; {result['machine']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
