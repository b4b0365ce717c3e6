"""1,000 concurrent neurons in one runner process (slow: `make bench` runs bench/load_bench)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_a_thousand_concurrent_neurons_complete_and_memory_is_measured():
    from bench.load_bench import measure

    figures = measure(neurons=1000, iterations=2)
    print(figures)
    assert figures["done"] == 1000 and figures["failed"] == 0
    assert figures["images"] >= 1000 * 2 * 5
    assert figures["runner_peak_rss_mb"] >= figures["runner_steady_rss_mb"] > 0
    assert not figures["runner_loaded_torch"]  # a runner with --server never loads torch
