"""The live viewer: serves the report on 127.0.0.1 and rebuilds it as neurons finish."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from report_fixtures import copy_run, interrupt

from report import ReportError, start_viewer
from report.viewer import run_signature


def wait_until(condition, timeout_s: float = 20.0):
    """Poll until ``condition()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_viewer_serves_and_follows_a_running_run(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    finished = run.folder / "neurons" / "planted__3.json"
    kept = tmp_path / "planted__3.json"
    shutil.copy(finished, kept)
    interrupt(run, unfinished=[3], failed=[])
    viewer = start_viewer(run.folder, port=0, store=run.store)
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        page = httpx.get(viewer.url, timeout=10)
        assert page.status_code == 200
        assert 'data-live="1"' in page.text  # served pages are marked live
        assert page.text.count('data-status="unfinished"') == 1
        status = httpx.get(viewer.url + "_live", timeout=10).json()
        assert status == {"version": 1, "finished": 3, "total": 4}
        neuron = httpx.get(viewer.url + "neurons/planted__0.html", timeout=10)
        assert neuron.status_code == 200 and "score-plot" in neuron.text
        thumb = viewer.url + neuron.text.split('src="../', 2)[2].split('"')[0]
        image = httpx.get(thumb, timeout=10)
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        assert httpx.get(viewer.url + "../config.json", timeout=10).status_code == 404

        shutil.copy(kept, finished)  # the run finishes another neuron
        status = wait_until(
            lambda: (s := httpx.get(viewer.url + "_live", timeout=10).json())["version"] > 1 and s
        )
        assert status["finished"] == 4
        page = httpx.get(viewer.url + "index.html", timeout=10)
        assert 'data-status="unfinished"' not in page.text
        assert f'data-live="{status["version"]}"' in page.text
    finally:
        viewer.stop()
    with pytest.raises(httpx.HTTPError):
        httpx.get(viewer.url, timeout=2)


def test_viewer_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ReportError, match="not a LINE run folder"):
        start_viewer(tmp_path, port=0)


def test_viewer_port_in_use(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    first = start_viewer(run.folder, port=0, store=run.store)
    try:
        port = int(first.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(ReportError, match="another --port"):
            start_viewer(run.folder, port=port, store=run.store)
    finally:
        first.stop()


def test_run_signature_sees_new_histories(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "run")
    before = run_signature(run.folder)
    (run.folder / "neurons" / "planted__0.json").unlink()
    assert run_signature(run.folder) != before
