"""Helpers of the report's tests: a toy-world run made in-process and ways to change it."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.providers import build_llm_client
from agent.run_folder import RunFolder, RunSettings
from agent.runner import run_neurons
from prompts.variant import load_variant
from tools.client import LineClient

TOY_UNITS = [0, 2, 3, 26]
"""red, star or cross, many small objects, and a unit with no concept."""
TOY_ITERATIONS = 6


@dataclass
class ToyRun:
    """A finished toy-world run folder and the image store its images are in."""

    folder: Path
    store: Path
    units: list[int]


def run_toy(server_url: str, out: Path, units: list[int], iterations: int) -> list[dict]:
    """Explain toy-world units in-process, as `line run` does; returns the results rows."""
    settings = RunSettings(
        target="planted:shapes",
        layer="planted",
        units=units,
        generator="procedural:shapes",
        llm="offline:vocab",
        prompts="paper",
        variant_overrides={"iterations": iterations},
        server=server_url,
    )
    folder = RunFolder(out)
    folder.create(settings)
    variant = load_variant("paper", iterations=iterations)

    async def go() -> list[dict]:
        llm = build_llm_client("offline:vocab", temperature=variant.settings.temperature)
        async with LineClient(server_url) as client:
            return await run_neurons(settings, folder, client, llm, variant)

    return asyncio.run(go())


def add_truth(folder: Path) -> None:
    """The planted truth in each record and ``results.csv``, as ``line demo`` writes them."""
    from agent.launch import check_truth
    from toyworld.truth import planted_ground_truth

    check = check_truth({unit.unit: unit for unit in planted_ground_truth()})
    run = RunFolder(folder)
    records = [check(record) for record in run.records()]
    for record in records:
        run.write_record(record)
    run.write_results(records)


def add_cosy(folder: Path, units: list[int]) -> None:
    """A ``cosy.csv`` for the first two units, written by the CoSy evaluation's own writer
    when it is there (else in its columns); the values are made up."""
    with (folder / "results.csv").open() as stream:
        labels = {int(row["unit"]): row["label"] for row in csv.DictReader(stream)}
    rows = [
        {
            "neuron": f"planted#{unit}",
            "layer": "planted",
            "unit": unit,
            "concept": labels[unit],
            "auc": 0.97 - 0.2 * index,
            "u": 3.0,
            "p": 0.001,
            "mad": 4.5 - index,
            "n_concept": 50,
            "n_control": 200,
        }
        for index, unit in enumerate(units[:2])
    ]
    try:
        from evals.cosy_eval import write_cosy_csv
    except ImportError:
        with (folder / "cosy.csv").open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    write_cosy_csv(folder / "cosy.csv", rows)


def copy_run(run: ToyRun, destination: Path) -> ToyRun:
    """A copy of a run folder (without its report) to change in a test."""
    shutil.copytree(run.folder, destination, ignore=shutil.ignore_patterns("report"))
    return ToyRun(destination, run.store, list(run.units))


def large_run(run: ToyRun, destination: Path, count: int = 500) -> ToyRun:
    """A copy of a run grown to ``count`` neurons whose histories repeat the real ones; the
    results and CoSy tables are removed so the report builds from the histories alone."""
    large = copy_run(run, destination)
    config = json.loads((large.folder / "config.json").read_text())
    histories = [
        json.loads((large.folder / "neurons" / f"planted__{u}.json").read_text())
        for u in large.units
    ]
    config["units"] = list(range(count))
    (large.folder / "config.json").write_text(json.dumps(config))
    for unit in range(count):
        history = dict(histories[unit % len(histories)])
        history["neuron"] = {**history["neuron"], "unit": unit}
        (large.folder / "neurons" / f"planted__{unit}.json").write_text(json.dumps(history))
    (large.folder / "results.csv").unlink()
    (large.folder / "cosy.csv").unlink()
    return ToyRun(large.folder, large.store, list(range(count)))


def interrupt(run: ToyRun, unfinished: list[int], failed: list[int]) -> None:
    """Make a finished run look interrupted: no results table, some histories gone, and some
    marked failed the way the runner marks them."""
    (run.folder / "results.csv").unlink(missing_ok=True)
    (run.folder / "results.parquet").unlink(missing_ok=True)
    (run.folder / "cosy.csv").unlink(missing_ok=True)
    for unit in unfinished:
        (run.folder / "neurons" / f"planted__{unit}.json").unlink()
    for unit in failed:
        path = run.folder / "neurons" / f"planted__{unit}.json"
        history = json.loads(path.read_text())
        history.update(
            status="failed",
            reason="LineServerUnavailable: server at http://127.0.0.1:9 is unreachable",
            result=None,
        )
        history["entries"] = history["entries"][:2]
        path.write_text(json.dumps(history))
