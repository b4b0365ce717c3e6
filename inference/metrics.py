"""Prometheus metrics of one inference server (its own registry, no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inference.batching import BatchRecord

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Counters, gauges and histograms exposed on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.images_generated = Counter(
            "line_images_generated",
            "Images rendered by a generator (not served from the store).",
            ["generator"],
            registry=self.registry,
        )
        self.image_cache_hits = Counter(
            "line_image_cache_hits",
            "Requested images that were already in the store or being rendered.",
            ["generator"],
            registry=self.registry,
        )
        self.activations_computed = Counter(
            "line_activations_computed",
            "Image layer vectors computed by a target model.",
            ["target"],
            registry=self.registry,
        )
        self.activation_cache_hits = Counter(
            "line_activation_cache_hits",
            "Image layer vectors served from the activation cache.",
            ["target"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "line_batch_size",
            "Items per model batch.",
            ["backend"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.busy_seconds = Counter(
            "line_backend_busy_seconds",
            "Seconds a backend spent running batches.",
            ["backend"],
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "line_batch_failures",
            "Batches that raised inside a backend.",
            ["backend"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "line_queue_depth",
            "Requests waiting for a batch.",
            ["backend"],
            registry=self.registry,
        )

    def record_batch(self, record: BatchRecord) -> None:
        """Account for one finished batch."""
        self.batch_size.labels(record.backend).observe(record.size)
        self.busy_seconds.labels(record.backend).inc(record.seconds)
        if record.failed:
            self.batch_failures.labels(record.backend).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
