"""Polysemanticity: high-scoring concepts grouped by meaning, on hand-written and real histories."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.launch import DEMO_OFFLINE_ITERATIONS
from agent.record import GROUP_COLUMNS
from analysis.polysemanticity import (
    analyse_entries,
    average_linkage,
    concept_groups,
    content_words,
    core_concept,
    is_disjunction,
    is_refinement,
)
from analysis.similarity import default_embedder
from tools.scoreboard import ConceptEntry
from toyworld.vocabulary import parse_attributes

RED, STAR_OR_CROSS = 0, 2  # planted units: a single attribute and an OR unit

LOW = {
    "yellow": 0.12,
    "green": 0.1,
    "purple": 0.08,
    "brown": 0.1,
    "square": 0.15,
    "triangle": 0.14,
    "heart": 0.11,
    "dotted": 0.09,
    "checkered": 0.13,
}


def entries(scores: dict[str, float], low: dict[str, float] = LOW) -> list[dict]:
    """History entries (as in ``neurons/*.json``) for concept -> score."""
    return [
        {"concept": concept, "score": score, "activations": [score], "iteration": index}
        for index, (concept, score) in enumerate({**low, **scores}.items())
    ]


@pytest.fixture(scope="module")
def embedder():
    return default_embedder()


# --------------------------------------------------------------------------- hand-written


def test_or_unit_gives_two_groups(embedder):
    history = entries(
        {
            "star or cross": 1.04,
            "white star": 1.03,
            "star": 1.02,
            "orange star": 0.97,
            "orange cross": 0.95,
            "cross": 0.93,
            "white cross": 0.87,
            "orange": 0.65,
            "white": 0.65,
        }
    )
    groups = concept_groups(history, embedder=embedder)
    assert len(groups) == 2
    cores = sorted(core for group in groups for core in group.cores)
    assert cores == ["cross", "star"]
    star = next(group for group in groups if group.cores == ["star"])
    assert star.best_concept == "white star"  # the best concept that is not a disjunction
    assert {"star", "orange star"} <= set(star.concepts)
    assert "orange cross" not in star.concepts
    assert sum("star or cross" in group.concepts for group in groups) == 1


def test_a_high_disjunction_lifts_its_tried_parts(embedder):
    """A unit that sums two detectors: both together beat either alone."""
    history = entries({"stars or crosses": 0.83, "star": 0.6, "cross": 0.6, "white": 0.38})
    result = analyse_entries(history, embedder=embedder)
    assert result.high_concepts == ["stars or crosses"]
    assert sorted(group.best_concept for group in result.groups) == ["cross", "star"]


def test_single_attribute_unit_gives_one_group(embedder):
    history = entries(
        {"red hexagon": 0.93, "red star": 0.91, "red triangle": 0.88, "red": 0.7, "star": 0.2}
    )
    groups = concept_groups(history, embedder=embedder)
    assert len(groups) == 1
    assert groups[0].cores == ["red"]
    assert groups[0].best_concept == "red hexagon"
    assert groups[0].best_score == pytest.approx(0.93)


def test_scores_decide_what_a_shared_word_means(embedder):
    """'orange cross' and 'pink cross' share a word, but 'cross' alone scored low."""
    history = entries(
        {"orange cross": 1.09, "pink cross": 1.08, "orange": 1.0, "pink": 0.95, "cross": 0.3}
    )
    groups = concept_groups(history, embedder=embedder)
    assert sorted(tuple(group.cores) for group in groups) == [("orange",), ("pink",)]


def test_paraphrases_merge(embedder):
    groups = concept_groups(entries({"dog": 1.0, "puppy": 0.98}), embedder=embedder)
    assert len(groups) == 1
    assert groups[0].concepts == ["dog", "puppy"]


def test_negative_scores_are_handled_like_shifted_ones(embedder):
    scores = {"star": 1.02, "cross": 0.93, "white star": 1.0, "orange": 0.5}
    shifted = [{**entry, "score": entry["score"] - 5.0} for entry in entries(scores)]
    assert [g.concepts for g in concept_groups(shifted, embedder=embedder)] == [
        g.concepts for g in concept_groups(entries(scores), embedder=embedder)
    ]
    assert len(concept_groups(shifted, embedder=embedder)) == 2


def test_constant_unit_has_no_group(embedder):
    history = [{"concept": concept, "score": 1.0} for concept in ("red", "star", "dotted")]
    result = analyse_entries(history, embedder=embedder)
    assert result.groups == [] and result.count == 0 and result.cutoff is None
    assert concept_groups([], embedder=embedder) == []


def test_single_entry_is_one_group(embedder):
    groups = concept_groups([{"concept": "red", "score": 0.4}], embedder=embedder)
    assert [(g.best_concept, g.best_score) for g in groups] == [("red", 0.4)]


def test_entries_repeats_and_bad_scores(embedder):
    """ConceptEntry objects work; a repeated concept keeps its best score; -inf is ignored."""
    rows = [
        ConceptEntry("star", 0.5, [0.5], ["a"], ["p"], [0], 1, "proposal"),
        ConceptEntry("Star", 1.0, [1.0], ["b"], ["p"], [1], 2, "summary"),
        ConceptEntry("circle", float("-inf"), [], [], [], [], 3, "proposal"),
        ConceptEntry("red", 0.1, [0.1], ["c"], ["p"], [2], 4, "proposal"),
        ConceptEntry("blue", 0.1, [0.1], ["c"], ["p"], [2], 5, "proposal"),
    ]
    result = analyse_entries(rows, embedder=embedder)
    assert result.concepts_tried == 3
    assert [(g.best_concept, g.best_score) for g in result.groups] == [("star", 1.0)]


def test_disjunction_without_tried_parts_stays_whole(embedder):
    groups = concept_groups(entries({"cats or dogs": 1.0}), embedder=embedder)
    assert [group.concepts for group in groups] == [["cats or dogs"]]


def test_thresholds_are_checked(embedder):
    with pytest.raises(ValueError, match="relative_threshold must lie in"):
        concept_groups(entries({"star": 1.0}), relative_threshold=1.5, embedder=embedder)
    with pytest.raises(ValueError, match="similarity_threshold must lie in"):
        concept_groups(entries({"star": 1.0}), similarity_threshold=1.5, embedder=embedder)


def test_average_linkage_merges_on_the_mean_similarity():
    """a-b merge first (0.9); {a, b}-c then has mean similarity 0.625, below 0.7, although b-c
    alone (0.75) is above it: average linkage, not single linkage."""
    similarity = np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.75], [0.5, 0.75, 1.0]])
    assert average_linkage(similarity, 0.7) == [[0, 1], [2]]
    assert average_linkage(similarity, 0.6) == [[0, 1, 2]]
    assert average_linkage(similarity, 0.95) == [[0], [1], [2]]
    assert average_linkage(np.array([[1.0, 0.7], [0.7, 1.0]]), 0.7) == [[0, 1]]  # "at least"
    assert average_linkage(np.ones((1, 1)), 0.7) == [[0]]
    assert average_linkage(np.ones((0, 0)), 0.7) == []


def test_text_rules():
    assert content_words("many small red objects") == {"many", "small", "red"}
    assert content_words("white stars") == content_words("a white star")
    assert content_words("crosses") == {"cross"}
    assert is_disjunction("star or cross") and is_disjunction("cats / dogs")
    assert not is_disjunction("orange star")
    assert is_refinement("orange", "orange circle") and is_refinement("white stars", "star")
    assert not is_refinement("orange cross", "pink cross")
    scores = {"red hexagon close-up": 1.0, "red hexagon": 0.95, "red": 0.8, "hexagon": 0.2}
    assert core_concept("red hexagon close-up", scores, supported=0.5) == "red"
    assert core_concept("red hexagon close-up", scores, supported=0.9) == "red hexagon"
    assert core_concept("blue star", scores, supported=0.5) == "blue star"


# --------------------------------------------------------------------------- toy world


@pytest.fixture(scope="module")
def toy_run(toy_world_server, tmp_path_factory, explain):
    """The offline demo's budget on the red unit and the star-or-cross unit."""
    rows, folder = explain(
        toy_world_server,
        tmp_path_factory.mktemp("poly-run") / "run",
        [RED, STAR_OR_CROSS],
        generator="procedural:shapes",
        iterations=DEMO_OFFLINE_ITERATIONS,
    )
    assert all(row["status"] == "done" for row in rows), rows
    return rows, folder


def test_toy_world_or_unit_has_two_groups(toy_run):
    _, folder = toy_run
    record = folder.read_record("planted", STAR_OR_CROSS)
    assert record.groups is not None and len(record.groups) == 2, record.groups
    meanings = [set().union(*(parse_attributes(c) for c in group.cores)) for group in record.groups]
    assert {"star"} in [m & {"star", "cross"} for m in meanings]
    assert {"cross"} in [m & {"star", "cross"} for m in meanings]


def test_toy_world_single_unit_has_one_group(toy_run):
    _, folder = toy_run
    record = folder.read_record("planted", RED)
    assert record.groups is not None and len(record.groups) == 1, record.groups
    assert "red" in parse_attributes(record.groups[0].best_concept)


def test_the_run_stores_the_groups_once_in_the_analysis_order(toy_run, embedder):
    """The runner writes each record's groups in :func:`analyse_entries`' order, and
    ``results.csv``'s group columns are derived from them."""
    rows, folder = toy_run
    for record in folder.records():
        found = analyse_entries(record.entries, embedder=embedder)
        assert [(g.concepts, g.scores) for g in record.groups] == [
            (g.concepts, g.scores) for g in found.groups
        ]
        assert not math.isnan(found.cutoff)
    assert [row["groups"] for row in rows] == [1, 2]
    assert all(" | " in row["group_concepts"] for row in rows if row["groups"] == 2)
    header = folder.results_csv.read_text().splitlines()[0].split(",")
    assert header[-2:] == GROUP_COLUMNS
