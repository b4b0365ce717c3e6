"""Per-position SAE throughput on the toy world: the server reading an SAE's latents at every
location of ``learned:shapes``'s ``conv4`` map (8 x 8 positions of 128 units), aggregated per
image by max, against the same server reading the pooled layer (the map's mean, one vector per
image: what an SAE on that layer read before latents were taken per position; the SAE on that
one cached vector is then a single small matrix product).

Two seeded SAEs of 1024 latents (8x) as SAELens trains them: ``jumprelu`` (what SAELens saves a
BatchTopK SAE as) and ``topk`` (k 32, ``rescale_acts_by_decoder_norm``: a top-k per position).
All readings run in one process on the same freshly rendered images (none finds another's
values in the activation cache), interleaved 128 images at a time so all see the same load on
the machine, through the real HTTP server with concurrent clients so the micro-batcher forms
full batches. Goal: per-position throughput at least 0.8 of the pooled one. Wall-clock rates on
a loaded machine swing with the other processes; the CPU time the process spends per image
(every thread: clients, server, model) is printed beside them and is the steadier ratio.

Run alone with ``python -m bench.positions_bench [--device cuda]``; ``run()`` returns the
numbers and writes ``bench-results/positions.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.app import create_app, start_server_thread
from inference.bases import BasisRegistry, UnitBasis, sae_basis
from inference.registry import load_generator, load_target
from inference.service import open_service
from tools.client import LineClient
from toyworld.controls import random_toy_scene_prompts

RESULTS = Path("bench-results")
TARGET = "learned:shapes"
LAYER, WIDTH, POSITIONS = "conv4", 128, 64
D_SAE, K = 1024, 32
IMAGES_PER_ROUND = 256
ROUNDS = 3
CLIENTS = 8
PER_REQUEST = 16
INTERLEAVE = 128
"""Images read by each reading in turn: all see the same load on the machine."""
GOAL = 0.8
SAES = {
    "jumprelu": {"architecture": "jumprelu"},
    "topk": {"architecture": "topk", "k": K, "rescale_acts_by_decoder_norm": True},
}


def toy_sae(config: dict[str, Any], seed: int = 0) -> UnitBasis:
    """A seeded SAE over ``conv4`` with ``config`` (SAELens cfg.json fields)."""
    rng = np.random.default_rng(seed)
    tensors = {
        "W_enc": rng.normal(0, 1 / np.sqrt(WIDTH), (WIDTH, D_SAE)).astype(np.float32),
        "b_enc": rng.normal(0, 0.05, D_SAE).astype(np.float32),
        "b_dec": rng.normal(0, 0.05, WIDTH).astype(np.float32),
        "W_dec": rng.normal(0, 0.1, (D_SAE, WIDTH)).astype(np.float32),
        "threshold": np.full(D_SAE, 0.3, np.float32),
    }
    return sae_basis(tensors, config, f"sae:bench-toy-{config['architecture']}")


async def _render(url: str, prompts: list[tuple[str, int]]) -> list[str]:
    ids: list[str] = []
    async with LineClient(url) as client:
        for start in range(0, len(prompts), 32):
            chunk = prompts[start : start + 32]
            images = await client.generate_images(
                [prompt for prompt, _ in chunk], [seed for _, seed in chunk]
            )
            ids += [image.id for image in images]
    return ids


async def _read(url: str, layer: str, ids: list[str]) -> float:
    """Wall seconds to read ``layer`` on every image, CLIENTS concurrent requests at a time."""
    chunks = [ids[start : start + PER_REQUEST] for start in range(0, len(ids), PER_REQUEST)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def client_loop(client: LineClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            response = await client.activations(TARGET, layer, chunk, units=[0, 1, 2])
            assert response.values.shape == (len(chunk), 3)

    async with LineClient(url) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
        return time.perf_counter() - started


def measure(device: str = "cpu") -> dict[str, Any]:
    """Images/s and CPU ms per image of the pooled layer and of each per-position SAE, per
    round, and their ratios."""
    registry = BasisRegistry()
    saes = {name: toy_sae(config) for name, config in SAES.items()}
    for name, sae in saes.items():
        registry.add(sae, name)
    readings = {"pooled": LAYER, **{name: f"{LAYER}@{name}#max" for name in saes}}
    with tempfile.TemporaryDirectory() as folder:
        service = open_service(
            [load_generator("procedural:shapes", device)],
            [load_target(TARGET, device)],
            Path(folder) / "store",
            bases=registry,
        )
        running = start_server_thread(create_app(service))
        try:
            warm = asyncio.run(_render(running.url, random_toy_scene_prompts(32, seed=99)))
            for layer in readings.values():  # the model and the SAEs on the device
                asyncio.run(_read(running.url, layer, warm))
            rounds = []
            for round_ in range(ROUNDS):
                prompts = random_toy_scene_prompts(IMAGES_PER_ROUND, seed=1000 + round_)
                ids = asyncio.run(_render(running.url, prompts))
                wall = dict.fromkeys(readings, 0.0)
                cpu = dict.fromkeys(readings, 0.0)
                for index, start in enumerate(range(0, len(ids), INTERLEAVE)):
                    chunk = ids[start : start + INTERLEAVE]
                    order = list(readings.items())
                    shift = (round_ + index) % len(order)  # each reading goes first in turn
                    for name, layer in order[shift:] + order[:shift]:
                        started = time.process_time()  # every thread: clients, server, model
                        wall[name] += asyncio.run(_read(running.url, layer, chunk))
                        cpu[name] += time.process_time() - started
                rounds.append(
                    {
                        "images_per_s": {name: len(ids) / spent for name, spent in wall.items()},
                        "cpu_ms_per_image": {n: 1000 * c / len(ids) for n, c in cpu.items()},
                        "ratio": {name: wall["pooled"] / wall[name] for name in saes},
                        "cpu_ratio": {name: cpu["pooled"] / cpu[name] for name in saes},
                    }
                )
        finally:
            running.stop()
    return {
        "target": TARGET,
        "layer": LAYER,
        "positions": POSITIONS,
        "saes": {name: sae.describe() for name, sae in saes.items()},
        "device": device,
        "images_per_round": IMAGES_PER_ROUND,
        "rounds": rounds,
        "ratio": {name: statistics.median(r["ratio"][name] for r in rounds) for name in saes},
        "cpu_ratio": {
            name: statistics.median(r["cpu_ratio"][name] for r in rounds) for name in saes
        },
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "goal": GOAL,
    }


def run(device: str = "cpu") -> dict[str, Any]:
    """Measure, print a table and write ``bench-results/positions.json``."""
    result = measure(device)
    print(f"per-position SAEs on {TARGET} {LAYER} ({POSITIONS} positions, max), {device}:")
    for name, about in result["saes"].items():
        print(f"  {name}: {about}")
    print("| round | reading | images/s | CPU ms/image | per-position / pooled | by CPU time |")
    print("|---|---|---|---|---|---|")
    for index, round_ in enumerate(result["rounds"], start=1):
        for name, rate in round_["images_per_s"].items():
            ratio = round_["ratio"].get(name)
            by_cpu = round_["cpu_ratio"].get(name)
            print(
                f"| {index} | {name} | {rate:.0f} | {round_['cpu_ms_per_image'][name]:.2f} "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} "
                f"| {'-' if by_cpu is None else f'{by_cpu:.2f}'} |"
            )
    for name, ratio in result["ratio"].items():
        verdict = "meets" if ratio >= GOAL else "misses"
        print(
            f"{name} per position / pooled throughput (median): {ratio:.2f} ({verdict} {GOAL}); "
            f"by CPU time {result['cpu_ratio'][name]:.2f}"
        )
    print(f"load average {result['load_average']} on {os.cpu_count()} cores")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "positions.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    run(parser.parse_args().device)
