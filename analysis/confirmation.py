"""Choosing the final label on fresh images: candidates, their ablations and the choice rule.

The search only explores: its scores, a few images per concept on per-neuron seeds, decide what
to try next, and the maximum over dozens of noisy rounds is biased upward (the winner's curse)
and favours extra attributes that merely enlarge or repeat the object. Confirmation re-renders
the best distinct candidates of the search, plus their ablations (the label without each
attribute; an OR split into its alternatives), on fresh seeds shared by every candidate, and
scores each against one fixed control set by the AUC of CoSy (:func:`tools.scoring.auc_score`).
:func:`choose_label` then applies the rule, in this order:

0. Candidates that render the very same images (equal activations on every confirmation
   image) count once (:func:`duplicates`).
1. **A conjunction must beat each of its parts**: ``checkered blue objects`` stays in the race
   only when its AUC exceeds that of ``blue objects`` and of ``checkered objects`` by more than
   the margin, and when no sibling (a conjunction sharing one part, with another attribute in
   place of the other: ``striped blue objects``) does as well within the margin: then the
   attribute it adds is not specific.
2. **An OR is kept only when each alternative fires on its own** (its AUC reaches
   :data:`analysis.selectivity.SELECTIVE_AUC`); then its alternatives are out of the race, as
   neither alone covers the other.
3. **The simplest candidate within the margin of the best wins** (fewest attribute words; ties
   go to the higher AUC, then to the better search rank).

Everything here works on label text alone (no toy-world knowledge): attributes are the words
of a label that are not fillers (``a``, ``of``, ``objects`` ...), ``X or Y`` is an OR, ``X and
Y`` and ``X on a Y`` are conjunctions of their two sides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from analysis.selectivity import SELECTIVE_AUC

FILLER_WORDS = frozenset(
    {"a", "an", "the", "of", "some", "objects", "object", "things", "thing", "shapes"}
)
"""Words that name no attribute: dropping another word leaves them; they are never dropped."""


BOUND_WORDS = frozenset({"background"})
"""Nouns that name an attribute only with the word before them (``green background``): the
pair is one attribute, never split by an ablation."""


def _words(text: str) -> list[str]:
    """The label's words, a word and the :data:`BOUND_WORDS` noun after it joined into one."""
    words = re.sub(r"\s+", " ", text).strip().lower().split()
    out: list[str] = []
    for word in words:
        if word in BOUND_WORDS and out and out[-1] not in FILLER_WORDS:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return out


def attribute_words(label: str) -> list[str]:
    """The words of a label that carry an attribute (not :data:`FILLER_WORDS`, not ``or``/
    ``and``/``on``)."""
    return [word for word in _words(label) if word not in FILLER_WORDS | {"or", "and", "on"}]


def complexity(label: str) -> int:
    """How many attributes a label names: its attribute words (an OR counts every
    alternative's)."""
    return len(attribute_words(label))


def _clean(text: str) -> str:
    return " ".join(_words(text))


def _share_trailing_noun(pieces: list[str]) -> list[str]:
    """``pink``, ``orange objects`` -> ``pink objects``, ``orange objects``: a last piece of
    several words after one-word pieces lends them its last word."""
    last = pieces[-1].split()
    if len(last) > 1 and all(len(piece.split()) == 1 for piece in pieces[:-1]):
        return [f"{piece} {last[-1]}" for piece in pieces[:-1]] + [pieces[-1]]
    return pieces


def alternatives(label: str) -> list[str]:
    """The alternatives of an OR label, a shared trailing noun given to each (``pink or orange
    objects`` -> ``pink objects``, ``orange objects``); ``[]`` when the label is no OR."""
    pieces = [_clean(piece) for piece in re.split(r"\s+or\s+", label.strip().lower())]
    pieces = [piece for piece in pieces if piece]
    return _share_trailing_noun(pieces) if len(pieces) > 1 else []


def ablations(label: str) -> list[str]:
    """The label without each of its attributes, as the checks of a conjunction need them.

    ``X or Y`` gives its alternatives; ``X on a Y background`` and ``X and Y`` their two sides;
    otherwise every label that drops one attribute word (``checkered blue objects`` ->
    ``blue objects``, ``checkered objects``). A single attribute has none.
    """
    text = _clean(label)
    ors = alternatives(text)
    if ors:
        return ors
    for joint in (" and ", " on a ", " on an ", " on the ", " on "):
        if joint in text:
            left, right = text.split(joint, 1)
            sides = [_clean(left), _clean(right)]
            if joint == " and ":  # "purple and yellow background": two backgrounds
                sides = _share_trailing_noun(sides)
            return [side for side in sides if attribute_words(side)]
    words = _words(text)
    if len(attribute_words(text)) < 2:
        return []
    out: list[str] = []
    for index, word in enumerate(words):
        if word in FILLER_WORDS:
            continue
        rest = " ".join(words[:index] + words[index + 1 :])
        if attribute_words(rest) and rest not in out:
            out.append(rest)
    return out


def structure(label: str) -> str:
    """``or``, ``and`` (a conjunction of attributes) or ``single``."""
    if alternatives(label):
        return "or"
    return "and" if ablations(label) else "single"


@dataclass
class ConfirmedCandidate:
    """One candidate measured on the confirmation images."""

    concept: str
    source: str
    """``search`` (a top concept of the history) or ``ablation of <concept>``."""
    auc: float
    """AUC of its confirmation images against the control set (ties 1/2)."""
    auc_low: float
    auc_high: float
    """The AUC's 95% bootstrap interval."""
    mean: float
    """Mean activation on its confirmation images."""
    search_score: float | None = None
    """Its score in the search (None for an ablation the search never tried)."""
    search_rank: int = 0
    """Its rank by search score (0 best); ablations rank after every search candidate."""
    activations: list[float] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    kept: bool = True
    """Whether it passed checks 1 and 2 of the rule."""
    note: str = ""
    """Why it was dropped, or why it won."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Choice:
    """The chosen label and why."""

    label: str
    reason: str
    best: str
    """The candidate with the highest AUC among those kept."""
    margin: float


def _stem(text: str) -> str:
    return " ".join(word.removesuffix("es").removesuffix("s") for word in text.split())


def _sibling(
    candidate: ConfirmedCandidate, others: Sequence[ConfirmedCandidate], margin: float
) -> ConfirmedCandidate | None:
    """A conjunction that shares a part with ``candidate`` but adds another attribute, and
    scores within ``margin`` of it (``black background and black`` for ``black background and
    green``): then the attribute ``candidate`` adds is not what the unit wants."""
    own = {_stem(part) for part in ablations(candidate.concept)}
    for other in others:
        if other is candidate or structure(other.concept) != "and":
            continue
        theirs = {_stem(part) for part in ablations(other.concept)}
        if own & theirs and own != theirs and other.auc >= candidate.auc - margin:
            return other
    return None


def _preference(candidate: ConfirmedCandidate) -> tuple[bool, int, int]:
    return (candidate.search_score is None, complexity(candidate.concept), candidate.search_rank)


def duplicates(candidates: Sequence[ConfirmedCandidate]) -> dict[str, str]:
    """Candidates whose activations equal another's on every confirmation image (the
    generator renders them alike, e.g. ``many objects`` and ``many small objects`` in the toy
    world), each mapped to the one that stands for them: a concept the search tried before a
    derived ablation, then the simplest, then the better search rank. A derived label that
    renders the very images of the search's own adds no evidence."""
    out: dict[str, str] = {}
    ordered = sorted(candidates, key=_preference)
    for index, candidate in enumerate(ordered):
        if candidate.concept in out or not candidate.activations:
            continue
        for other in ordered[index + 1 :]:
            if other.concept not in out and other.activations == candidate.activations:
                out[other.concept] = candidate.concept
    return out


def choose_label(
    candidates: Sequence[ConfirmedCandidate],
    margin: float,
    fires_auc: float = SELECTIVE_AUC,
) -> Choice:
    """Apply the rule of the module docstring with ``margin`` (the variant's
    ``confirm_margin``); marks each candidate ``kept`` with a ``note``.

    Raises ``ValueError`` without candidates.
    """
    if not candidates:
        raise ValueError("confirmation needs at least one measured candidate")
    twins = duplicates(candidates)
    by_concept = {c.concept: c for c in candidates if c.concept not in twins}
    covered: set[frozenset[str]] = set()
    for candidate in candidates:
        candidate.kept, candidate.note = True, ""
        if candidate.concept in twins:
            candidate.kept = False
            candidate.note = f"renders the same images as '{twins[candidate.concept]}'"
            continue
        parts = [by_concept[part] for part in ablations(candidate.concept) if part in by_concept]
        kind = structure(candidate.concept)
        if kind == "or":
            quiet = [part for part in parts if part.auc < fires_auc]
            missing = [part for part in alternatives(candidate.concept) if part not in by_concept]
            if quiet or missing:
                candidate.kept = False
                names = [f"'{p.concept}' (AUC {p.auc:.3f})" for p in quiet] + missing
                candidate.note = (
                    f"an alternative does not fire on its own: {', '.join(names)} "
                    f"(needs AUC {fires_auc})"
                )
            else:
                covered.update(frozenset(attribute_words(part.concept)) for part in parts)
        elif kind == "and":
            rivals = [part for part in parts if candidate.auc <= part.auc + margin]
            sibling = _sibling(candidate, list(by_concept.values()), margin)
            if rivals:
                candidate.kept = False
                rival = max(rivals, key=lambda part: part.auc)
                candidate.note = (
                    f"does not beat its part '{rival.concept}' (AUC {candidate.auc:.3f} vs "
                    f"{rival.auc:.3f}, margin {margin})"
                )
            elif sibling is not None:
                candidate.kept = False
                candidate.note = (
                    f"its sibling '{sibling.concept}' does as well (AUC {sibling.auc:.3f}): the "
                    "attribute it adds is not specific"
                )
    for part in candidates:  # an alternative, in any wording ("orange" for "orange objects")
        if part.kept and frozenset(attribute_words(part.concept)) in covered:
            part.kept, part.note = False, "an alternative of a kept OR (alone it misses the other)"
    kept = [candidate for candidate in candidates if candidate.kept]
    pool = kept or list(candidates)
    best = max(pool, key=lambda c: (c.auc, -c.search_rank))
    close = [c for c in pool if c.auc >= best.auc - margin]
    chosen = min(close, key=lambda c: (complexity(c.concept), -c.auc, c.search_rank))
    if not kept:
        reason = "no candidate passed the checks; the highest AUC stands"
        chosen = best
    elif chosen is best:
        reason = f"highest AUC ({best.auc:.3f})"
        if structure(chosen.concept) == "and":
            reason += "; the conjunction beats each of its parts"
        elif structure(chosen.concept) == "or":
            reason += "; each alternative fires on its own"
    else:
        reason = (
            f"simplest within {margin} of the best ('{best.concept}', AUC {best.auc:.3f}): "
            f"AUC {chosen.auc:.3f}, {complexity(chosen.concept)} vs "
            f"{complexity(best.concept)} attribute words"
        )
    chosen.note = f"chosen: {reason}"
    return Choice(chosen.concept, reason, best.concept, margin)


def missing_union(candidates: Sequence[ConfirmedCandidate]) -> tuple[str, str] | None:
    """``(concept, source)`` of the OR of the two best single-attribute candidates that fire on
    their own (AUC at least :data:`SELECTIVE_AUC`) and share no word, when no candidate is already
    their OR; else None. A unit that fires on pink and on orange objects is explained by
    ``pink or orange``, not by either half (the missing-labels check of Neuron_Eval)."""
    firing = sorted(
        (c for c in candidates if c.auc >= SELECTIVE_AUC and complexity(c.concept) == 1),
        key=lambda c: -c.auc,
    )
    if len(firing) < 2:
        return None

    def plain_words(concept: str) -> set[str]:  # "blue background" shares "blue" with "blue"
        return {word for phrase in attribute_words(concept) for word in phrase.split()}

    first = firing[0]
    words = plain_words(first.concept) - BOUND_WORDS
    other = next((c for c in firing[1:] if not words & plain_words(c.concept)), None)
    if other is None:
        return None
    pair = {first.concept, other.concept}
    if any(set(alternatives(c.concept)) == pair for c in candidates):
        return None
    source = f"union of '{first.concept}' and '{other.concept}'"
    return f"{first.concept} or {other.concept}", source


def choose_inhibitor(
    candidates: Sequence[ConfirmedCandidate], margin: float
) -> ConfirmedCandidate | None:
    """The concept that drives the unit lowest against the control set: the simplest candidate
    whose AUC is within ``margin`` of the lowest (ties to the lower AUC); None without
    candidates. Its AUC below 0.5 says how surely it silences the unit
    (:meth:`analysis.selectivity.Verdict.inhibitor`)."""
    if not candidates:
        return None
    lowest = min(candidate.auc for candidate in candidates)
    close = [c for c in candidates if c.auc <= lowest + margin]
    return min(close, key=lambda c: (complexity(c.concept), c.auc, c.search_rank))
