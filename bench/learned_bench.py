"""Labels on learned neurons: LINE and the vocabulary baseline against the dissection reference,
and the selectivity verdict against the dissection's and the planted truth's.

- ``learned:shapes``, its largest layer: units with a reference concept, LINE's recovery of them
  (``paper`` with ``offline:vocab`` over a vocabulary of every toy-world attribute), the
  vocabulary baseline's recovery of the same units, and how often the run's verdict (selective
  or not) agrees with the dissection (weak references left out); then the label-predicate AUC
  on held-out scenes of LINE, the baseline and the reference, the paired test, the attribute
  Jaccard and the references' stability (:func:`evals.groundtruth.groundtruth_figures`);
- ``planted:shapes``: the verdict on all 28 planted units (goal: right on every one).

Run alone with ``python -m bench.learned_bench``; writes ``bench-results/learned.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from evals.groundtruth import figures_text, run_groundtruth_benchmark
from inference.registry import load_target

RESULTS = Path("bench-results")
LEARNED = "learned:shapes"


def largest_layer(target: str) -> str:
    """The layer with the most units."""
    return max(load_target(target, "cpu").layers(), key=lambda info: info.units).name


def run() -> dict[str, Any]:
    """Both benchmarks; prints a table and writes ``bench-results/learned.json``."""
    layer = largest_layer(LEARNED)
    started = time.monotonic()
    # plain offline:vocab on a dissected layer walks every toy attribute (evals.groundtruth)
    learned = run_groundtruth_benchmark(
        RESULTS / "learned-groundtruth", target=LEARNED, layer=layer
    )
    learned_s = time.monotonic() - started
    rows = learned["rows"]
    with_reference = [row for row in rows if row["kind"] != "none"]
    started = time.monotonic()
    planted = run_groundtruth_benchmark(RESULTS / "planted-groundtruth", baseline=False)
    planted_s = time.monotonic() - started
    planted_right = sum(row["verdict_right"] is True for row in planted["rows"])
    figures = learned["figures"]
    test = figures["predicate_test"] or {}
    numbers = {
        "learned_layer": layer,
        "learned_units": len(rows),
        "learned_units_with_reference": len(with_reference),
        "line_recovery": learned["recovery"].get("all"),
        "vocab_baseline_recovery": learned["baseline_recovery"].get("all"),
        "verdict_agreement": learned["verdict_agreement"],
        "weak_references": figures["weak_references"],
        "line_attribute_jaccard": figures["attribute_jaccard"],
        "vocab_baseline_attribute_jaccard": figures["baseline_attribute_jaccard"],
        "live_units_with_reference": figures["live_units_with_reference"],
        "line_predicate_auc": figures["predicate_auc"],
        "vocab_baseline_predicate_auc": figures["baseline_predicate_auc"],
        "reference_predicate_auc": figures["reference_predicate_auc"],
        "line_predicate_auc_of_reference": figures["predicate_auc_of_reference"],
        "predicate_test_p": test.get("p_value"),
        "predicate_test_n": test.get("n"),
        "predicate_mean_difference": test.get("mean_difference"),
        "reference_stability": figures["reference_stability"],
        "learned_seconds": round(learned_s, 1),
        "planted_units": len(planted["rows"]),
        "planted_verdict_right": planted_right,
        "planted_recovery": planted["recovery"].get("all"),
        "planted_seconds": round(planted_s, 1),
    }

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(
        "| target | layer | units | with a reference | LINE recovery | vocab baseline recovery "
        "| verdict agrees |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    print(
        f"| {LEARNED} | {layer} | {len(rows)} | {len(with_reference)} | "
        f"{share(numbers['line_recovery'])} | {share(numbers['vocab_baseline_recovery'])} | "
        f"{share(numbers['verdict_agreement'])} |"
    )
    print(
        f"| planted:shapes | planted | {len(planted['rows'])} | "
        f"{sum(row['kind'] != 'none' for row in planted['rows'])} | "
        f"{share(numbers['planted_recovery'])} | - | {planted_right}/{len(planted['rows'])} |"
    )
    print()
    print(
        "| predicate AUC: LINE | vocab baseline | reference | LINE / reference | paired p (n) "
        "| attribute Jaccard: LINE | vocab baseline | reference stability |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {share(numbers['line_predicate_auc'])} | "
        f"{share(numbers['vocab_baseline_predicate_auc'])} | "
        f"{share(numbers['reference_predicate_auc'])} | "
        f"{share(numbers['line_predicate_auc_of_reference'])} | "
        f"{'-' if test.get('p_value') is None else format(test['p_value'], '.2g')} "
        f"({test.get('n', '-')}) | {share(numbers['line_attribute_jaccard'])} | "
        f"{share(numbers['vocab_baseline_attribute_jaccard'])} | "
        f"{share(numbers['reference_stability'])} |"
    )
    print()
    print(figures_text(figures))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learned.json").write_text(json.dumps(numbers, indent=2))
    return numbers


if __name__ == "__main__":
    run()
