"""End-to-end benchmark: whole LINE runs against the batched server vs a research-script loop.

``tiny-sd`` at 64x64 and ``torchvision:resnet18:random`` behind a real ``line serve`` process; a
scripted OpenAI-compatible LLM (``ProposerPolicy``) with 0 ms and 300 ms latency; 1, 8 and 64
concurrent neurons with the paper's budget (10 proposals + a summary, 5 images per concept).
The sequential baseline explains one neuron at a time with one generator call per concept and no
server (the way research scripts run). Writes ``bench-results/e2e.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time

from langchain_core.messages import HumanMessage, SystemMessage

from agent.answers import extract_tool_call
from agent.providers import build_llm_client
from agent.run_folder import RunFolder, RunSettings
from agent.runner import run_neurons
from bench.server_bench import (
    DEVICE,
    MAX_BATCH,
    RESULTS,
    SIZE,
    STEPS,
    _metric_sum,
    raw_throughput,
    start_server,
)
from inference.protocols import RenderJob
from inference.registry import GeneratorOptions, load_generator, load_target
from prompts.variant import load_variant
from testing.scripted_llm import ProposerPolicy, start_scripted_llm
from tools.agent_tools import PROPOSE_CONCEPT
from tools.client import LineClient

TARGET = "torchvision:resnet18:random"
LAYER = "layer4"
LATENCIES_MS = (0, 300)
NEURON_COUNTS = (1, 8, 64)
SEQUENTIAL_NEURONS = 2


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

    return {
        "neurons": neurons,
        "done": sum(row["status"] == "done" for row in rows),
        "seconds": wall,
        "neurons_per_min": 60 * neurons / wall,
        "images": images,
        "images_per_s": images / wall,
        "generator_busy": busy("tiny-sd") / wall,
        "target_busy": busy(TARGET) / wall,
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


def run() -> dict:
    """Run the benchmark, print its table, write ``bench-results/e2e.json``."""
    options = GeneratorOptions(steps=STEPS, width=SIZE, height=SIZE)
    generator = load_generator("tiny-sd", DEVICE, options)
    target = load_target(TARGET, DEVICE)
    raw = raw_throughput(generator, MAX_BATCH)
    rows, sequential = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        process, url = start_server(os.path.join(scratch, "store"))
        try:
            for latency in LATENCIES_MS:
                with start_scripted_llm(ProposerPolicy(), latency_ms=latency) as llm:
                    for neurons in NEURON_COUNTS:
                        out = os.path.join(scratch, f"run-{latency}-{neurons}")
                        seed = 1000 * latency + neurons
                        row = asyncio.run(_e2e(url, llm.url, neurons, seed, out))
                        row["llm_latency_ms"] = latency
                        row["e2e_over_raw"] = row["images_per_s"] / raw
                        rows.append(row)
                    sequential[latency] = sequential_baseline(llm.url, generator, target)
        finally:
            process.terminate()
            process.wait(timeout=30)
    for row in rows:
        baseline = sequential[row["llm_latency_ms"]]
        row["speedup_vs_sequential"] = row["neurons_per_min"] / baseline["neurons_per_min"]
    headline = next(r for r in rows if r["neurons"] == 64 and r["llm_latency_ms"] == 300)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "setup": f"tiny-sd {SIZE}x{SIZE} {STEPS} step(s) + {TARGET} {LAYER}, {DEVICE}, "
        f"max_batch {MAX_BATCH}",
        "raw_images_per_s_at_max_batch": raw,
        "runs": rows,
        "sequential": {str(k): v for k, v in sequential.items()},
        "e2e_over_raw": headline["e2e_over_raw"],
        "speedup_vs_sequential": headline["speedup_vs_sequential"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The end-to-end figures as a Markdown table."""
    lines = [
        f"{result['setup']}; raw generator at max_batch: "
        f"{result['raw_images_per_s_at_max_batch']:.1f} images/s",
        "",
        "| LLM latency | neurons | neurons/min | images/s | generator busy | target busy "
        "| e2e/raw | speedup vs sequential |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["runs"]:
        lines.append(
            f"| {row['llm_latency_ms']} ms | {row['neurons']} | {row['neurons_per_min']:.1f} "
            f"| {row['images_per_s']:.1f} | {row['generator_busy']:.0%} "
            f"| {row['target_busy']:.0%} "
            f"| {row['e2e_over_raw']:.2f} | {row['speedup_vs_sequential']:.1f}x |"
        )
    for latency, base in result["sequential"].items():
        lines.append(
            f"\nsequential baseline ({latency} ms LLM): {base['neurons_per_min']:.2f} neurons/min, "
            f"{base['images_per_s']:.1f} images/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
