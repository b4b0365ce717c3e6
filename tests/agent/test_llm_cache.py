"""The LLM response cache of a run (``--llm-cache DIR``): a repeated run asks the LLM nothing,
also when its conversations hold earlier answers (re-asks, the agentic strategy)."""

from __future__ import annotations

import csv

import pytest

from agent.launch import execute_run
from agent.run_folder import RunFolder, RunSettings
from testing.scripted_llm import ProposerPolicy, Reply, ScriptedReplies, start_scripted_llm

OPENAI = "openai-compatible:scripted"


def run_twice(server_url, tmp_path, prompts: str, policy, **overrides) -> list[list[dict]]:
    """The same run into two folders with one LLM cache; the LLM must not be asked again."""
    tables = []
    with start_scripted_llm(policy) as llm:
        for name in ("first", "again"):
            settings = RunSettings(
                target="planted:shapes", layer="planted", units=[2, 7], llm=OPENAI,
                llm_base_url=llm.url, prompts=prompts, variant_overrides=overrides,
                concurrency=1, server=server_url, llm_cache=str(tmp_path / "llm-cache"),
            )  # fmt: skip
            # one neuron at a time: the agentic strategy's first request is the same for every
            # neuron, and the cache keeps one answer per request
            folder = RunFolder(tmp_path / name)
            execute_run(settings, folder)
            with folder.results_csv.open() as stream:
                tables.append(list(csv.DictReader(stream)))
            if name == "first":
                asked = llm.stats.requests
        assert asked > 0 and llm.stats.requests == asked  # the repeated run made no LLM call
    return tables


@pytest.mark.parametrize(
    ("prompts", "policy", "overrides"),
    [
        (
            "paper",  # two unusable answers: re-asks carry the earlier answer in the request
            ScriptedReplies([Reply.empty(), Reply.malformed_arguments("propose_concept")]),
            {"iterations": 2},
        ),
        ("agentic", ProposerPolicy(), {"max_concepts": 3, "max_llm_turns": 8}),
    ],
)
def test_a_repeated_run_costs_no_llm_call(toy_world_server, tmp_path, prompts, policy, overrides):
    first, again = run_twice(toy_world_server, tmp_path, prompts, policy, **overrides)
    assert [row["status"] for row in first + again] == ["done"] * 4
    assert [row["label"] for row in again] == [row["label"] for row in first]
    assert all(int(row["llm_calls"]) > 0 and int(row["tokens"]) > 0 for row in first)
    assert [(row["llm_calls"], row["tokens"]) for row in again] == [("0", "0")] * 2
    assert [row["reasks"] for row in again] == [row["reasks"] for row in first]
