"""The toy world's vocabulary parser: plurals, synonyms, case, punctuation, unknown words."""

from __future__ import annotations

import pytest

from toyworld.truth import planted_ground_truth
from toyworld.vocabulary import (
    COLOURS,
    COUNTS,
    SHAPES,
    TEXTURES,
    ObjectSpec,
    parse_attributes,
    parse_scene_text,
)


def test_vocabulary_sizes_meet_the_issue() -> None:
    assert len(COLOURS) >= 10 and len(SHAPES) >= 8
    assert set(TEXTURES) == {"plain", "striped", "dotted", "checkered"}
    assert set(COUNTS) == {"one", "two", "three", "four", "five", "many"}


def test_simple_object() -> None:
    spec = parse_scene_text("a red circle")
    assert spec.groups == (ObjectSpec(colours=("red",), shapes=("circle",)),)
    assert spec.understood == ("red", "circle")
    assert spec.attributes == ["red", "circle"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Crimson Circles!", {"red", "circle"}),
        ("STARS", {"star"}),
        ("crosses", {"cross"}),
        ("boxes", {"square"}),
        ("polka dots", {"dotted"}),
        ("polka-dot hearts", {"dotted", "heart"}),
        ("dots", {"dotted"}),
        ("a spotted rhombus", {"dotted", "diamond"}),
        ("chequered hexagons", {"checkered", "hexagon"}),
        ("stripes", {"striped"}),
        ("a big navy plus sign", {"large", "blue", "cross"}),
        ("tiny violet triangles", {"small", "purple", "triangle"}),
        ("lots of little shapes", {"many", "small"}),
        ("3 gold stars", {"three", "yellow", "star"}),
        ("a pair of hearts", {"two", "heart"}),
        ("star-shaped, emerald thing", {"star", "green"}),
        ("a circle on a grey backdrop", {"circle", "gray background"}),
        ("many small objects", {"many", "small"}),
        ("star or cross", {"star", "cross"}),
    ],
)
def test_synonyms_plurals_case_punctuation(text: str, expected: set[str]) -> None:
    assert parse_attributes(text) == expected


def test_unknown_words_are_ignored_and_templates_work() -> None:
    spec = parse_scene_text("a realistic photo of a crimson circle, aerial view, golden hour")
    assert spec.understood == ("crimson", "circle")
    assert spec.attributes == ["red", "circle"]
    assert parse_scene_text("a realistic photo of a cat, aerial view").is_empty
    assert parse_scene_text("").is_empty
    lighting = "from a low angle, in soft light, flat lighting, close-up, top-down view, at night"
    assert parse_scene_text(lighting).understood == ()
    assert parse_scene_text("!!! ??? ...").understood == ()


def test_counts_and_plurals() -> None:
    (group,) = parse_scene_text("five striped squares").groups
    assert group.count == "five" and group.plural and group.textures == ("striped",)
    (group,) = parse_scene_text("squares").groups
    assert group.count is None and group.plural
    (group,) = parse_scene_text("a single large object").groups
    assert group.count == "one" and group.size == "large" and not group.plural


def test_background_phrases() -> None:
    spec = parse_scene_text("striped circles on a plain white background")
    assert spec.background == "white"
    assert spec.groups[0].textures == ("striped",)  # "plain" belonged to the background
    assert "white background" in spec.understood
    assert parse_scene_text("a star, background of black").background == "black"
    assert parse_scene_text("a star on a background").background is None


def test_several_groups_and_alternatives() -> None:
    spec = parse_scene_text("a blue triangle and three red circles")
    assert [g.attributes() for g in spec.groups] == [
        ["blue", "triangle"],
        ["red", "circle", "three"],
    ]
    (group,) = parse_scene_text("a star or a cross").groups
    assert group.shapes == ("star", "cross")
    (group,) = parse_scene_text("red and blue circles").groups
    assert group.colours == ("red", "blue") and group.shapes == ("circle",)
    (group,) = parse_scene_text("a circle in red").groups
    assert group.colours == ("red",)


def test_truth_attributes_are_what_the_parser_reads_from_the_concept() -> None:
    for unit in planted_ground_truth():
        assert set(unit.attributes) == parse_attributes(unit.concept), unit
