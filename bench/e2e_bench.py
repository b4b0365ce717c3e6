"""End-to-end benchmark: whole LINE runs against the batched server, the pipeline limit and a
research-script loop.

``tiny-sd`` at 64x64 and ``torchvision:resnet18:random`` behind a real ``line serve`` process; a
scripted OpenAI-compatible LLM (``ProposerPolicy``) with 0 ms and 300 ms latency; 1, 8 and 64
concurrent neurons with the paper's budget (10 proposals + a summary, 5 images per concept).
Right before and right after each run, in this process on the same device (the server idle):
the pipeline limit (generator and target back to back on pixel tensors at ``max_batch``,
:mod:`bench.pipeline`) and the raw generator at ``max_batch``; a run's ratios are to the mean
of the two, so they compare figures taken under the same machine load.
The sequential baseline explains one neuron at a time with one generator call per concept and no
server (the way research scripts run). Writes ``bench-results/e2e.json``.

``LINE_BENCH_DEVICE``, ``_SIZE``, ``_STEPS``, ``_MAX_BATCH``, ``_TARGET`` (see
:mod:`bench.server_bench`), ``_LATENCIES`` (ms, comma-separated), ``_NEURONS`` and
``_SEQUENTIAL`` (neurons of the baseline) rerun it elsewhere (``bench/gpu_e2e.sh``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage

from agent.answers import extract_tool_call
from agent.providers import build_llm_client
from agent.run_folder import RunFolder, RunSettings
from agent.runner import run_neurons
from bench.pipeline import pipeline_limit
from bench.server_bench import (
    DEVICE,
    GENERATOR,
    MAX_BATCH,
    RESULTS,
    SIZE,
    STEPS,
    TARGET,
    _metric_sum,
    env_ints,
    machine,
    raw_throughput,
    start_server,
    wait_until_idle,
)
from inference.protocols import RenderJob
from inference.registry import GeneratorOptions, load_generator, load_target
from prompts.variant import load_variant
from testing.scripted_llm import ProposerPolicy, start_scripted_llm
from tools.agent_tools import PROPOSE_CONCEPT
from tools.client import LineClient

LAYER = "layer4"
LATENCIES_MS = env_ints("LINE_BENCH_LATENCIES", "0,300")
NEURON_COUNTS = env_ints("LINE_BENCH_NEURONS", "1,8,64")
SEQUENTIAL_NEURONS = env_ints("LINE_BENCH_SEQUENTIAL", "2")[0]


async def _e2e(server_url: str, llm_url: str, neurons: int, seed: int, out: str) -> dict:
    variant = load_variant("paper")
    settings = RunSettings(
        target=TARGET, layer=LAYER, units=list(range(neurons)), llm="openai-compatible:scripted",
        llm_base_url=llm_url, prompts="paper", seed=seed, concurrency=neurons, server=server_url,
    )  # fmt: skip
    folder = RunFolder(out)
    folder.create(settings)
    llm = build_llm_client(settings.llm, base_url=llm_url, max_concurrency=64)
    async with LineClient(server_url) as client:
        before = await client.metrics_text()
        started = time.perf_counter()
        rows = await run_neurons(settings, folder, client, llm, variant)
        wall = time.perf_counter() - started
        after = await client.metrics_text()
    images = sum(row["images"] for row in rows)

    def busy(backend: str) -> float:
        name = "line_backend_busy_seconds_total"
        return _metric_sum(after, name, backend) - _metric_sum(before, name, backend)

    generator_busy, target_busy = busy(GENERATOR) / wall, busy(TARGET) / wall
    return {
        "neurons": neurons,
        "done": sum(row["status"] == "done" for row in rows),
        "seconds": wall,
        "neurons_per_min": 60 * neurons / wall,
        "images": images,
        "images_per_s": images / wall,
        "generator_busy": generator_busy,
        "target_busy": target_busy,
        # both models share the one device: the share of the wall time it spent on either
        # (above 100% where the server overlaps them)
        "device_busy": generator_busy + target_busy,
    }


def sequential_baseline(llm_url: str, generator, target, neurons: int = SEQUENTIAL_NEURONS) -> dict:
    """One neuron at a time, one generator call per concept, the model called directly."""
    variant = load_variant("paper")
    settings = generator.default_settings()

    async def explain(unit: int) -> int:
        llm = build_llm_client("openai-compatible:scripted", base_url=llm_url)
        scores: list[str] = []
        images = 0
        for iteration in range(variant.settings.iterations + 1):
            prompt = variant.render(
                "proposal", iteration=iteration, iterations=variant.settings.iterations,
                scoreboard="\n".join(scores) or "(empty)", tried="",
            )  # fmt: skip
            messages = [SystemMessage(variant.render("system")), HumanMessage(prompt)]
            reply = await llm.invoke(messages, tools=[PROPOSE_CONCEPT])
            _, args = extract_tool_call(reply.message, ["propose_concept"])
            concept = args["concept"]
            jobs = [
                RenderJob(variant.image_prompt(concept, i), 10_000 * unit + 100 * iteration + i,
                          settings)
                for i in range(variant.settings.images_per_concept)
            ]  # fmt: skip
            rendered = generator.render(jobs)
            values = target.activations([r.image for r in rendered], LAYER)[:, unit]
            scores.append(f"{concept}: {float(values.mean()):.4f}")
            images += len(jobs)
        return images

    started = time.perf_counter()
    images = sum(asyncio.run(explain(unit)) for unit in range(neurons))
    wall = time.perf_counter() - started
    return {
        "neurons": neurons,
        "seconds": wall,
        "neurons_per_min": 60 * neurons / wall,
        "images_per_s": images / wall,
    }


def commit() -> dict[str, object]:
    """The checked-out commit and the tracked files that differ from it (``unknown`` outside
    git): the figures' provenance."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "--name-only", "HEAD").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"head": "unknown", "uncommitted": []}
    return {"head": head, "uncommitted": changed}


def limits(generator, target, server: subprocess.Popen) -> dict:
    """The pipeline limit and the raw generator at ``max_batch``, once the server is idle (its
    background PNG and cache writes done), so they do not share the device with it."""
    wait_until_idle(server)
    return {
        "pipeline": pipeline_limit(generator, target, LAYER, MAX_BATCH).as_dict(),
        "raw_images_per_s": raw_throughput(generator, MAX_BATCH),
        "load_average": os.getloadavg()[0],  # other work on a shared machine shows here
    }


def compare_with_limits(row: dict, before: dict, after: dict) -> None:
    """Add the limits measured right before and right after a run (their mean, since a shared
    machine's load drifts) and the run's ratios to them."""
    row["limits"] = {"before": before, "after": after}
    row["pipeline_images_per_s"] = (
        before["pipeline"]["images_per_s"] + after["pipeline"]["images_per_s"]
    ) / 2
    row["raw_images_per_s"] = (before["raw_images_per_s"] + after["raw_images_per_s"]) / 2
    row["e2e_over_pipeline"] = row["images_per_s"] / row["pipeline_images_per_s"]
    row["e2e_over_raw"] = row["images_per_s"] / row["raw_images_per_s"]


def run() -> dict:
    """Run the benchmark, print its table, write ``bench-results/e2e.json``."""
    options = GeneratorOptions(steps=STEPS, width=SIZE, height=SIZE)
    generator = load_generator(GENERATOR, DEVICE, options)
    target = load_target(TARGET, DEVICE)
    rows, sequential = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_server(os.path.join(scratch, "store"))
        try:
            first = before = limits(generator, target, process)
            for latency in LATENCIES_MS:
                with start_scripted_llm(ProposerPolicy(), latency_ms=latency) as llm:
                    for neurons in NEURON_COUNTS:
                        out = os.path.join(scratch, f"run-{latency}-{neurons}")
                        seed = 1000 * latency + neurons
                        row = asyncio.run(_e2e(url, llm.url, neurons, seed, out))
                        row["llm_latency_ms"] = latency
                        after = limits(generator, target, process)
                        compare_with_limits(row, before, after)
                        rows.append(row)
                        before = after
                    sequential[latency] = sequential_baseline(llm.url, generator, target)
                    before = limits(generator, target, process)
        finally:
            process.terminate()
            process.wait(timeout=30)
    for row in rows:
        baseline = sequential[row["llm_latency_ms"]]
        row["speedup_vs_sequential"] = row["neurons_per_min"] / baseline["neurons_per_min"]
    # 64 neurons at 300 ms by default; the most neurons at the longest latency when rerun
    headline = max(rows, key=lambda r: (r["llm_latency_ms"], r["neurons"]))
    result = {
        "machine": machine(),
        "commit": commit(),
        "setup": f"tiny-sd {SIZE}x{SIZE} {STEPS} step(s) + {TARGET} {LAYER}, {DEVICE}, "
        f"max_batch {MAX_BATCH}",
        "pipeline_images_per_s_at_max_batch": first["pipeline"]["images_per_s"],
        "raw_images_per_s_at_max_batch": first["raw_images_per_s"],
        "runs": rows,
        "sequential": {str(k): v for k, v in sequential.items()},
        "headline": {"neurons": headline["neurons"], "llm_latency_ms": headline["llm_latency_ms"]},
        "e2e_over_pipeline": headline["e2e_over_pipeline"],
        "e2e_over_raw": headline["e2e_over_raw"],
        "device_busy": headline["device_busy"],
        "speedup_vs_sequential": headline["speedup_vs_sequential"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The end-to-end figures as a Markdown table."""
    lines = [
        f"{result['setup']}; before the runs: pipeline limit "
        f"{result['pipeline_images_per_s_at_max_batch']:.1f} images/s, raw generator "
        f"{result['raw_images_per_s_at_max_batch']:.1f} images/s",
        "",
        "| LLM latency | neurons | neurons/min | images/s | pipeline images/s | e2e/pipeline "
        "| raw images/s | e2e/raw | generator busy | target busy | device busy "
        "| speedup vs sequential |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["runs"]:
        lines.append(
            f"| {row['llm_latency_ms']} ms | {row['neurons']} | {row['neurons_per_min']:.1f} "
            f"| {row['images_per_s']:.1f} | {row['pipeline_images_per_s']:.1f} "
            f"| {row['e2e_over_pipeline']:.2f} | {row['raw_images_per_s']:.1f} "
            f"| {row['e2e_over_raw']:.2f} | {row['generator_busy']:.0%} "
            f"| {row['target_busy']:.0%} | {row['device_busy']:.0%} "
            f"| {row['speedup_vs_sequential']:.1f}x |"
        )
    for latency, base in result["sequential"].items():
        lines.append(
            f"\nsequential baseline ({latency} ms LLM): {base['neurons_per_min']:.2f} neurons/min, "
            f"{base['images_per_s']:.1f} images/s"
        )
    lines.append(
        f"\ne2e_over_pipeline ({result['headline']['neurons']} neuron(s), "
        f"{result['headline']['llm_latency_ms']} ms LLM): {result['e2e_over_pipeline']:.2f}; "
        f"device busy {result['device_busy']:.0%} ({result['machine']}; commit "
        f"{result['commit']['head']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
