"""Polysemanticity from a neuron's tried concepts: how many distinct meanings score high.

A run computes it once per neuron and stores the groups, in this module's order, in the
neuron's record (:func:`agent.runner.add_groups`, :class:`agent.record.NeuronRecord`).

1. **High-scoring concepts.** Each concept keeps its best score (a concept tried twice, e.g. as
   a proposal and as the summary, counts once). A concept is *high* when its score reaches
   ``median + relative_threshold * (best - median)`` of the history's scores: relative to the
   span between a typical concept and the best one, so it behaves the same for mean
   activations, MAD (negative values) and AUC scores. A history whose scores are all equal (a
   constant unit) has no high concept and no group.
2. **What each high concept stands for (its core).** A compound concept is explained by the
   history's own evidence: of the tried concepts it refines ("red" and "hexagon" for "red
   hexagon": every content word of the shorter one is in the longer one, plurals folded), the
   best-scoring one stands for it when it scores at least ``median + core_threshold * (best -
   median)``, followed down ("red hexagon close-up" -> "red hexagon" -> "red"). So "red
   hexagon" and "red star" share the core "red" on a red unit, while "orange cross" and "pink
   cross" keep apart on a pink-or-orange unit (there "cross" scored low, "orange" and "pink"
   high). Text alone cannot tell these two cases apart; the scores can.
3. **Grouping by meaning.** The cores are embedded with all-MiniLM-L6-v2
   (:mod:`analysis.similarity`) and merged by average-linkage agglomerative clustering
   (scikit-learn's ``AgglomerativeClustering`` on cosine distances): two clusters
   merge while the mean cosine similarity between their cores is at least
   ``similarity_threshold`` (0.7: paraphrases and refinements merge, "star"/"cross" at 0.35
   and "orange"/"pink" at 0.63 do not); a core that refines another counts as similarity 1.
   A *disjunction* ("star or cross") names several meanings at once, so it takes no part in
   the clustering (it would bridge the groups it names) and joins the group whose concepts it
   is most similar to afterwards; its parts that were tried and score at least the core
   threshold join the high concepts ("stars or crosses" 0.83 lifts "star" 0.60 and "cross"
   0.60 on a unit that sums its two detectors, which then show as two groups).

Each group lists its high concepts, best first; its best concept is the best that is not a
disjunction. The thresholds were chosen on toy-world runs: OR units ("star or cross", "pink or
orange") come out with two groups, single-attribute units ("red": "red triangle", "red
hexagon", "red") with one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from analysis.similarity import SentenceEmbedder, default_embedder

RELATIVE_THRESHOLD = 0.8
"""A concept is high when its score is at least this far from the median towards the best."""
SIMILARITY_THRESHOLD = 0.7
"""Groups merge while the mean cosine similarity of their cores is at least this."""
CORE_THRESHOLD = 0.25
"""A tried concept can stand for the high concepts that refine it when its score is at least
this far from the median towards the best."""

_STOPWORDS = frozenset(
    "a an the of on in with and to at by for from some any object objects thing things "
    "image images photo photos picture pictures realistic".split()
)
_DISJUNCTION = re.compile(r"\s+or\s+|\s*/\s*|\s*\|\s*")


@dataclass
class ConceptGroup:
    """High-scoring concepts with one meaning: its own concepts best first, then any
    disjunction ("star or cross") that joined it."""

    concepts: list[str]
    scores: list[float]
    cores: list[str] = field(default_factory=list)
    """The general concepts the group was formed from ("red" for "red hexagon", "red star")."""

    @property
    def best_concept(self) -> str:
        """The group's best-scoring concept (a disjunction only when the group has no other)."""
        return self.concepts[0]

    @property
    def best_score(self) -> float:
        """The score of :attr:`best_concept`."""
        return self.scores[0]


@dataclass
class Polysemanticity:
    """The groups of one neuron and the score cut-off that chose its high concepts."""

    groups: list[ConceptGroup]
    cutoff: float | None
    concepts_tried: int
    high_concepts: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many distinct meanings score high."""
        return len(self.groups)


def best_scores(entries: Iterable[Mapping[str, Any] | Any]) -> dict[str, float]:
    """Each concept's best finite score, from history entries (dicts or ``ConceptEntry``)."""
    scores: dict[str, float] = {}
    for entry in entries:
        concept = entry["concept"] if isinstance(entry, Mapping) else entry.concept
        score = entry["score"] if isinstance(entry, Mapping) else entry.score
        if concept is None or score is None:
            continue
        concept = " ".join(str(concept).lower().split())
        score = float(score)
        if not concept or not math.isfinite(score):
            continue
        if score > scores.get(concept, -math.inf):
            scores[concept] = score
    return scores


def score_cutoff(scores: Sequence[float], relative_threshold: float) -> float | None:
    """``median + relative_threshold * (best - median)``; None when all scores are equal."""
    values = np.asarray([s for s in scores if math.isfinite(s)], dtype=np.float64)
    if values.size == 0 or values.max() == values.min():
        return None
    median, best = float(np.median(values)), float(values.max())
    return median + relative_threshold * (best - median)


def content_words(concept: str) -> frozenset[str]:
    """The concept's words without fillers ("a", "of", "objects", ...), plurals folded."""
    words = re.findall(r"[a-z0-9]+", concept.lower())
    return frozenset(_singular(word) for word in words if word not in _STOPWORDS)


def _singular(word: str) -> str:
    for suffix in ("ches", "shes", "sses", "xes"):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def is_disjunction(concept: str) -> bool:
    """Whether a concept names alternatives ("star or cross", "cats / dogs")."""
    return len([part for part in _DISJUNCTION.split(concept) if part.strip()]) > 1


def is_refinement(a: str, b: str) -> bool:
    """Whether one concept adds words to the other ("orange circle" refines "orange")."""
    words_a, words_b = content_words(a), content_words(b)
    if not words_a or not words_b or words_a == words_b:
        return bool(words_a) and words_a == words_b
    return words_a < words_b or words_b < words_a


def meaning_similarity(concepts: Sequence[str], embedder: SentenceEmbedder) -> np.ndarray:
    """Cosine similarity of the concepts' embeddings, 1 where one refines the other."""
    matrix = embedder.similarity_matrix(concepts).astype(np.float64)
    for i, a in enumerate(concepts):
        for j in range(i + 1, len(concepts)):
            if is_refinement(a, concepts[j]):
                matrix[i, j] = matrix[j, i] = 1.0
    np.fill_diagonal(matrix, 1.0)
    return matrix


def average_linkage(similarity: np.ndarray, threshold: float) -> list[list[int]]:
    """Agglomerative clusters of a similarity matrix: merge the two most similar clusters (mean
    pairwise similarity, i.e. average linkage) while that similarity is at least ``threshold``.
    Deterministic; each cluster lists its indices in order, clusters by their first index."""
    if len(similarity) < 2:
        return [[index] for index in range(len(similarity))]
    clustering = AgglomerativeClustering(
        n_clusters=None,
        metric="precomputed",
        linkage="average",
        # scikit-learn merges below its distance threshold; "at least" includes the threshold
        distance_threshold=float(np.nextafter(1.0 - threshold, np.inf)),
    )
    labels = clustering.fit_predict(1.0 - similarity)
    clusters: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(int(label), []).append(index)
    return list(clusters.values())


def concept_groups(
    entries: Iterable[Mapping[str, Any] | Any],
    relative_threshold: float = RELATIVE_THRESHOLD,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    embedder: SentenceEmbedder | None = None,
    core_threshold: float = CORE_THRESHOLD,
) -> list[ConceptGroup]:
    """Group a history's high-scoring concepts by meaning; groups best first.

    ``entries`` are history entries (dicts with ``concept`` and ``score``, or ``ConceptEntry``).
    See the module docstring for the rules. An empty history, or one whose scores are all
    equal, gives no group.
    """
    return analyse_entries(
        entries, relative_threshold, similarity_threshold, embedder, core_threshold
    ).groups


def analyse_entries(
    entries: Iterable[Mapping[str, Any] | Any],
    relative_threshold: float = RELATIVE_THRESHOLD,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    embedder: SentenceEmbedder | None = None,
    core_threshold: float = CORE_THRESHOLD,
) -> Polysemanticity:
    """:func:`concept_groups` with the cut-off and the high concepts it used."""
    if not -1.0 <= similarity_threshold <= 1.0:
        raise ValueError(
            f"similarity_threshold must lie in [-1, 1] (got {similarity_threshold}): it is a "
            "cosine similarity"
        )
    for name, value in (
        ("relative_threshold", relative_threshold),
        ("core_threshold", core_threshold),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1] (got {value}): it is a fraction of the span from "
                "the median score to the best score"
            )
    scores = best_scores(entries)
    if len(scores) == 1:
        ((concept, score),) = scores.items()
        return Polysemanticity([ConceptGroup([concept], [score], [concept])], score, 1, [concept])
    cutoff = score_cutoff(list(scores.values()), relative_threshold)
    supported = score_cutoff(list(scores.values()), core_threshold)
    if cutoff is None or supported is None:  # all scores equal: both are None
        return Polysemanticity([], None, len(scores), [])
    high = sorted(
        (concept for concept, score in scores.items() if score >= cutoff),
        key=lambda concept: -scores[concept],
    )
    embedder = embedder or default_embedder()
    plain = [concept for concept in high if not is_disjunction(concept)]
    alternatives = [concept for concept in high if is_disjunction(concept)]
    for alternative in alternatives:
        for part in disjunction_parts(alternative, scores, supported):
            if part not in plain:
                plain.append(part)
    if not plain:
        plain, alternatives = alternatives, []
    core_of = {
        concept: concept if is_disjunction(concept) else core_concept(concept, scores, supported)
        for concept in plain
    }
    cores = list(dict.fromkeys(core_of.values()))
    clusters = average_linkage(meaning_similarity(cores, embedder), similarity_threshold)
    members = [
        [c for c in plain if core_of[c] in {cores[i] for i in cluster}] for cluster in clusters
    ]
    if alternatives:
        vectors = embedder.embed(plain + alternatives)
        columns = [[plain.index(c) for c in concepts] for concepts in members]
        for offset, alternative in enumerate(alternatives):
            row = vectors[len(plain) + offset] @ vectors[: len(plain)].T
            closest = max(range(len(members)), key=lambda k: float(row[columns[k]].mean()))
            members[closest].append(alternative)
    groups = []
    for cluster, concepts in zip(clusters, members, strict=True):
        # plain concepts first: a disjunction joined the group, it does not define it
        concepts = sorted(concepts, key=lambda c: (c in alternatives, -scores[c]))
        group_cores = sorted((cores[i] for i in cluster), key=lambda c: -scores[c])
        groups.append(ConceptGroup(concepts, [scores[c] for c in concepts], group_cores))
    groups.sort(key=lambda group: -max(group.scores))
    return Polysemanticity(groups, cutoff, len(scores), high)


def disjunction_parts(concept: str, scores: Mapping[str, float], supported: float) -> list[str]:
    """The tried concepts a disjunction names ("star" and "cross" for "stars or crosses") that
    score at least ``supported``: the meanings behind a high-scoring disjunction."""
    parts = []
    for part in _DISJUNCTION.split(concept):
        words = content_words(part)
        matches = [
            other
            for other, score in scores.items()
            if words and score >= supported and content_words(other) == words
            and not is_disjunction(other)
        ]  # fmt: skip
        if matches:
            parts.append(max(matches, key=lambda other: scores[other]))
    return parts


def core_concept(concept: str, scores: Mapping[str, float], supported: float) -> str:
    """What a compound concept's score comes from, by the history's own evidence.

    Of the tried concepts that ``concept`` refines ("red" and "hexagon" for "red hexagon"),
    the best-scoring one when it scores at least ``supported``, followed down the same way
    ("red hexagon close-up" -> "red hexagon" -> "red"); else ``concept`` itself.
    """
    seen = {concept}
    while True:
        words = content_words(concept)
        parts = [
            other
            for other, score in scores.items()
            if score >= supported
            and other not in seen
            and not is_disjunction(other)
            and content_words(other)
            and content_words(other) < words
        ]
        if not parts:
            return concept
        concept = max(parts, key=lambda other: (scores[other], -len(content_words(other))))
        seen.add(concept)
