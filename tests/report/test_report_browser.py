"""The report in a real browser: headless Chromium opens it from file:// and from the viewer."""

from __future__ import annotations

import json
import shutil
import time

from chromium_cdp import Chromium
from report_fixtures import copy_run, interrupt, large_run

from analysis.selectivity import shown_label
from report import build_report, start_viewer

VISIBLE_ROWS = "Array.from(document.querySelectorAll('#neurons tbody tr')).filter(r => !r.hidden)"
SCORES = f"{VISIBLE_ROWS}.map(r => r.cells[3].dataset.v).filter(v => v !== '').map(Number)"


def labels_of(run) -> dict[int, str]:
    """Each finished unit's label as the index shows it (from its history and its verdict)."""
    out = {}
    for unit in run.units:
        path = run.folder / "neurons" / f"planted__{unit}.json"
        if path.is_file():
            result = json.loads(path.read_text())["result"]
            out[unit] = shown_label(result["label"], result["selective"])
    return out


def test_report_in_chromium(toy_run, tmp_path, chromium, screenshots):
    run = copy_run(toy_run, tmp_path / "run")
    index = build_report(run.folder, store=run.store)
    labels = labels_of(run)
    with Chromium(chromium) as browser:
        browser.open(index.as_uri())
        # the index lists every neuron with its label
        assert browser.evaluate(f"{VISIBLE_ROWS}.length") == len(run.units)
        shown = browser.evaluate(f"{VISIBLE_ROWS}.map(r => r.cells[2].innerText.trim())")
        assert sorted(shown) == sorted(labels.values())
        assert browser.evaluate("document.getElementById('shown').textContent") == "4 neurons"
        assert browser.evaluate("document.querySelector('.provenance').innerText").count(
            "planted:shapes"
        )
        # sorting: by score, high first; again, low first
        browser.click('th[data-key="score"] button')
        scores = browser.evaluate(SCORES)
        assert scores == sorted(scores, reverse=True) and len(scores) == len(run.units)
        assert browser.evaluate(
            "document.querySelector('th[data-key=\"score\"]').getAttribute('aria-sort')"
        ) == ("descending")
        browser.click('th[data-key="score"] button')
        assert browser.evaluate(SCORES) == sorted(scores)
        browser.click('th[data-key="label"] button')
        names = browser.evaluate(f"{VISIBLE_ROWS}.map(r => r.dataset.label)")
        assert names == sorted(names)
        # filtering by label text
        first = sorted(labels.values())[0]
        browser.type_text("#filter", first)
        assert browser.evaluate(f"{VISIBLE_ROWS}.map(r => r.dataset.label)") == [
            label for label in sorted(labels.values()) if first in label
        ]
        assert "#" in browser.evaluate("location.hash")  # state survives a reload
        browser.evaluate("document.getElementById('filter').value = ''")
        browser.evaluate("document.getElementById('filter').dispatchEvent(new Event('input'))")
        browser.click('th[data-key="score"] button')
        browser.wait_for(
            "Array.from(document.querySelectorAll('.row-thumb')).every(i => i.complete && "
            "i.naturalWidth > 0)"
        )
        path = browser.screenshot(screenshots / "index.png")
        print(f"screenshot: {path}")
        assert browser.console_errors() == []

        # a neuron page: images, plot, groups, timeline
        browser.follow("#neurons tbody tr:not([hidden]) td:nth-child(3) a")
        browser.wait_for(
            "document.documentElement.dataset.page === 'neuron' &&"
            " document.readyState === 'complete'"
        )
        unit = browser.evaluate("location.pathname.split('__').pop().split('.')[0]")
        history = json.loads((run.folder / "neurons" / f"planted__{unit}.json").read_text())
        assert (
            browser.evaluate("document.querySelector('h1.label').innerText")
            == (history["result"]["label"])
        )
        loaded = browser.wait_for(
            "(() => { const imgs = Array.from(document.querySelectorAll('#top-images img'));"
            " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
            " && imgs.length; })()"
        )
        assert loaded == min(12, sum(len(e["image_ids"]) for e in history["entries"]))
        scored = [e for e in history["entries"] if e["score"] is not None]
        assert browser.evaluate(
            "document.querySelectorAll('svg.score-plot circle.dot').length"
        ) == (len(scored))
        assert browser.evaluate("document.querySelector('svg.score-plot path.best') !== null")
        assert browser.evaluate("document.querySelector('svg.score-plot').getBBox().width") > 100
        assert browser.evaluate("document.querySelectorAll('#timeline li.step').length") == len(
            history["entries"]
        )
        assert browser.evaluate("document.querySelectorAll('#timeline img').length") == sum(
            len(e["image_ids"]) for e in history["entries"]
        )
        assert "Concept groups" in browser.evaluate("document.getElementById('groups').innerText")
        path = browser.screenshot(screenshots / "neuron.png")
        print(f"screenshot: {path}")
        browser.evaluate("window.scrollTo(0, document.getElementById('timeline').offsetTop)")
        browser.wait_for(
            "(() => { const imgs = Array.from(document.querySelectorAll('#timeline img'))"
            ".filter(i => { const r = i.getBoundingClientRect(); return r.top >= 0 &&"
            " r.bottom <= innerHeight; }); return imgs.length > 0 &&"
            " imgs.every(i => i.complete && i.naturalWidth > 0); })()"
        )
        browser.screenshot(screenshots / "neuron-timeline.png")
        assert browser.console_errors() == []


def test_interrupted_report_in_chromium(toy_run, tmp_path, chromium, screenshots):
    run = copy_run(toy_run, tmp_path / "run")
    interrupt(run, unfinished=[3, 26], failed=[2])
    index = build_report(run.folder, store=run.store)
    with Chromium(chromium) as browser:
        browser.open(index.as_uri())
        statuses = browser.evaluate(f"{VISIBLE_ROWS}.map(r => r.dataset.status)")
        assert sorted(statuses) == ["done", "failed", "unfinished", "unfinished"]
        browser.evaluate(
            "(() => { const s = document.getElementById('status-filter'); s.value = 'unfinished';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert browser.evaluate(f"{VISIBLE_ROWS}.length") == 2
        browser.evaluate(
            "(() => { const s = document.getElementById('status-filter'); s.value = '';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        path = browser.screenshot(screenshots / "interrupted.png")
        print(f"screenshot: {path}")
        browser.open((run.folder / "report" / "neurons" / "planted__2.html").as_uri())
        assert "failed" in browser.evaluate("document.querySelector('.note.error').innerText")
        browser.screenshot(screenshots / "failed-neuron.png")
        assert browser.console_errors() == []


def test_viewer_in_chromium_reloads_as_neurons_finish(toy_run, tmp_path, chromium, screenshots):
    run = copy_run(toy_run, tmp_path / "run")
    finished = run.folder / "neurons" / "planted__26.json"
    kept = tmp_path / "planted__26.json"
    shutil.copy(finished, kept)
    interrupt(run, unfinished=[26], failed=[])
    viewer = start_viewer(run.folder, port=0, store=run.store)
    try:
        with Chromium(chromium) as browser:
            browser.open(viewer.url)
            badge = browser.wait_for(
                "(() => { const b = document.getElementById('live');"
                " return !b.hidden && b.textContent; })()"
            )
            assert badge == "live · 3 of 4 neurons finished"
            assert browser.evaluate(
                "document.querySelectorAll('tr[data-status=\"unfinished\"]').length"
            ) == (1)
            browser.click('th[data-key="score"] button')
            shutil.copy(kept, finished)  # the run finishes its last neuron
            browser.wait_for(
                "document.querySelectorAll('tr[data-status=\"unfinished\"]').length === 0 &&"
                " document.getElementById('live').textContent.startsWith('live · 4 of 4')",
                timeout_s=30,
            )
            # the reload kept the sort order
            assert browser.evaluate(
                "document.querySelector('th[data-key=\"score\"]').getAttribute('aria-sort')"
            ) == ("descending")
            time.sleep(0.3)
            path = browser.screenshot(screenshots / "viewer.png")
            print(f"screenshot: {path}")
            browser.open(viewer.url + "neurons/planted__26.html")
            browser.wait_for("!document.getElementById('live').hidden")
            assert browser.console_errors() == []
    finally:
        viewer.stop()


def test_large_report_pages_in_chromium(toy_run, tmp_path, chromium, screenshots):
    """500 neurons open fast: 50 rows a page, thumbnails load lazily."""
    run = large_run(toy_run, tmp_path / "run", 500)
    index = build_report(run.folder, store=run.store)
    with Chromium(chromium) as browser:
        start = time.monotonic()
        browser.open(index.as_uri())
        assert time.monotonic() - start < 10
        assert browser.evaluate(f"{VISIBLE_ROWS}.length") == 50
        assert browser.evaluate("document.getElementById('page-info').textContent") == (
            "page 1 of 10"
        )
        browser.click("#next")
        assert browser.evaluate(f"{VISIBLE_ROWS}[0].cells[0].dataset.v") == "50"
        browser.click('th[data-key="unit"] button')
        browser.click('th[data-key="unit"] button')
        assert browser.evaluate(f"{VISIBLE_ROWS}[0].cells[0].dataset.v") == "499"
        browser.screenshot(screenshots / "index-500.png")
        assert browser.console_errors() == []
