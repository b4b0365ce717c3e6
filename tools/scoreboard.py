"""The scoreboard: every concept tried for a neuron, its evidence and its score.

Text formats here are part of the prompt contract: the LLM (and the offline proposer, which
parses them) sees scoreboard entries as ``concept: score`` lines and the tried list as
``- concept`` lines.
"""

from __future__ import annotations

import itertools
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


# A concept is a short noun phrase: letters, spaces and hyphens (a possessive "'s" and "&"
# pass). What a small chat model puts around or instead of one is refused with a reason.
_CONCEPT_CHARS = re.compile(r"[^\W\d_]+(?:['’]s)?(?:[- ][^\W\d_]+(?:['’]s)?)*|&")
_CHAT_WORDS = frozenset(
    "i i'm im i've i'd i'll me my mine myself you you're your yours we we're our us "
    "yes no nope ok okay sure sorry thanks thank hello hi hey please maybe "
    "here's there's let's it's that's what's don't doesn't isn't can't won't "
    "am is are was were be been being do does did have has had would shall should could "
    "might".split()
)
"""Words of chat or of a sentence (pronouns, replies, contractions, verbs of being and
auxiliaries that are no nouns): a noun phrase has none of them."""
_FUNCTION_WORDS = frozenset(
    "a an the and or nor but of in on at to for with without from by into onto over under "
    "about above below between than then as like not only very just also this that these "
    "those it its some any all each every none nothing something anything".split()
)
"""Words that cannot end a phrase or make one on their own ("in the", "red and")."""
_LEADING_PREPOSITIONS = frozenset(
    "of in on at to for with without from by into onto over under about above below "
    "between than as like not".split()
)
_META_WORDS = frozenset(
    "concept concepts name names answer answers label labels word words phrase phrases "
    "sentence sentences text title unit units neuron neurons score scores scoreboard "
    "example examples proposal explanation unknown test tests model models image images "
    "picture pictures photo photos photograph question task experiment result results "
    "hypothesis approach idea option thing things".split()
)
"""Words about the task rather than about images: a concept made of only these (and
function words) says nothing about what the unit sees."""


def validate_concept(text: object, max_words: int = MAX_CONCEPT_WORDS) -> str:
    """A concept fit to render, or ``ValueError`` saying why not (written to be sent back).

    Stricter than :func:`check_concept`, for what an LLM proposes: a short noun phrase of at
    most ``max_words`` words made of letters, spaces and hyphens; no digits, colons, quotes,
    brackets or other punctuation; no chat text (pronouns, replies, verbs such as "is"); not
    starting with a preposition or ending with a function word; not only words about the
    task ("name", "concept", "the answer"). ``"red fruit"``, ``"stars or crosses"`` and
    ``"red on a blue background"`` pass; ``"i'm right: 0.175"``, ``"in the sentence"`` and
    ``"no"`` do not.
    """
    concept = check_concept(text)
    hint = "give only a short noun phrase such as 'red fruit'"
    words = concept.replace("’", "'").split()
    if re.search(r"\d", concept):
        raise ValueError(f"{concept!r} contains digits; {hint}, without numbers or scores")
    if not _CONCEPT_CHARS.fullmatch(concept.replace(" & ", " and ")):
        bad = sorted({c for c in concept if not (c.isalpha() or c in " -'’&")})
        shown = " ".join(repr(c) for c in bad) or "an apostrophe"
        raise ValueError(f"{concept!r} contains {shown}; {hint}, without punctuation or quotes")
    chat = [word for word in words if word in _CHAT_WORDS or word.endswith(("n't", "'m", "'re"))]
    if chat:
        raise ValueError(
            f"{concept!r} reads as chat or a sentence ({chat[0]!r}); {hint}, nothing else"
        )
    if len(words) > max_words:
        raise ValueError(
            f"the concept has {len(words)} words; give at most {max_words} words, e.g. 'red fruit'"
        )
    articles = {"a", "an", "the"}
    after_article = [nxt for word, nxt in itertools.pairwise(words) if word in articles]
    if (
        words[0] in _LEADING_PREPOSITIONS
        or words[-1] in _FUNCTION_WORDS
        or any(word in _FUNCTION_WORDS for word in after_article)
    ):
        raise ValueError(f"{concept!r} is not a complete noun phrase; {hint}")
    if all(word in _META_WORDS or word in _FUNCTION_WORDS for word in words):
        raise ValueError(f"{concept!r} names no visual concept; {hint}")
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
