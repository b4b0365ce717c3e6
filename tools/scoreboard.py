"""The scoreboard: every concept tried for a neuron, its evidence and its score.

Text formats here are part of the prompt contract: the LLM (and the offline proposer, which
parses them) sees scoreboard entries as ``concept: score`` lines and the tried list as
``- concept`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

SCORE_LINE = re.compile(
    r"^\s*(?P<concept>[^:\n]+?):\s*(?P<score>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$"
)
TRIED_LINE = re.compile(r"^\s*-\s+(?P<concept>.+?)\s*$")
MAX_CONCEPT_CHARS = 80
MAX_CONCEPT_WORDS = 8


def normalise_concept(text: str) -> str:
    """The form concepts are compared in: lower case, single spaces, no end punctuation."""
    text = re.sub(r"\s+", " ", str(text)).strip().strip(".,;:!?\"'`").strip()
    return text.lower()


def check_concept(text: object) -> str:
    """A usable concept or ``ValueError`` saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"a concept must be text, got {type(text).__name__}")
    concept = normalise_concept(text)
    if not concept:
        raise ValueError("the concept is empty; give a short noun phrase such as 'red fruit'")
    if len(concept) > MAX_CONCEPT_CHARS or len(concept.split()) > MAX_CONCEPT_WORDS:
        raise ValueError(
            f"the concept is too long ({len(concept)} characters, {len(concept.split())} words); "
            f"give at most {MAX_CONCEPT_WORDS} words and {MAX_CONCEPT_CHARS} characters"
        )
    return concept


@dataclass
class ConceptEntry:
    """One tried concept with its images, activations and score."""

    concept: str
    score: float
    activations: list[float]
    image_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    iteration: int
    source: str  # "seed", "proposal", "agent", "summary"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Scoreboard:
    """All entries in the order they were tried; ranking and formatting views over them."""

    entries: list[ConceptEntry] = field(default_factory=list)

    @classmethod
    def from_dicts(cls, rows: Iterable[dict]) -> Scoreboard:
        """Rebuild from ``to_dict`` rows (state checkpoints, history files)."""
        return cls([ConceptEntry(**row) for row in rows])

    def tried(self) -> list[str]:
        """Every concept tried, in order, without repeats."""
        return list(dict.fromkeys(entry.concept for entry in self.entries))

    def has(self, concept: str) -> bool:
        """Whether a concept (in any spelling that normalises the same) was tried."""
        return normalise_concept(concept) in {entry.concept for entry in self.entries}

    def ranked(self) -> list[ConceptEntry]:
        """Best first; ties keep the earlier entry first."""
        return sorted(self.entries, key=lambda entry: -entry.score)

    def top(self, k: int) -> list[ConceptEntry]:
        """The ``k`` best entries: the board the LLM sees (a new concept enters by beating the
        lowest of them)."""
        return self.ranked()[:k]

    def best(self) -> ConceptEntry | None:
        """The best-scoring entry of the whole history."""
        ranked = self.ranked()
        return ranked[0] if ranked else None


def format_score_lines(entries: Iterable[ConceptEntry], digits: int = 4) -> str:
    """``concept: score`` lines, in the given order."""
    return "\n".join(f"{entry.concept}: {entry.score:.{digits}f}" for entry in entries)


def format_tried_lines(concepts: Iterable[str]) -> str:
    """``- concept`` lines."""
    return "\n".join(f"- {concept}" for concept in concepts)


def parse_score_lines(text: str) -> dict[str, float]:
    """Read ``concept: score`` lines back (the offline proposer and tests use this)."""
    scores: dict[str, float] = {}
    for line in text.splitlines():
        match = SCORE_LINE.match(line)
        if match:
            scores[normalise_concept(match["concept"])] = float(match["score"])
    return scores


def parse_tried_lines(text: str) -> list[str]:
    """Read ``- concept`` lines back."""
    return [
        normalise_concept(match["concept"])
        for line in text.splitlines()
        if (match := TRIED_LINE.match(line))
    ]
