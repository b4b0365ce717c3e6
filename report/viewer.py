"""The live viewer: a run's report served on 127.0.0.1, rebuilt while the run writes results.

The viewer builds the same static report as ``line report`` (into the run's report folder) and
serves that folder. A watcher thread looks at the run folder every second; when a history, the
results table, the CoSy table or the config changes, it rebuilds (only changed pages) and
bumps a version number. Pages served by the viewer carry the version they were built at and
poll ``/_live``; when the version moves on they reload, so a user watches neurons finish.

It runs on the project's HTTP stack, as the inference server does: a FastAPI app (``/_live``,
and the report folder through Starlette's ``StaticFiles``, which keeps requests inside the
folder) served by uvicorn on a background thread, from a socket the viewer binds itself so
that a port in use is reported at once and ``port=0`` gets a free port without a race.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from agent.run_folder import RunFolder
from report.build import BuildResult, ReportBuilder
from report.data import ReportError

log = logging.getLogger("line.report")

HOST = "127.0.0.1"
"""The viewer binds the loopback address only."""
STATIC_MARK = 'data-live="0"'
"""How a page of the static report (``templates/layout.html.jinja``) says it is not live."""
NO_STORE = {"Cache-Control": "no-store"}
STARTUP_TIMEOUT_S = 30.0


def run_signature(run_dir: str | Path) -> tuple:
    """Changes whenever the run writes a file the report reads."""
    folder = RunFolder(run_dir)
    parts: list[Any] = []
    for path in (folder.config, folder.results_csv, folder.cosy_csv(), *folder.record_paths()):
        try:
            stat = path.stat()
            parts.append((path.name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            parts.append((path.name, None))
    return tuple(parts)


def writable_report_dir(run_dir: str | Path) -> Path:
    """The run's report folder, or a temporary folder when the run folder is read-only."""
    target = RunFolder(run_dir).report
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, suffix=".probe", delete=True)
        probe.close()
        return target
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="line-view-"))
        log.warning("%s is not writable; the viewer builds its pages in %s", target, folder)
        return folder


class LiveReportFiles(StaticFiles):
    """The report folder; HTML pages are marked with the version they are served at."""

    def __init__(self, viewer: ReportViewer) -> None:
        super().__init__(directory=viewer.out, html=True)
        self.viewer = viewer

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """An HTML page marked live (never cached); any other file as it is."""
        if not os.fspath(full_path).endswith(".html"):
            return super().file_response(full_path, stat_result, scope, status_code)
        try:
            text = Path(full_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise HTTPException(404, "no such page (yet)") from error
        version = self.viewer.status()["version"]
        text = text.replace(STATIC_MARK, f'data-live="{version}"', 1)
        return HTMLResponse(text, status_code=status_code, headers=NO_STORE)


def viewer_app(viewer: ReportViewer) -> FastAPI:
    """The viewer's HTTP app: ``/_live`` (JSON) and the report folder."""
    app = FastAPI(title="LINE report viewer", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/_live")
    def live() -> JSONResponse:
        """The version of the pages and how many neurons have finished."""
        return JSONResponse(viewer.status(), headers=NO_STORE)

    app.mount("/", LiveReportFiles(viewer), name="report")
    return app


class ReportViewer:
    """A run's report on ``http://127.0.0.1:PORT/``, rebuilt as the run goes on.

    ``start()`` builds once (raising ``ReportError`` for a folder that is not a run) and
    serves from threads; ``stop()`` ends both threads. ``port=0`` picks a free port.
    """

    def __init__(
        self,
        run_dir: str | Path,
        port: int = 8500,
        store: str | Path | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.port = port
        self.interval_s = interval_s
        self.out = writable_report_dir(self.run_dir)
        self.builder = ReportBuilder(self.run_dir, store, self.out)
        self._lock = threading.Lock()
        self._version = 0
        self._last: BuildResult | None = None
        self._stop = threading.Event()
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The index page's address."""
        return f"http://{HOST}:{self.port}/"

    def status(self) -> dict[str, Any]:
        """The version of the pages and how many neurons have finished."""
        with self._lock:
            last = self._last
            return {
                "version": self._version,
                "finished": last.finished if last else 0,
                "total": last.neurons if last else 0,
            }

    def rebuild(self) -> None:
        """Build the report now and move the version on."""
        result = self.builder.build()
        with self._lock:
            self._version += 1
            self._last = result

    def _watch(self) -> None:
        signature = run_signature(self.run_dir)
        while not self._stop.wait(self.interval_s):
            current = run_signature(self.run_dir)
            if current == signature:
                continue
            try:
                self.rebuild()
                signature = current
            except Exception as error:  # keep serving the last good pages; try again later
                log.warning("viewer: rebuilding the report failed: %s", error)

    def start(self) -> ReportViewer:
        """Build, then serve and watch on background threads; returns self."""
        signature = run_signature(self.run_dir)
        self.rebuild()
        try:
            listener = socket.create_server((HOST, self.port))
        except OSError as error:
            raise ReportError(
                f"cannot serve on {HOST}:{self.port} ({error}); pass another --port"
            ) from error
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(
            viewer_app(self), log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = server = uvicorn.Server(config)
        serve = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="line-view", daemon=True
        )
        watch = threading.Thread(target=self._watch, name="line-view-watch", daemon=True)
        self._threads = [serve, watch]
        if run_signature(self.run_dir) != signature:
            self.rebuild()
        serve.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not serve.is_alive() or time.monotonic() > deadline:
                self.stop()
                listener.close()
                raise ReportError(f"the viewer could not serve on {HOST}:{self.port}")
            time.sleep(0.02)
        watch.start()
        return self

    def stop(self) -> None:
        """Stop serving and watching."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def wait(self) -> None:
        """Block until Ctrl-C (or ``stop()`` from another thread)."""
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> ReportViewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_viewer(
    run_dir: str | Path, port: int = 8500, store: str | Path | None = None
) -> ReportViewer:
    """Start the viewer on background threads (for tests and embedding); ``stop()`` ends it."""
    return ReportViewer(run_dir, port, store).start()


def serve_viewer(
    run_dir: str | Path,
    port: int = 8500,
    store: str | Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the run's live report until Ctrl-C; ``on_ready(url)`` is called once it serves."""
    viewer = start_viewer(run_dir, port, store)
    if on_ready is not None:
        on_ready(viewer.url)
    viewer.wait()
