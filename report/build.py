"""Building the static report folder of a run: ``<run>/report/index.html`` and friends.

The folder holds ``index.html``, ``neurons/<layer>__<unit>.html``, ``thumbs/`` (JPEG
thumbnails, written once) and ``assets/`` (one stylesheet, one small script). It opens from
``file://``: no server, no network, no CDN; all data is in the HTML.

Builds are incremental: a neuron page is rewritten only when its record (or what else it
shows) changed (``.build.json`` keeps each page's key), and thumbnails that exist are kept.
The live viewer rebuilds the same folder every time the run writes a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.run_folder import RunFolder
from inference.store import default_store_dir
from report.data import RunView, load_run
from report.pages import index_page, neuron_page, page_path
from report.render import templates_fingerprint
from report.thumbs import ImageSource, ThumbnailWriter

log = logging.getLogger("line.report")

BUILD_VERSION = "5"
"""Bump when what a page is drawn from changes shape, so every page of an old report is
rewritten (a change of the templates alone is noticed without it)."""
STATIC = Path(__file__).parent / "static"
CACHE_FILE = ".build.json"


@dataclass
class BuildResult:
    """What one build did."""

    index: Path
    neurons: int
    finished: int
    pages_written: int
    missing_images: int


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader (the viewer, a browser) sees all of it or the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a report is for others to read
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class ReportBuilder:
    """Builds (and rebuilds) the report folder of one run."""

    def __init__(
        self, run_dir: str | Path, store: str | Path | None = None, out: str | Path | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.out = Path(out) if out is not None else RunFolder(run_dir).report
        self.store = Path(store) if store is not None else default_store_dir()

    def _read_cache(self) -> dict[str, Any]:
        try:
            cache = json.loads((self.out / CACHE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {"pages": {}}
        if cache.get("version") != BUILD_VERSION:
            return {"pages": {}}
        return cache

    def _copy_assets(self) -> None:
        target = self.out / "assets"
        target.mkdir(parents=True, exist_ok=True)
        for source in STATIC.iterdir():
            if source.suffix not in (".css", ".js"):
                continue
            destination = target / source.name
            if not destination.is_file() or destination.read_bytes() != source.read_bytes():
                shutil.copyfile(source, destination)

    def _copy_figures(self, run: RunView) -> None:
        """Each evaluation's figure into ``evaluations/<name>.png`` (the index shows them)."""
        for evaluation in run.evaluations:
            if evaluation.figure is not None:
                target = self.out / "evaluations" / f"{evaluation.name}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(evaluation.figure, target)

    def build(self) -> BuildResult:
        """Read the run folder and write every page that changed; returns what it did."""
        run: RunView = load_run(self.run_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self._copy_assets()
        cache = self._read_cache()

        source = ImageSource(self.store, run.config.get("server"))
        wanted = {image.image_id for n in run.neurons for image in n.images()}
        wanted |= {
            picture.image_id
            for n in run.neurons
            for pair in n.ablation
            for picture in (pair.source, pair.edited, pair.control)
        }
        wanted |= {
            picture.image_id
            for n in run.neurons
            for edit in n.edits
            for pair in edit.pairs
            for picture in (pair.source, pair.edited)
        }
        available = ThumbnailWriter(self.out, source).ensure(wanted)
        missing = len(wanted - available)
        if missing:
            log.warning(
                "%d of %d images of %s are not in the store %s (nor on its server); the report "
                "shows placeholders for them: pass the run's --store",
                missing,
                len(wanted),
                self.run_dir,
                self.store,
            )

        pages = [n for n in run.neurons if n.has_page]
        templates = templates_fingerprint()
        written = 0
        page_keys: dict[str, str] = {}
        for position, neuron in enumerate(pages):
            previous = pages[position - 1] if position > 0 else None
            following = pages[position + 1] if position + 1 < len(pages) else None
            ids = sorted(i.image_id for i in neuron.images())
            ids += [p.edited.image_id for edit in neuron.edits for p in edit.pairs]
            key = _digest(
                [
                    BUILD_VERSION,
                    templates,
                    run.config,
                    run.score_kind,
                    neuron.record_signature,
                    [vars(row) for row in neuron.cosy],
                    [repr(pair) for pair in neuron.ablation],
                    neuron.truth,
                    neuron.match,
                    previous.slug if previous else None,
                    following.slug if following else None,
                    [i in available for i in ids],
                    str(self.run_dir.resolve()),
                ]
            )
            page_keys[neuron.slug] = key
            path = self.out / page_path(neuron)
            if cache["pages"].get(neuron.slug) == key and path.is_file():
                continue
            write_text_atomic(path, neuron_page(run, neuron, available, previous, following))
            written += 1
        self._copy_figures(run)
        index = self.out / "index.html"
        write_text_atomic(index, index_page(run, available, missing, str(self.store)))
        cache.update({"version": BUILD_VERSION, "pages": page_keys})
        write_text_atomic(self.out / CACHE_FILE, json.dumps(cache))
        finished = sum(n.has_page for n in run.neurons)
        return BuildResult(index, len(run.neurons), finished, written, missing)


def build_report(
    run_dir: str | Path, store: str | Path | None = None, out: str | Path | None = None
) -> Path:
    """Write the run's static HTML report (default ``<run_dir>/report``); returns index.html.

    ``store`` is the image store the run used (default ``$LINE_CACHE/store``, i.e.
    ``~/.cache/line/store``). Works on finished, running and interrupted runs alike; raises
    ``ReportError`` when ``run_dir`` is not a run folder.
    """
    return ReportBuilder(run_dir, store, out).build().index
