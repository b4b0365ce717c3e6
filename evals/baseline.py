"""The predefined-vocabulary baseline and concept discovery.

The baseline scores every concept of a fixed vocabulary with the same generator, image-prompt
template, number of images and scoring as a LINE run, and labels each unit with its best concept.
Its images do not depend on the unit (seeds derive from run seed, concept and index), so each
concept is rendered once and every unit of the layer is read from the same cached layer vectors.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.wire import RenderOptions
from prompts.variant import PromptVariant
from tools.client import InferenceClient
from tools.scoreboard import normalise_concept
from tools.scoring import score_activations


def read_vocabulary(path: str | Path) -> list[str]:
    """One concept per line; blank lines and ``#`` comments are skipped; repeats dropped."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"vocabulary file {str(source)!r} does not exist")
    concepts = [
        normalise_concept(line)
        for line in source.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    concepts = list(dict.fromkeys(c for c in concepts if c))
    if not concepts:
        raise ValueError(f"vocabulary file {str(source)!r} holds no concept")
    return concepts


def baseline_seed(run_seed: int, concept: str, index: int) -> int:
    """A concept's ``index``-th image seed, shared by every unit."""
    digest = hashlib.sha256(f"vocab|{run_seed}|{concept}|{index}".encode()).hexdigest()
    return int(digest[:15], 16)


@dataclass
class BaselineResult:
    """Every unit's score on every concept, and the best concept per unit."""

    units: list[int]
    concepts: list[str]
    scores: np.ndarray  # [concepts, units]

    def labels(self) -> list[tuple[int, str, float]]:
        """(unit, best concept, its score) per unit."""
        best = np.argmax(self.scores, axis=0)
        return [
            (unit, self.concepts[best[i]], float(self.scores[best[i], i]))
            for i, unit in enumerate(self.units)
        ]

    def write_labels(self, path: Path) -> None:
        """``unit,label,score`` rows: the format ``line eval cosy --labels`` reads."""
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["unit", "label", "score"])
            writer.writerows(self.labels())

    def write_scores(self, path: Path) -> None:
        """Every concept's score on every unit: a ``concept`` column, then one per unit."""
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["concept", *[f"unit_{unit}" for unit in self.units]])
            for concept, row in zip(self.concepts, self.scores, strict=True):
                writer.writerow([concept, *[f"{value:.6g}" for value in row]])


async def vocabulary_baseline(
    client: InferenceClient,
    target: str,
    layer: str,
    units: Sequence[int],
    concepts: Sequence[str],
    variant: PromptVariant,
    generator: str | None = None,
    run_seed: int = 0,
    control: np.ndarray | None = None,
    concepts_per_request: int = 8,
) -> BaselineResult:
    """Score every vocabulary concept on every unit (``control`` is ``[images, units]``)."""
    per_concept = variant.settings.images_per_concept
    scores = np.zeros((len(concepts), len(units)))
    for start in range(0, len(concepts), concepts_per_request):
        chunk = concepts[start : start + concepts_per_request]
        seeds = [baseline_seed(run_seed, c, i) for c in chunk for i in range(per_concept)]
        prompts = [variant.image_prompt(c, s) for c, s in zip(
            [c for c in chunk for _ in range(per_concept)], seeds, strict=True
        )]  # fmt: skip
        images = await client.generate_images(prompts, seeds, RenderOptions(generator=generator))
        values = (await client.activations(target, layer, [i.id for i in images], units)).values
        for offset, _concept in enumerate(chunk):
            block = values[offset * per_concept : (offset + 1) * per_concept]
            for column in range(len(units)):
                scores[start + offset, column] = score_activations(
                    variant.settings.score,
                    block[:, column].tolist(),
                    None if control is None else control[:, column],
                )
    return BaselineResult(list(units), list(concepts), scores)


def concept_discovery(labels: Sequence[str], vocabulary: Sequence[str]) -> float:
    """The share of labels that are not in the vocabulary (compared after normalising)."""
    if not labels:
        return 0.0
    known = {normalise_concept(concept) for concept in vocabulary}
    return sum(normalise_concept(label) not in known for label in labels) / len(labels)
