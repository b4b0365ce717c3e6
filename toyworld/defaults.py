"""The toy world's default settings, in a module that imports only the standard library:
``line toyworld`` and ``line eval``'s option defaults show them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

PROBE_SCENES = 3000
"""Scenes in the dissection's probe set (and in its held-out one)."""


@dataclass(frozen=True)
class TrainConfig:
    """What ``line toyworld train`` takes; the defaults made the shipped weights."""

    seed: int = 0
    train_scenes: int = 4000
    held_out_scenes: int = 1000
    epochs: int = 24
    batch_size: int = 64
    learning_rate: float = 5e-3
