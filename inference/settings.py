"""The inference server's settings and their defaults, written once: ``line serve``'s options,
the wire models' descriptions, :class:`inference.config.ServeConfig` and the service all read
them from here.

Light on purpose (the standard library only), so the CLI reads the defaults for its ``--help``
without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
"""The address ``line serve`` binds: loopback, so nothing outside the machine reaches it."""
DEFAULT_PORT = 8400
"""The port ``line serve`` binds."""
MIN_SIDE = 16
"""The smallest image side the server accepts: every backend renders it (procedural:shapes
refuses anything smaller)."""


@dataclass(frozen=True)
class ServiceLimits:
    """Caps that keep one request from hogging the server."""

    max_images_per_request: int = 256
    max_prompt_chars: int = 1000
    max_side: int = 2048
    max_steps: int = 500
    max_upload_bytes: int = 20_000_000


@dataclass(frozen=True)
class BatchingConfig:
    """When a batch closes."""

    max_batch: int = 32
    max_wait_ms: float = 10.0


DEFAULT_LIMITS = ServiceLimits()
DEFAULT_BATCHING = BatchingConfig()
