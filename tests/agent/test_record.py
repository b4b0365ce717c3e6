"""The run record: histories written before it are upgraded, other files refused, and
``results.csv`` is derived from the records in one place."""

from __future__ import annotations

import csv
import json
import math

import pytest

from agent.record import (
    GROUP_COLUMNS,
    RECORD_VERSION,
    RESULT_COLUMNS,
    TRUTH_COLUMNS,
    NeuronRecord,
    result_row,
)
from agent.run_folder import RecordError, RunFolder, RunSettings

# A neuron history as `line run` wrote it before the typed record (main d54be5b,
# agent/runner.py `history_of` + `failed_calls`/`outage_waits`): no record_version, no groups,
# a NaN score, counters only for what happened.
OLD_HISTORY = """{
 "neuron": {"seed_concepts": ["red"], "target": "planted:shapes", "layer": "planted",
  "unit": 3, "iterations": 2, "max_concepts": 10, "max_images": 5, "max_llm_turns": 40},
 "status": "done",
 "reason": "",
 "result": {"inhibitor": "", "inhibitor_score": null, "inhibitor_verdict": "",
  "label": "red star", "score": 0.93, "score_low": 0.88, "score_high": 0.97,
  "mean_activation": 1.4, "search_score": 1.2, "label_source": "search",
  "choice": "best AUC", "candidates": 2, "summary_concept": "red star",
  "summary_text": "red stars", "verdict": "selective", "selective": true},
 "summary": {"concept": "red star", "text": "red stars"},
 "confirmation": {"label": "red star", "reason": "best AUC", "best": "red star",
  "margin": 0.02, "images_per_candidate": 8, "control_images": 50, "inhibitor": null,
  "candidates": [{"concept": "red star", "source": "search", "auc": 0.93, "auc_low": 0.88,
   "auc_high": 0.97, "mean": 1.4, "search_score": 1.2, "search_rank": 0,
   "activations": [1.4], "image_ids": ["c1"], "seeds": [7], "prompts": ["p"], "kept": true,
   "note": "chosen"}],
  "inhibitor_candidates": []},
 "counters": {"llm_calls": 3, "input_tokens": 100, "output_tokens": 20, "images": 15,
  "timeouts": 1, "reasks": 2, "outages": 1, "outage_ms": 2500},
 "entries": [
  {"concept": "red", "score": 1.0, "activations": [1.0], "image_ids": ["a"],
   "prompts": ["a red"], "seeds": [1], "iteration": 0, "source": "seed"},
  {"concept": "blue", "score": NaN, "activations": [], "image_ids": [], "prompts": [],
   "seeds": [], "iteration": 1, "source": "proposal"},
  {"concept": "red star", "score": 1.2, "activations": [1.2], "image_ids": ["b"],
   "prompts": ["a red star"], "seeds": [2], "iteration": 2, "source": "summary"}],
 "llm_log": [{"request": [], "response": "red star"}],
 "messages": [{"role": "human", "content": "go"}],
 "failed_calls": {"timeouts": 1},
 "outage_waits": {"outages": 1, "outage_ms": 2500}
}"""


def run_folder(tmp_path, units=(3,)) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.create(RunSettings(target="planted:shapes", layer="planted", units=list(units), llm="x"))
    return folder


def test_a_history_written_before_the_record_is_read_and_upgraded(tmp_path):
    folder = run_folder(tmp_path)
    folder.record_path("planted", 3).write_text(OLD_HISTORY)
    record = folder.read_record("planted", 3)
    assert record is not None and record.record_version == RECORD_VERSION
    assert (record.layer, record.unit, record.status, record.label) == (
        "planted",
        3,
        "done",
        "red star",
    )
    assert record.result.verdict == "selective" and record.result.score_low == 0.88
    assert record.confirmation.candidates[0].auc == 0.93 and record.confirmation.inhibitor is None
    assert [entry.concept for entry in record.entries] == ["red", "blue", "red star"]
    assert math.isnan(record.entries[1].score)
    assert record.failed_calls == {"timeouts": 1} and record.outage_waits["outage_ms"] == 2500
    assert record.groups is None and record.truth is None  # not computed then
    # written back, it keeps every value (NaN included) and is read the same
    folder.write_record(record)
    assert json.loads(folder.record_path("planted", 3).read_text())["record_version"] == 2
    assert folder.read_record("planted", 3).model_dump_json() == record.model_dump_json()
    # its results row has the documented columns with the old row's values
    rows = folder.write_results(folder.records())
    with folder.results_csv.open() as stream:
        (written,) = list(csv.DictReader(stream))
    assert list(written) == RESULT_COLUMNS
    assert rows[0]["tokens"] == 120 and rows[0]["faults"] == 3 and rows[0]["outage_s"] == 2.5
    assert written["label"] == "red star" and written["inhibitor_score"] == ""


def test_an_old_history_without_a_status_is_done_with_a_result_else_failed(tmp_path):
    folder = run_folder(tmp_path, units=(3, 4))
    old = json.loads(OLD_HISTORY.replace("NaN", "null").replace('"score": null', '"score": 0'))
    del old["status"]
    folder.record_path("planted", 3).write_text(json.dumps(old))
    folder.record_path("planted", 4).write_text(json.dumps({"neuron": {"unit": 4}, "result": None}))
    assert [record.status for record in folder.records()] == ["done", "failed"]


@pytest.mark.parametrize(
    "text, why",
    [
        ("[1, 2]", "a neuron record is a JSON object"),
        ('{"status": "done", "entries": [{"concept": "red"}]}', "entries.0.score: Field required"),
        ("not json", "Invalid JSON"),
    ],
)
def test_a_file_that_is_no_record_is_refused_with_what_to_do(tmp_path, text, why):
    folder = run_folder(tmp_path)
    folder.record_path("planted", 3).write_text(text)
    with pytest.raises(RecordError) as caught:
        folder.read_record("planted", 3)
    message = str(caught.value)
    assert why in message and f"line run --resume {folder.path}" in message


def test_results_csv_adds_group_and_truth_columns_only_where_records_have_them(tmp_path):
    folder = run_folder(tmp_path, units=(3, 4))
    folder.record_path("planted", 3).write_text(OLD_HISTORY)
    records = folder.records()  # unit 4 has no record yet: unfinished
    assert [record.status for record in records] == ["done", "unfinished"]
    assert list(folder.write_results(records)[1]) == RESULT_COLUMNS
    grouped = NeuronRecord.model_validate(
        {
            **records[0].model_dump(),
            "groups": [
                {"concepts": ["red star", "red"], "scores": [1.2, 1.0], "cores": ["red"]},
                {"concepts": ["blue"], "scores": [0.9]},
            ],
            "truth": {"concept": "red", "match": True, "verdict_right": True},
        }
    )
    rows = folder.write_results([grouped, records[1]])
    assert list(rows[0]) == RESULT_COLUMNS + GROUP_COLUMNS + TRUTH_COLUMNS
    assert rows[0]["group_concepts"] == "red star (1.20) | blue (0.90)"  # the stored order
    assert (rows[0]["groups"], rows[1]["groups"], rows[1]["truth"]) == (2, "", "")


def test_results_parquet_holds_the_csv_rows_with_missing_values_as_nulls(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    folder = run_folder(tmp_path, units=(3, 4))
    folder.record_path("planted", 3).write_text(OLD_HISTORY)
    rows = folder.write_results(folder.records())  # unit 4 unfinished: blank label and score
    table = pq.read_table(folder.results_parquet)
    assert table.column_names == RESULT_COLUMNS
    done, unfinished = table.to_pylist()
    assert (done["label"], done["score"], done["unit"]) == ("red star", 0.93, 3)
    assert (unfinished["status"], unfinished["label"], unfinished["score"]) == (
        "unfinished",
        None,
        None,
    )
    with folder.results_csv.open() as stream:
        assert [row["unit"] for row in csv.DictReader(stream)] == [str(r["unit"]) for r in rows]


def test_the_runner_keeps_only_what_the_results_table_needs(tmp_path):
    """The runner holds each finished neuron as ``for_results()``: the same results row,
    without the evidence that is on disk."""
    folder = run_folder(tmp_path)
    folder.record_path("planted", 3).write_text(OLD_HISTORY)
    [record] = folder.records()
    kept = record.for_results()
    assert result_row(kept) == result_row(record)
    assert (kept.entries, kept.llm_log, kept.messages, kept.confirmation) == ([], [], [], None)
    assert len(record.entries) == 3  # the record itself is untouched
