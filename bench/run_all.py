"""``make bench``: every benchmark, one after another, figures printed and saved as JSON."""

from __future__ import annotations

import importlib
import os

BENCHMARKS = [
    "bench.server_bench",
    "bench.positions_bench",
    "bench.e2e_bench",
    "bench.toyworld_bench",
    "bench.learned_bench",
    "bench.load_bench",
    "bench.outage_bench",
    "bench.simulation_bench",
]


def main() -> None:
    """Run each benchmark module's ``run()``."""
    os.environ.setdefault("LINE_CACHE", os.path.abspath("bench-results/cache"))
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        print(f"\n== {name} ==")
        module.run()


if __name__ == "__main__":
    main()
