"""The offline vocabulary proposer: deterministic, never repeats, singles then combinations."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.answers import extract_concept_from_text, extract_tool_call
from agent.offline import (
    NOT_AN_LLM,
    OfflineVocabProposer,
    Vocabulary,
    combine,
    infer_category,
    read_evidence,
    resolve_tool_choice,
    transcript_from_langchain,
)
from tools.agent_tools import AGENTIC_TOOLS, PROPOSE_CONCEPT, SUBMIT_EXPLANATION
from tools.scoreboard import format_score_lines, format_tried_lines
from toyworld.vocabulary import parse_attributes


def planted_score(concept: str, truth: set[str]) -> float:
    """A fake neuron: rewards the true attributes, most when all are present."""
    attributes = parse_attributes(concept)
    score = 0.2 * len(attributes & truth) - 0.05 * len(attributes - truth)
    return score + (0.5 if truth <= attributes else 0.0)


def paper_prompt(scores: dict[str, float]) -> list:
    ranked = sorted(scores.items(), key=lambda item: -item[1])

    class Entry:
        def __init__(self, concept: str, score: float) -> None:
            self.concept, self.score = concept, score

    board = format_score_lines(Entry(c, s) for c, s in ranked[:10]) or "(empty)"
    tried = format_tried_lines(scores) or "(none yet)"
    return [
        SystemMessage("You interpret a neuron. Budget: 10 rounds."),
        HumanMessage(f"Scoreboard (concept: score, best first):\n{board}\n\nTried:\n{tried}"),
    ]


def run_paper(truth: set[str], rounds: int, model: OfflineVocabProposer) -> list[str]:
    bound = model.bind_tools([PROPOSE_CONCEPT])
    scores: dict[str, float] = {}
    proposals = []
    for _ in range(rounds):
        message = bound.invoke(paper_prompt(scores))
        _name, args = extract_tool_call(message, ["propose_concept"])
        concept = args["concept"]
        assert concept not in scores, f"repeated {concept}"
        proposals.append(concept)
        scores[concept] = planted_score(concept, truth)
    return proposals


def test_default_vocabulary_order_and_categories():
    vocabulary = Vocabulary.default()
    concepts = vocabulary.concepts()
    assert concepts[:3] == ["red", "orange", "yellow"]
    assert len(concepts) == 23
    assert concepts[-2:] == ["many small objects", "large objects"]
    categories = [entry.category for entry in vocabulary.entries]
    assert categories.count("colour") == 10
    assert categories.count("shape") == 8
    assert categories.count("texture") == 3
    assert categories.count("size") == 2
    assert infer_category("red fruit") == "other"


def test_vocabulary_file_parsing(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# comment\n\nRed Fruit\nwheel  # inline comment\nred fruit\n")
    assert Vocabulary.from_file(path).concepts() == ["red fruit", "wheel"]
    path.write_text("# only comments\n")
    with pytest.raises(ValueError, match="one concept per line"):
        Vocabulary.from_file(path)
    with pytest.raises(ValueError, match="cannot read the vocabulary file"):
        Vocabulary.from_file(tmp_path / "missing.txt")


def test_says_it_is_not_an_llm_and_costs_nothing():
    model = OfflineVocabProposer()
    assert "not-an-llm" in model._llm_type
    message = model.bind_tools([PROPOSE_CONCEPT]).invoke(paper_prompt({}))
    assert message.content.startswith(NOT_AN_LLM)
    assert message.usage_metadata["total_tokens"] == 0
    assert message.tool_calls[0]["args"] == {"concept": "red"}


def test_deterministic_for_the_same_messages():
    scores = {"red": 0.1, "blue": 0.9, "orange": 0.3}
    a = OfflineVocabProposer().bind_tools([PROPOSE_CONCEPT]).invoke(paper_prompt(scores))
    b = OfflineVocabProposer().bind_tools([PROPOSE_CONCEPT]).invoke(paper_prompt(scores))
    assert a.content == b.content
    assert a.tool_calls == b.tool_calls


def test_singles_in_file_order_then_combinations_of_the_best():
    proposals = run_paper({"blue", "triangle"}, 25, OfflineVocabProposer())
    assert proposals[:23] == Vocabulary.default().concepts()
    assert proposals[23] == "blue triangle"
    assert len(set(proposals)) == len(proposals)


@pytest.mark.parametrize(
    ("truth", "expected"),
    [
        ({"star", "cross"}, "star or cross"),
        ({"striped", "square"}, "striped square"),
        ({"pink", "orange"}, "pink or orange"),
    ],
)
def test_first_combination_matches_planted_pairs(truth, expected):
    proposals = run_paper(truth, 24, OfflineVocabProposer())
    assert sorted(parse_attributes(proposals[23])) == sorted(parse_attributes(expected))


def test_never_repeats_even_when_everything_is_tried(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("red\ncircle\n")
    proposals = run_paper({"red"}, 30, OfflineVocabProposer(vocabulary_path=str(path)))
    assert proposals[:3] == ["red", "circle", "red circle"]
    assert len(set(proposals)) == 30


def test_tried_lines_are_respected_without_scores():
    bound = OfflineVocabProposer().bind_tools([PROPOSE_CONCEPT])
    message = bound.invoke([HumanMessage("Already tried:\n- red\n- Orange\n- a photo of a dog")])
    assert message.tool_calls[0]["args"]["concept"] == "yellow"


def test_integer_lines_are_not_scores():
    evidence = read_evidence(
        transcript_from_langchain([HumanMessage("budget: 10\niteration: 3\nred: 0.5000")])
    )
    assert evidence.scores == {"red": 0.5}


def test_submit_explanation_returns_the_best():
    scores = {"red": 0.2, "blue triangle": 1.25, "blue": 0.6}
    bound = OfflineVocabProposer().bind_tools([SUBMIT_EXPLANATION])
    message = bound.invoke(paper_prompt(scores))
    _name, args = extract_tool_call(message, ["submit_explanation"])
    assert args["concept"] == "blue triangle"
    assert "not an LLM" in args["summary"]


def test_tool_choice_forces_a_tool():
    scores = {"red": 0.2, "blue": 0.6}
    bound = OfflineVocabProposer().bind_tools(
        [PROPOSE_CONCEPT, SUBMIT_EXPLANATION], tool_choice="submit_explanation"
    )
    assert bound.invoke(paper_prompt(scores)).tool_calls[0]["name"] == "submit_explanation"
    assert resolve_tool_choice({"type": "function", "function": {"name": "b"}}, ["a", "b"]) == (
        ["a", "b"],
        "b",
    )
    assert resolve_tool_choice("none", ["a"]) == ([], None)
    assert resolve_tool_choice("any", ["a"]) == (["a"], "a")


def test_plain_text_without_tools_is_extractable():
    message = OfflineVocabProposer().invoke(paper_prompt({"red": 0.3}))
    assert not message.tool_calls
    assert extract_concept_from_text(message.content) == "orange"
    assert NOT_AN_LLM in message.content


def test_agentic_generate_then_measure_then_next():
    model = OfflineVocabProposer(images_per_concept=3).bind_tools(AGENTIC_TOOLS)
    messages = [SystemMessage("Explore."), HumanMessage("Concepts so far:\n(none yet)")]
    expected = ["red", "orange", "yellow"]
    for concept in expected:
        generate = model.invoke(messages)
        assert generate.tool_calls[0]["name"] == "generate_images"
        assert generate.tool_calls[0]["args"] == {"concept": concept, "n": 3}
        messages += [
            generate,
            ToolMessage(
                f"generated 3 images of '{concept}'",
                tool_call_id=generate.tool_calls[0]["id"],
                name="generate_images",
            ),
        ]
        measure = model.invoke(messages)
        assert measure.tool_calls[0]["name"] == "measure_activation"
        assert measure.tool_calls[0]["args"] == {"concept": concept}
        score = {"red": 0.1, "orange": 0.7, "yellow": 0.2}[concept]
        messages += [
            measure,
            # per-image lines after the first are not scores
            ToolMessage(
                f"{concept}: {score:.4f}\nimage 1: 9.0000\nimage 2: 9.0000",
                tool_call_id=measure.tool_calls[0]["id"],
            ),
        ]
    evidence = read_evidence(transcript_from_langchain(messages))
    assert evidence.scores == {"red": 0.1, "orange": 0.7, "yellow": 0.2}
    final = OfflineVocabProposer().bind_tools([SUBMIT_EXPLANATION]).invoke(messages)
    assert final.tool_calls[0]["args"]["concept"] == "orange"


def test_parallel_calls_hold_distinct_concepts():
    model = OfflineVocabProposer(parallel_calls=3).bind_tools([PROPOSE_CONCEPT])
    message = model.invoke([HumanMessage("- red")])
    assert [call["args"]["concept"] for call in message.tool_calls] == [
        "orange",
        "yellow",
        "green",
    ]
    assert len({call["id"] for call in message.tool_calls}) == 3


def test_ai_tool_calls_count_as_tried():
    previous = AIMessage(
        content="", tool_calls=[{"name": "propose_concept", "args": {"concept": "red"}, "id": "1"}]
    )
    message = OfflineVocabProposer().bind_tools([PROPOSE_CONCEPT]).invoke([previous])
    assert message.tool_calls[0]["args"]["concept"] == "orange"


def test_combination_phrases():
    vocabulary = {entry.concept: entry for entry in Vocabulary.default().entries}
    assert combine(vocabulary["blue"], vocabulary["triangle"]) == "blue triangle"
    assert combine(vocabulary["triangle"], vocabulary["blue"]) == "blue triangle"
    assert combine(vocabulary["star"], vocabulary["cross"]) == "stars or crosses"
    assert combine(vocabulary["pink"], vocabulary["orange"]) == "pink or orange objects"
    assert combine(vocabulary["striped"], vocabulary["dotted"]) == "striped or dotted objects"
    assert combine(vocabulary["square"], vocabulary["striped"]) == "striped square"
    assert combine(vocabulary["many small objects"], vocabulary["red"]) == "many small red objects"
    assert combine(vocabulary["large objects"], vocabulary["cross"]) == "large crosses"


def run_paper_scored(score, rounds: int, model: OfflineVocabProposer) -> dict[str, float]:
    """Like ``run_paper`` with any score function (the prompt shows only the best 10); every
    proposal with its score, in order."""
    bound = model.bind_tools([PROPOSE_CONCEPT])
    scores: dict[str, float] = {}
    for _ in range(rounds):
        message = bound.invoke(paper_prompt(scores))
        _name, args = extract_tool_call(message, ["propose_concept"])
        assert args["concept"] not in scores, f"repeated {args['concept']}"
        scores[args["concept"]] = score(args["concept"])
    return scores


SINGLES = len(Vocabulary.default().concepts())


def test_size_and_count_modifiers_wait_while_a_plain_attribute_leads():
    singles = {"red": 1.0, "large": 0.6, "many": 0.4, "square": 0.4}

    def score(concept: str) -> float:
        attributes = parse_attributes(concept)
        if "red" in attributes:
            return 1.0
        return max((singles.get(a, 0.0) for a in attributes), default=0.0)

    after_singles = list(run_paper_scored(score, SINGLES + 5, OfflineVocabProposer()))[SINGLES:]
    assert after_singles[0] == "red square"
    for concept in after_singles:
        assert "red" in parse_attributes(concept), after_singles
        assert not parse_attributes(concept) & {"large", "small", "many"}, after_singles


@pytest.mark.parametrize("top", ["many small objects", "large objects", "red"])
def test_no_round_rephrases_a_concept_already_tried(top):
    # a rephrasing ("red close-up", "a photo of red") renders what was rendered: no new evidence
    def score(concept: str) -> float:
        return 2.5 if parse_attributes(concept) == parse_attributes(top) else 0.3

    tried = list(run_paper_scored(score, SINGLES + 8, OfflineVocabProposer()))
    after_singles = tried[SINGLES:]
    assert all(parse_attributes(c) != parse_attributes(top) for c in after_singles), after_singles
    attribute_sets = [frozenset(parse_attributes(c)) for c in tried]
    assert len(set(attribute_sets)) == len(attribute_sets), tried


@pytest.mark.parametrize(
    ("halves", "shown"),
    [(("blue", "triangle"), "blue"), (("striped", "square"), "square")],
)
def test_conjunction_partner_is_tried_even_when_off_the_scoreboard(halves, shown):
    """Only one half showed in the singles (the other scored 0, below the board's best 10):
    the proposer still pairs the best entry with partners of other categories."""

    def score(concept: str) -> float:
        attributes = parse_attributes(concept)
        if set(halves) <= attributes:
            return 1.0
        return 0.2 if attributes == {shown} else 0.0

    after_singles = list(run_paper_scored(score, SINGLES + 5, OfflineVocabProposer()))[SINGLES:]
    assert any(parse_attributes(c) == set(halves) for c in after_singles), after_singles


@pytest.fixture(scope="module")
def planted():
    from toyworld.planted import PlantedShapesModel

    return PlantedShapesModel()


@pytest.mark.parametrize(
    "concept", ["red", "circle", "star or cross", "many small objects", "large objects"]
)
def test_recovers_planted_units_in_the_demo_budget(concept, planted):
    """End to end without a server: 28 rounds of 5 images each on the planted model; the
    best-scoring concept (the first of equal ones, as on the scoreboard) names exactly the
    planted attributes."""
    from agent.launch import DEMO_OFFLINE_ITERATIONS
    from toyworld.procedural import render_prompt
    from toyworld.truth import PLANTED_LAYER, planted_ground_truth

    unit = next(u for u in planted_ground_truth() if u.concept == concept)

    def score(proposal: str) -> float:
        images = [render_prompt(proposal, 97 * k + unit.unit).image for k in range(5)]
        return float(planted.activations(images, PLANTED_LAYER)[:, unit.unit].mean())

    history = run_paper_scored(score, DEMO_OFFLINE_ITERATIONS, OfflineVocabProposer())
    best = max(history, key=lambda c: history[c])
    assert parse_attributes(best) == set(unit.attributes), (best, history)
