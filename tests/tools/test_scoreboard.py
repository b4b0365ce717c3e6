"""Scoreboard ranking, concept checks, text formats, units parsing and scoring functions."""

from __future__ import annotations

import numpy as np
import pytest

from agent.launch import parse_units
from tools.scoreboard import (
    ConceptEntry,
    Scoreboard,
    check_concept,
    format_score_lines,
    format_tried_lines,
    parse_score_lines,
    parse_tried_lines,
    validate_concept,
)
from tools.scoring import auc_score, mad_score, score_activations
from tools.server_session import RunSetupError, check_layer_units


def entry(concept: str, score: float, iteration: int = 0) -> ConceptEntry:
    return ConceptEntry(concept, score, [score], [], [], [], iteration, "proposal")


def test_ranking_best_and_tried():
    board = Scoreboard([entry("a", 1.0), entry("b", 3.0), entry("c", 3.0), entry("d", -1.0)])
    assert [e.concept for e in board.top(2)] == ["b", "c"]  # ties keep the earlier first
    assert board.best().concept == "b"
    assert board.tried() == ["a", "b", "c", "d"]
    assert board.has("  B. ") and not board.has("e")
    assert Scoreboard.from_dicts([e.to_dict() for e in board.entries]).entries == board.entries


def test_formats_round_trip():
    board = Scoreboard([entry("red fruit", 2.5), entry("sky: blue?", 0.5)])
    lines = format_score_lines(board.ranked())
    assert lines == "red fruit: 2.5000\nsky: blue?: 0.5000"
    assert parse_score_lines("red fruit: 2.5000\nnoise\n- x\nz: -1e-3") == {
        "red fruit": 2.5,
        "z": -0.001,
    }
    assert parse_tried_lines(format_tried_lines(["a b", "c"])) == ["a b", "c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("   ", "empty"), (None, "must be text"), ("x" * 200, "too long"),
     ("one two three four five six seven eight nine", "too long")],
)  # fmt: skip
def test_bad_concepts(text, message):
    with pytest.raises(ValueError, match=message):
        check_concept(text)


def test_concepts_are_normalised():
    assert check_concept("  Red   Fruit. ") == "red fruit"


def test_units_parsing_and_checks():
    assert parse_units("0-3,10, 2") == [0, 1, 2, 3, 10]
    for bad in ("a-b", "", "3-1"):
        with pytest.raises(RunSetupError):
            parse_units(bad)
    with pytest.raises(RunSetupError, match="has 512 units, indices 0 to 511"):
        check_layer_units({"layer4": 512}, "t", "layer4", [0, 512])
    with pytest.raises(RunSetupError, match="no layer 'layer5'; valid layers: layer4"):
        check_layer_units({"layer4": 512}, "t", "layer5", [0])


def test_scores():
    control = np.array([0.0, 1.0, 2.0, 3.0])
    assert score_activations("mean", [1.0, 3.0]) == 2.0
    assert auc_score([2.0], control) == pytest.approx((2 + 0.5) / 4)
    assert mad_score([3.0, 3.0], control) == pytest.approx((3 - 1.5) / np.std(control, ddof=1))
    assert mad_score([3.0], np.array([1.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="needs a control set"):
        score_activations("auc", [1.0])


@pytest.mark.parametrize(
    "concept",
    ["red fruit", "many small red objects", "stars or crosses", "striped red objects",
     "red on a blue background", "blue triangle on a white background", "a photo of red",
     "dog's head", "t-shirt", "black and white", "red close-up"],
)  # fmt: skip
def test_concepts_the_offline_proposer_and_people_write_pass(concept):
    assert validate_concept(concept) == concept


@pytest.mark.parametrize(
    ("debris", "reason"),
    [("i'm right, i was too quick: 0.175", "digits"), ("in the sentence", "noun phrase"),
     ("no", "chat"), ("3d paper (not available until now", "digits"),
     ('i am": 10/25 = 3.4%', "digits"), ("name", "no visual concept"),
     ("the answer", "no visual concept"), ("concept: red", "':'"), ("sure, here", "','"),
     ("it is red", "chat"), ("red and", "noun phrase"), ("one two three four", "at most 3"),
     ("scoreboard", "no visual concept"), ("test", "no visual concept"),
     ("a to red", "noun phrase")],
)  # fmt: skip
def test_chat_debris_is_not_a_concept(debris, reason):
    with pytest.raises(ValueError, match=reason):
        validate_concept(debris, max_words=3)
