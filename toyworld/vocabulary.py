"""The toy world's vocabulary: parse free text into object groups with canonical attributes.

The same parser serves the procedural generator (what to draw) and the evaluation code (which
attributes a label names), so attribute strings are canonical everywhere: ``"red"``,
``"triangle"``, ``"striped"``, ``"small"``, ``"many"``, ``"blue background"``.
Words the parser does not know are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "diamond",
    "heart",
)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "medium", "large")
COUNTS: tuple[str, ...] = ("one", "two", "three", "four", "five", "many")
BACKGROUND_COLOURS: tuple[str, ...] = (*COLOURS, "gray")
"""Colours a background can be named with; ``gray`` is understood for backgrounds only."""

_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "red": ("red", "crimson", "scarlet", "ruby", "cherry", "maroon", "vermilion", "burgundy"),
        "orange": ("orange", "tangerine", "amber", "apricot"),
        "yellow": ("yellow", "gold", "lemon", "mustard", "canary"),
        "green": ("green", "lime", "emerald", "olive", "jade", "mint"),
        "blue": ("blue", "navy", "azure", "cobalt", "sapphire", "cyan", "turquoise", "cerulean"),
        "purple": ("purple", "violet", "lavender", "lilac", "mauve", "plum", "indigo"),
        "pink": ("pink", "magenta", "fuchsia", "rose", "salmon", "coral"),
        "brown": ("brown", "chocolate", "tan", "bronze", "coffee", "caramel", "chestnut"),
        "black": ("black", "ebony", "onyx", "charcoal"),
        "white": ("white", "ivory", "cream", "pearl"),
    },
    "background_colour": {"gray": ("gray", "grey", "silver")},
    "shape": {
        "circle": ("circle", "circular", "round", "disc", "disk", "ball", "sphere", "orb"),
        "square": ("square", "box", "cube", "block", "tile"),
        "triangle": ("triangle", "triangular", "pyramid"),
        "star": ("star", "starry", "pentagram", "asterisk"),
        "cross": ("cross", "plus", "crucifix"),
        "hexagon": ("hexagon", "hexagonal", "hex", "honeycomb"),
        "diamond": ("diamond", "rhombus", "rhombi", "lozenge", "rhomb"),
        "heart": ("heart", "valentine"),
    },
    "texture": {
        "plain": ("plain", "solid", "unpatterned", "untextured"),
        "striped": (
            "striped",
            "stripe",
            "stripy",
            "stripey",
            "banded",
            "pinstriped",
            "pinstripe",
            "streaked",
        ),
        "dotted": ("dotted", "dot", "dotty", "spotted", "spot", "spotty", "speckled"),
        "checkered": (
            "checkered",
            "chequered",
            "checked",
            "check",
            "checker",
            "checkerboard",
            "chessboard",
            "plaid",
            "gingham",
            "tartan",
        ),
    },
    "size": {
        "small": ("small", "tiny", "little", "mini", "miniature", "minuscule", "smaller", "wee"),
        "medium": ("medium", "moderate"),
        "large": (
            "large",
            "big",
            "huge",
            "giant",
            "enormous",
            "massive",
            "bigger",
            "larger",
            "gigantic",
            "oversized",
        ),
    },
    "count": {
        "one": ("one", "single", "lone", "solo", "1"),
        "two": ("two", "pair", "couple", "twin", "twins", "2"),
        "three": ("three", "trio", "few", "3"),
        "four": ("four", "4"),
        "five": ("five", "5"),
        "many": (
            "many",
            "lots",
            "numerous",
            "multiple",
            "several",
            "dozens",
            "dozen",
            "plenty",
            "bunch",
            "crowd",
            "countless",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "twelve",
            "twenty",
            "hundreds",
            "swarm",
        ),
    },
    "noun": {
        "object": (
            "object",
            "shape",
            "thing",
            "item",
            "figure",
            "symbol",
            "icon",
            "sticker",
            "token",
            "blob",
        )
    },
}
_PHRASES: dict[tuple[str, ...], tuple[str, str]] = {
    ("polka", "dot"): ("texture", "dotted"),
    ("polka", "dots"): ("texture", "dotted"),
    ("polka", "dotted"): ("texture", "dotted"),
    ("plus", "sign"): ("shape", "cross"),
    ("plus", "signs"): ("shape", "cross"),
    ("a", "lot", "of"): ("count", "many"),
    ("a", "few"): ("count", "three"),
}
_BACKGROUND_WORDS = frozenset({"background", "backdrop", "backgrounds", "bg"})
_BACKGROUND_FILLERS = frozenset(
    {"a", "an", "the", "plain", "solid", "simple", "uniform", "flat", "dark", "light", "pale"}
    | {"bright", "colored", "coloured", "color", "colour", "of", "is", "in"}
)
_GROUP_SEPARATORS = frozenset({"and", "with", ",", ";", "&", "beside", "next", "alongside", "near"})
_ALTERNATIVE_SEPARATORS = frozenset({"or", "/"})
_PLURAL_NOUN_CATEGORIES = frozenset({"shape", "noun"})
_SHAPE_ADJECTIVES = frozenset({"circular", "round", "triangular", "hexagonal", "starry"})
_SHAPED_SUFFIXES = frozenset({"shaped", "like"})

_LEXICON: dict[str, tuple[str, str]] = {
    word: (category, canonical)
    for category, table in _SYNONYMS.items()
    for canonical, words in table.items()
    for word in words
}
_TOKEN_PATTERN = re.compile(r"[a-z]+|\d+|[,;&/]")


@dataclass(frozen=True)
class ObjectSpec:
    """One group of objects a text asks for; an empty tuple means "any" (sampled per seed).

    Several values in one field are alternatives ("red or blue"): each object takes one.
    """

    colours: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    textures: tuple[str, ...] = ()
    size: str | None = None
    count: str | None = None
    plural: bool = False

    def attributes(self) -> list[str]:
        """Canonical attribute strings of this group (colours, shapes, textures, size, count)."""
        out = [*self.colours, *self.shapes, *self.textures]
        out += [value for value in (self.size, self.count) if value is not None]
        return out


@dataclass(frozen=True)
class SceneSpec:
    """What a text asks for: object groups, a background colour, and the words understood."""

    groups: tuple[ObjectSpec, ...] = ()
    background: str | None = None
    understood: tuple[str, ...] = ()

    @property
    def attributes(self) -> list[str]:
        """All canonical attributes, unique, in order of appearance."""
        seen: dict[str, None] = {}
        for group in self.groups:
            for attribute in group.attributes():
                seen.setdefault(attribute, None)
        if self.background is not None:
            seen.setdefault(f"{self.background} background", None)
        return list(seen)

    @property
    def is_empty(self) -> bool:
        """True when the text named no object attribute (the scene is random distractors)."""
        return not self.groups


@dataclass(frozen=True)
class _Lexeme:
    category: str  # colour, shape, texture, size, count, noun, separator, alternative, background
    canonical: str
    surface: str
    plural: bool = False
    adjective: bool = False

    @property
    def is_noun(self) -> bool:
        return self.category in _PLURAL_NOUN_CATEGORIES and not self.adjective


@dataclass
class _GroupBuilder:
    colours: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    textures: list[str] = field(default_factory=list)
    size: str | None = None
    count: str | None = None
    plural: bool = False
    has_noun: bool = False

    def add(self, lexeme: _Lexeme) -> None:
        target = {"colour": self.colours, "shape": self.shapes, "texture": self.textures}
        if lexeme.category in target:
            values = target[lexeme.category]
            if lexeme.canonical not in values:
                values.append(lexeme.canonical)
        elif lexeme.category == "size":
            self.size = lexeme.canonical
        elif lexeme.category == "count":
            self.count = lexeme.canonical
        if lexeme.is_noun:
            self.has_noun = True
            self.plural = self.plural or lexeme.plural

    def is_blank(self) -> bool:
        return not (
            self.colours or self.shapes or self.textures or self.size or self.count or self.has_noun
        )

    def build(self) -> ObjectSpec:
        return ObjectSpec(
            colours=tuple(self.colours),
            shapes=tuple(self.shapes),
            textures=tuple(self.textures),
            size=self.size,
            count=self.count,
            plural=self.plural or (self.count not in (None, "one")),
        )


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens and separators; hyphens, quotes and other punctuation split words."""
    return _TOKEN_PATTERN.findall(text.lower())


def _lookup_word(word: str) -> tuple[str, str, bool] | None:
    """(category, canonical, plural) for one word, trying plural forms; None if unknown."""
    if word in _LEXICON:
        return (*_LEXICON[word], False)
    candidates = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    for candidate in candidates:
        if len(candidate) > 1 and candidate in _LEXICON:
            category, canonical = _LEXICON[candidate]
            return category, canonical, category in _PLURAL_NOUN_CATEGORIES
    return None


def _lex(tokens: list[str]) -> list[_Lexeme]:
    """Turn tokens into lexemes, matching multi-word phrases first; unknown words stay "unknown"."""
    out: list[_Lexeme] = []
    i = 0
    while i < len(tokens):
        for length in (3, 2):
            phrase = tuple(tokens[i : i + length])
            if len(phrase) == length and phrase in _PHRASES:
                category, canonical = _PHRASES[phrase]
                plural = category == "shape" and phrase[-1].endswith("s")
                out.append(_Lexeme(category, canonical, " ".join(phrase), plural))
                i += length
                break
        else:
            token = tokens[i]
            i += 1
            if token in _BACKGROUND_WORDS:
                out.append(_Lexeme("background", "", token))
            elif token in _GROUP_SEPARATORS:
                out.append(_Lexeme("separator", token, token))
            elif token in _ALTERNATIVE_SEPARATORS:
                out.append(_Lexeme("alternative", token, token))
            elif (found := _lookup_word(token)) is not None:
                category, canonical, plural = found
                adjective = category == "shape" and token in _SHAPE_ADJECTIVES
                if category == "shape" and i < len(tokens) and tokens[i] in _SHAPED_SUFFIXES:
                    token, adjective = f"{token} {tokens[i]}", True
                    i += 1
                out.append(_Lexeme(category, canonical, token, plural, adjective))
            else:
                out.append(_Lexeme("unknown", "", token))
    return out


def _is_background_filler(lexeme: _Lexeme) -> bool:
    return lexeme.surface in _BACKGROUND_FILLERS and lexeme.category in ("unknown", "texture")


def _take_background(lexemes: list[_Lexeme]) -> tuple[str | None, dict[int, str]]:
    """Find "<colour> background" or "background of <colour>".

    Returns the colour (the last one named) and, by lexeme index, what the background phrases
    consumed: the background word maps to the understood phrase, the other words to "".
    """
    colour: str | None = None
    consumed: dict[int, str] = {}
    for index, lexeme in enumerate(lexemes):
        if lexeme.category != "background":
            continue
        consumed[index] = ""
        for direction in (-1, 1):
            j = index + direction
            while 0 <= j < len(lexemes) and _is_background_filler(lexemes[j]):
                j += direction
            if 0 <= j < len(lexemes) and lexemes[j].category in ("colour", "background_colour"):
                colour = lexemes[j].canonical
                start = j
                while start > 0 and j < index and lexemes[start - 1].category == "texture":
                    start -= 1  # "a plain white background": "plain" describes the background
                    if not _is_background_filler(lexemes[start]):
                        start += 1
                        break
                for k in range(min(start, index), max(index, j) + 1):
                    consumed[k] = ""
                words = (lexemes[j].surface, lexeme.surface)
                consumed[index] = " ".join(words if j < index else words[::-1])
                break
    return colour, consumed


def parse_scene_text(text: str) -> SceneSpec:
    """Parse free text ("three crimson polka-dot stars on a white background") into a scene.

    Handles case, punctuation, plurals and synonyms; unknown words are ignored. Adjectives
    before a noun belong to it; "and"/"with"/"," start a new group after a noun; "or" makes
    alternatives within a group.
    """
    lexemes = _lex(tokenize(text))
    background, consumed = _take_background(lexemes)

    understood: list[str] = []
    groups: list[_GroupBuilder] = []
    current = _GroupBuilder()
    in_alternative = False
    for index, lexeme in enumerate(lexemes):
        if index in consumed:
            if consumed[index]:
                understood.append(consumed[index])
            continue
        if lexeme.category in ("unknown", "background_colour"):
            continue
        if lexeme.category == "separator":
            if current.has_noun:
                groups.append(current)
                current = _GroupBuilder()
            in_alternative = False
            continue
        if lexeme.category == "alternative":
            in_alternative = True
            continue
        understood.append(lexeme.surface)
        # An attribute after a completed noun phrase starts the next object group.
        if current.has_noun and not in_alternative:
            continues = lexeme.category == "noun" or (lexeme.is_noun and not current.shapes)
            if not continues:
                groups.append(current)
                current = _GroupBuilder()
        current.add(lexeme)
        if lexeme.is_noun:
            in_alternative = False
    if not current.is_blank():
        if not current.has_noun and groups:
            _merge_trailing(groups[-1], current)
        if not current.is_blank():
            groups.append(current)
    return SceneSpec(
        groups=tuple(group.build() for group in groups),
        background=background,
        understood=tuple(understood),
    )


def _merge_trailing(previous: _GroupBuilder, trailing: _GroupBuilder) -> None:
    """Fold a noun-less tail ("a circle in red") into the group before it where slots are free."""
    if not previous.colours:
        previous.colours = trailing.colours
        trailing.colours = []
    if not previous.textures:
        previous.textures = trailing.textures
        trailing.textures = []
    if previous.size is None:
        previous.size, trailing.size = trailing.size, None
    if previous.count is None:
        previous.count, trailing.count = trailing.count, None
    trailing.has_noun = False


def parse_attributes(text: str) -> set[str]:
    """The canonical attributes a text names, e.g. ``{"blue", "triangle"}`` for "navy triangles"."""
    return set(parse_scene_text(text).attributes)


def describes_disjoint_objects(first: str, second: str) -> bool:
    """Whether no object can match both texts: some attribute kind (colour, shape, texture, size)
    that both name takes different values in each ("red" and "purple", "star or cross" and
    "hexagon"; not "red" and "triangle": a red triangle is both). Only the first object group
    of each text counts."""
    a, b = parse_scene_text(first).groups, parse_scene_text(second).groups
    if not a or not b:
        return False
    one, two = a[0], b[0]
    pairs: list[tuple[set[str], set[str]]] = [
        (set(one.colours), set(two.colours)),
        (set(one.shapes), set(two.shapes)),
        (set(one.textures), set(two.textures)),
        ({one.size} if one.size else set(), {two.size} if two.size else set()),
    ]
    return any(x and y and not x & y for x, y in pairs)
