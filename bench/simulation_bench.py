"""Simulation scoring and fidelity after ``line demo`` on ``planted:shapes``.

- Simulation (goal of issue 13): the exact simulator's Pearson correlation with every planted
  unit's activations on the toy control set (200 random scenes), for the demo's labels that
  match the truth; goal: at least 0.8. Also the missing-labels check on the OR units.
- Fidelity: the demo's labels that name a class of a toy class folder ("real" images: two small
  objects of the class on a named background, :mod:`testing.toy_classes`) against the labels'
  generated images.

Run alone with ``python -m bench.simulation_bench``; writes ``bench-results/simulation.json``.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.launch import run_demo
from agent.run_folder import RunFolder
from analysis.simulators import ExactToySimulator
from evals.cosy_eval import control_cache
from evals.fidelity import evaluate_fidelity, fidelity_summary_rows
from evals.simulation import evaluate_simulation, missing_label_checks
from testing.toy_classes import write_toy_class_folders
from tools.client import LineClient
from tools.controlset import ControlSet
from tools.server_session import server_session

RESULTS = Path("bench-results")
GOAL_PEARSON = 0.8


async def _evaluate(
    folder: RunFolder, url: str, cache: Path, server_id: str, classes: Path
) -> tuple[list[dict], list[dict]]:
    async with LineClient(url) as client:
        simulation = await evaluate_simulation(
            folder, client, ControlSet.toy(), [ExactToySimulator()], cache_dir=cache,
            server_id=server_id,
        )  # fmt: skip
        fidelity = await evaluate_fidelity(
            folder, client, ControlSet.from_folder(classes), n_images=20, cache_dir=cache,
            server_id=server_id,
        )  # fmt: skip
    return simulation, fidelity


def run() -> dict[str, Any]:
    """Run the demo, then both evaluations; print the figures and write the JSON."""
    shutil.rmtree(RESULTS / "simulation-demo", ignore_errors=True)
    started = time.monotonic()
    rows, folder = run_demo(RESULTS / "simulation-demo", "offline:vocab", None, 32, None)
    demo_s = time.monotonic() - started
    matched = {row["unit"] for row in rows if row["match"] is True}
    classes = write_toy_class_folders(RESULTS / "toy-classes")
    settings = folder.read_settings()
    started = time.monotonic()
    with server_session(
        None, settings.target, settings.layer, settings.units, settings.generator, device="cpu"
    ) as session:
        cache, server_id = control_cache(session)
        simulation, fidelity = asyncio.run(
            _evaluate(folder, session.urls[0], cache, server_id, classes)
        )
    eval_s = time.monotonic() - started
    finals = [r for r in simulation if r["role"] == "final" and r["unit"] in matched]
    pearsons = [r["pearson"] for r in finals if not math.isnan(r["pearson"])]
    undefined = [r["label"] for r in finals if math.isnan(r["pearson"])]
    checks = missing_label_checks(simulation)
    (fidelity_summary,) = fidelity_summary_rows(fidelity) or [{}]
    numbers = {
        "matched_units": len(finals),
        "pearson_defined": len(pearsons),
        "pearson_undefined_labels": undefined,
        "mean_pearson": float(np.mean(pearsons)),
        "min_pearson": float(np.min(pearsons)),
        "units_at_goal": sum(p >= GOAL_PEARSON for p in pearsons),
        "mean_auprc": float(np.nanmean([r["auprc"] for r in finals])),
        "missing_label_checks_passed": sum(c["passed"] is True for c in checks),
        "missing_label_checks": len(checks),
        "fidelity": {k: v for k, v in fidelity_summary.items() if k != "layer"},
        "demo_seconds": round(demo_s, 1),
        "evaluation_seconds": round(eval_s, 1),
    }
    print(
        "| matched labels | Pearson defined | mean Pearson | min Pearson | at >= 0.8 | mean AUPRC "
        "| full OR label beats its halves |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(finals)} | {len(pearsons)} | {numbers['mean_pearson']:.3f} | "
        f"{numbers['min_pearson']:.3f} | {numbers['units_at_goal']} | "
        f"{numbers['mean_auprc']:.3f} | {numbers['missing_label_checks_passed']} of {len(checks)} |"
    )
    if undefined:
        print(f"undefined Pearson (constant prediction on the control set): {', '.join(undefined)}")
    summary = numbers["fidelity"]
    if summary:
        print(
            f"fidelity: {summary['neurons']} labels name a toy class; Spearman of the means "
            f"across neurons {summary['rank_correlation']:.3f} (p {summary['p']:.2g}), median "
            f"ratio {summary['median_ratio']:.2f}, AUC synthetic {summary['auc_synthetic']:.3f} "
            f"vs real {summary['auc_real']:.3f}: {summary['verdict']}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "simulation.json").write_text(json.dumps(numbers, indent=2))
    return numbers


if __name__ == "__main__":
    run()
