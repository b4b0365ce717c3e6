"""Scoring labels against known concepts (the toy world's planted units, or any planted neuron).

:func:`score_label` is a plain function of a label, its truth and (optionally) the scores of the
neuron's history, so planted neurons of real models (detector-based, in the style of MAIA's
synthetic neurons) can be scored the same way as the toy world's: give their truth as a
:class:`GroundTruth` (concept text, kind, and toy-world attributes where there are any).

- **attribute match**: the label's parsed toy-world attributes equal the truth's
  (:func:`attribute_match`); not applicable (None) to no-concept units or truths without
  attributes.
- **similarity**: cosine similarity of the label and the truth's concept text with
  all-MiniLM-L6-v2 (:mod:`analysis.similarity`); None for no-concept units.
- **normalised score**: how far the label's score stands out of the neuron's history, as the
  modified z-score of Iglewicz and Hoaglin, ``0.6745 * (score - median) / MAD`` over the scores
  of every concept tried for the neuron (MAD: median absolute deviation). It works alike for
  mean-activation, MAD and AUC scores.
- **claimed**: the normalised score is at least :data:`CLAIM_Z` (3.5, the usual outlier cut for
  modified z-scores): the method claims a concept with a high score. For a no-concept unit this
  is a false claim.
- **recovered**: the attribute match where there is one, else similarity at least
  :data:`SIMILARITY_RECOVERED`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from analysis.similarity import SentenceEmbedder, default_embedder
from toyworld.vocabulary import parse_attributes

KINDS = ("single", "and", "or", "count", "none")
"""Unit kinds, in report order; ``none`` is a unit with no concept."""
CLAIM_Z = 3.5
"""A label is claimed with a high score when its modified z-score reaches this."""
SIMILARITY_RECOVERED = 0.7
"""A truth without attributes counts as recovered when the similarity reaches this."""
MAD_TO_SIGMA = 0.6745
"""Modified z-score constant: the MAD of a normal distribution is 0.6745 sigma."""


class KnownConcept(Protocol):
    """A unit whose concept is known: a toy-world ``PlantedUnit``, a ``DissectedUnit`` or a
    :class:`GroundTruth`."""

    @property
    def concept(self) -> str:
        """The concept's text."""
        ...

    @property
    def kind(self) -> str:
        """One of :data:`KINDS`."""
        ...

    @property
    def attributes(self) -> Sequence[str]:
        """Its canonical toy-world attributes (none outside the toy world)."""
        ...


@dataclass(frozen=True)
class GroundTruth:
    """A neuron's known concept: its text, its kind and (toy world) its canonical attributes."""

    concept: str
    kind: str
    attributes: tuple[str, ...] = ()
    inhibitor: str = ""
    """The concept known to silence the neuron (planted inhibitor units), else empty."""

    @classmethod
    def of(cls, truth: KnownConcept | Mapping[str, Any]) -> GroundTruth:
        """From a unit with a known concept (``PlantedUnit``, ``DissectedUnit``; a GroundTruth
        is returned as is) or a mapping with ``concept``/``kind``/``attributes``."""
        if isinstance(truth, GroundTruth):
            return truth
        if isinstance(truth, Mapping):
            concept, kind = truth.get("concept"), truth.get("kind")
            attributes = truth.get("attributes") or ()
        else:
            concept, kind = getattr(truth, "concept", None), getattr(truth, "kind", None)
            attributes = getattr(truth, "attributes", ()) or ()
        if not isinstance(concept, str) or kind not in KINDS:
            raise ValueError(
                f"a ground truth needs a concept text and a kind in {', '.join(KINDS)}; got "
                f"concept={concept!r}, kind={kind!r}"
            )
        if isinstance(attributes, str):
            attributes = (attributes,)
        inhibitor = (
            truth.get("inhibitor")
            if isinstance(truth, Mapping)
            else getattr(truth, "inhibitor", "")
        )
        return cls(concept, kind, tuple(attributes), str(inhibitor or ""))


@dataclass(frozen=True)
class LabelScore:
    """How a label compares with the truth (None: not applicable or not measured)."""

    label: str
    truth: str
    kind: str
    attribute_match: bool | None
    similarity: float | None
    normalised_score: float | None
    claimed: bool | None

    @property
    def recovered(self) -> bool | None:
        """The attribute match, else similarity >= :data:`SIMILARITY_RECOVERED`; None for
        no-concept units."""
        if self.kind == "none":
            return None
        if self.attribute_match is not None:
            return self.attribute_match
        if self.similarity is None:
            return None
        return self.similarity >= SIMILARITY_RECOVERED

    def to_dict(self) -> dict[str, Any]:
        """Fields and ``recovered``, JSON-ready."""
        return {**asdict(self), "recovered": self.recovered}


def attribute_match(label: str, truth: KnownConcept) -> bool | None:
    """Whether a label names exactly the truth's attributes; ``None`` for no-concept units."""
    if truth.kind == "none":
        return None
    return parse_attributes(label) == set(truth.attributes)


def normalised_score(score: float, history_scores: Sequence[float]) -> float | None:
    """The modified z-score of ``score`` among the history's scores (module docstring).

    With a MAD of 0 it is 0 at the median and +-inf away from it; None without finite scores.
    """
    values = np.asarray([s for s in history_scores if s is not None and math.isfinite(s)])
    if values.size == 0 or score is None or not math.isfinite(score):
        return None
    median = float(np.median(values))
    spread = float(np.median(np.abs(values - median)))
    if spread == 0.0:
        return 0.0 if score == median else math.copysign(math.inf, score - median)
    return MAD_TO_SIGMA * (score - median) / spread


def score_label(
    label: str | None,
    truth: KnownConcept | Mapping[str, Any],
    embedder: SentenceEmbedder | None = None,
    *,
    score: float | None = None,
    history_scores: Sequence[float] | None = None,
    claim_z: float = CLAIM_Z,
) -> LabelScore:
    """Score one final label against its truth.

    ``score`` is the label's score and ``history_scores`` the scores of every concept tried for
    the neuron; without ``score`` the best history score is taken (the final label is the
    history's best). Without a history, ``normalised_score`` and ``claimed`` are None. An empty
    label (a failed neuron) matches nothing and claims nothing. ``embedder`` defaults to the
    process-wide all-MiniLM-L6-v2 (:func:`analysis.similarity.default_embedder`).
    """
    truth = GroundTruth.of(truth)
    label = " ".join((label or "").split())
    concept_unit = truth.kind != "none"
    match = None
    if concept_unit and truth.attributes:
        match = bool(label) and attribute_match(label, truth)
    similarity = None
    if concept_unit:
        if label:
            if embedder is None:
                embedder = default_embedder()
            similarity = embedder.similarity(label, truth.concept)
        else:
            similarity = 0.0
    z = None
    finite = [s for s in history_scores or () if s is not None and math.isfinite(s)]
    if finite:
        z = normalised_score(max(finite) if score is None else score, finite)
    claimed = None if z is None else bool(label) and z >= claim_z
    return LabelScore(label, truth.concept, truth.kind, match, similarity, z, claimed)
