"""Whole runs of both strategies: real LangGraph, real ChatOpenAI, a scripted LLM server."""

from __future__ import annotations

import csv
import json

import pytest

from testing.scripted_llm import ProposerPolicy, Reply, ScriptedReplies, start_scripted_llm
from toyworld.truth import inhibited_ground_truth, planted_ground_truth
from toyworld.vocabulary import parse_attributes

OPENAI = "openai-compatible:scripted"


def history(folder, unit: int, layer: str = "planted") -> dict:
    return json.loads(folder.record_path(layer, unit).read_text())


def test_paper_strategy_through_chatopenai(toy_world_server, explain, tmp_path):
    with start_scripted_llm(ProposerPolicy()) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [9, 11], llm=OPENAI, llm_base_url=llm.url,
            iterations=4,
        )  # fmt: skip
        requests = llm.stats.requests
    assert [row["status"] for row in rows] == ["done", "done"]
    with folder.results_csv.open() as stream:
        table = list(csv.DictReader(stream))
    assert {
        "target",
        "layer",
        "unit",
        "label",
        "score",
        "status",
        "llm_calls",
        "tokens",
        "images",
    } <= set(table[0])
    assert sum(row["llm_calls"] for row in rows) == requests == 2 * (4 + 1)
    for row in rows:
        neuron = history(folder, row["unit"])
        entries = neuron["entries"]
        assert [e["iteration"] for e in entries if e["source"] == "proposal"] == [1, 2, 3, 4]
        assert len({e["concept"] for e in entries}) == len(entries)  # nothing tried twice
        assert all(len(e["image_ids"]) == 5 and len(e["activations"]) == 5 for e in entries)
        best = max(entries, key=lambda e: e["score"])
        confirmation = neuron["confirmation"]
        checked = {c["concept"]: c for c in confirmation["candidates"]}
        assert best["concept"] in checked  # the search's best is re-checked, not trusted
        chosen = checked[row["label"]]
        assert row["score"] == chosen["auc"] and chosen["note"].startswith("chosen")
        fresh = {seed for c in checked.values() for seed in c["seeds"]}
        assert not fresh & {seed for e in entries for seed in e["seeds"]}
        assert all(c["seeds"] == chosen["seeds"] for c in checked.values())  # shared seeds
        assert len(chosen["activations"]) == confirmation["images_per_candidate"] == 20
        assert row["verdict"] in ("selective", "weak", "none")
        assert row["images"] == 5 * len(entries)
        assert row["confirmation_images"] == 20 * len(checked)
        assert row["tokens"] > 0
        assert (
            neuron["summary"]["concept"] and neuron["llm_log"][0]["request"][0]["role"] == "system"
        )


def test_agentic_strategy_stays_within_its_budget(toy_world_server, explain, tmp_path):
    with start_scripted_llm(ProposerPolicy(parallel_calls=2)) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [0, 2], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", max_concepts=4, max_images=30, max_llm_turns=12,
        )  # fmt: skip
    for row in rows:
        assert row["status"] == "done", row["reason"]
        neuron = history(folder, row["unit"])
        agent_entries = [e for e in neuron["entries"] if e["source"] == "agent"]
        assert 1 <= len(agent_entries) <= 4
        assert neuron["counters"]["agent_turns"] <= 12
        summary_images = sum(
            len(e["image_ids"]) for e in neuron["entries"] if e["source"] == "summary"
        )
        assert neuron["counters"]["images"] - summary_images <= 30
        assert any(m["role"] == "tool" for m in neuron["messages"])


def test_unusable_answers_are_reasked_and_counted(toy_world_server, explain, tmp_path):
    script = ScriptedReplies(
        [
            Reply.empty(),
            Reply.unknown_tool(),
            Reply.malformed_arguments("propose_concept"),
            Reply.long_concept("propose_concept"),
            Reply.text_reply("Concept: **Red fruit**."),
        ]
    )
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [0], llm=OPENAI, llm_base_url=llm.url,
            iterations=2, concurrency=1,
        )  # fmt: skip
    assert rows[0]["status"] == "done"
    neuron = history(folder, 0)
    assert neuron["counters"]["reasks"] == 4
    assert neuron["entries"][0]["concept"] == "red fruit"  # the plain-text fallback
    reasons = [log.get("unusable", "") for log in neuron["llm_log"]]
    assert sum(bool(reason) for reason in reasons) == 4
    assert rows[0]["reasks"] == 4


def test_a_concept_tried_before_is_reasked(toy_world_server, explain, tmp_path):
    script = ScriptedReplies(
        [
            Reply.tool_call("propose_concept", concept="red fruit"),
            Reply.tool_call("propose_concept", concept="Red  Fruit."),  # the same once normalised
        ]
    )
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [0], llm=OPENAI, llm_base_url=llm.url,
            iterations=2, concurrency=1,
        )  # fmt: skip
    assert rows[0]["status"] == "done" and rows[0]["reasks"] == 1
    neuron = history(folder, 0)
    reasons = [log["unusable"] for log in neuron["llm_log"] if log.get("unusable")]
    assert reasons == ["'red fruit' was already tried; propose a new one"]
    proposals = [e["concept"] for e in neuron["entries"] if e["source"] == "proposal"]
    assert proposals[0] == "red fruit" and len(set(proposals)) == 2


def test_tool_errors_go_back_to_the_llm(toy_world_server, explain, tmp_path):
    script = ScriptedReplies(
        [
            Reply.tool_call("measure_activation", concept="blue"),
            Reply.tool_call("launch_rockets", concept="blue"),
            Reply.tool_call("generate_images", concept="blue", n=1000),
            Reply.malformed_arguments("generate_images"),
            Reply.long_concept("generate_images"),
        ]
    )
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [9], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", max_concepts=3, max_llm_turns=15, concurrency=1,
        )  # fmt: skip
    assert rows[0]["status"] == "done", rows[0]["reason"]
    neuron = history(folder, 9)
    tool_texts = [m["content"] for m in neuron["messages"] if m["role"] == "tool"]
    assert "no images of 'blue' yet; call generate_images first" in tool_texts[0]
    assert "there is no tool 'launch_rockets'" in tool_texts[1]
    assert "n must be a whole number from 1 to 16" in tool_texts[2]
    assert "malformed arguments" in tool_texts[3]
    assert "too long" in tool_texts[4]
    assert neuron["counters"]["tool_errors"] >= 5


def test_tool_calls_of_one_message_run_in_order(toy_world_server, explain, tmp_path):
    script = ScriptedReplies(
        [
            Reply.tool_calls_of(
                [
                    ("generate_images", {"concept": "blue", "n": 2}),
                    ("measure_activation", {"concept": "blue"}),  # sees the images just made
                    ("read_scoreboard", {"top_k": 3}),  # ...and the score just recorded
                ]
            )
        ]
    )
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [9], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", max_concepts=3, max_llm_turns=8, concurrency=1,
        )  # fmt: skip
    assert rows[0]["status"] == "done", rows[0]["reason"]
    neuron = history(folder, 9)
    blue = neuron["entries"][0]
    assert (blue["concept"], blue["source"], blue["iteration"]) == ("blue", "agent", 1)
    assert len(blue["image_ids"]) == 2
    tool_texts = [m["content"] for m in neuron["messages"] if m["role"] == "tool"]
    assert tool_texts[0].startswith("generated 2 images of 'blue'")
    assert tool_texts[1].startswith(f"blue: {blue['score']:.4f}\nper-image activations: ")
    assert tool_texts[2] == f"blue: {blue['score']:.4f}"
    assert "tool_errors" not in neuron["counters"]


@pytest.mark.parametrize("unit", [u.unit for u in planted_ground_truth() if u.kind == "single"][:6])
def test_offline_vocab_finds_single_attribute_units(toy_world_server, explain, tmp_path, unit):
    from analysis.groundtruth import attribute_match

    truth = {u.unit: u for u in planted_ground_truth()}[unit]
    rows, _ = explain(toy_world_server, tmp_path / "run", [unit], iterations=23)
    assert rows[0]["status"] == "done"
    assert attribute_match(rows[0]["label"], truth), (rows[0]["label"], truth.concept)


def test_rate_limits_and_server_errors_are_retried_and_counted(toy_world_server, explain, tmp_path):
    script = ScriptedReplies([Reply.rate_limited(0.05), Reply.server_error(503)])
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [5], llm=OPENAI, llm_base_url=llm.url,
            iterations=1, concurrency=1,
        )  # fmt: skip
        assert llm.stats.count("rate_limit") == 1 and llm.stats.count("server_error") == 1
    assert rows[0]["status"] == "done"
    counters = history(folder, 5)["counters"]
    assert counters["rate_limited"] == 1 and counters["server_errors"] == 1
    assert rows[0]["faults"] >= 2


def test_a_run_reports_the_confirmed_inhibitor_of_a_planted_unit(
    toy_world_server, explain, tmp_path
):
    """The inhibited units fire on anything except one colour: no label stands out, and the
    colour that silences each is found among the search's lowest concepts and confirmed."""
    truth = {unit.unit: unit for unit in inhibited_ground_truth()}
    rows, folder = explain(toy_world_server, tmp_path / "run", sorted(truth), layer="inhibited")
    for row in rows:
        assert row["status"] == "done"
        assert row["verdict"] != "selective"  # nothing excites a unit that fires on all else
        assert parse_attributes(row["inhibitor"]) == {truth[row["unit"]].inhibitor}
        assert row["inhibitor_verdict"] == "selective" and row["inhibitor_score"] < 0.15
        neuron = history(folder, row["unit"], layer="inhibited")
        confirmation = neuron["confirmation"]
        assert confirmation["inhibitor"] == row["inhibitor"]
        checked = [*confirmation["candidates"], *confirmation["inhibitor_candidates"]]
        assert {c["concept"] for c in checked} >= {row["inhibitor"], row["label"]}
