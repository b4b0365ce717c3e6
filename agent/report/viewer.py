"""The live viewer: a run's report served on 127.0.0.1, rebuilt while the run writes results.

The viewer builds the same static report as ``line report`` (into ``<run>/report``) and serves
that folder. A watcher thread looks at the run folder every second; when a history, the
results table, the CoSy table or the config changes, it rebuilds (only changed pages) and
bumps a version number. Pages served by the viewer carry the version they were built at and
poll ``/_live``; when the version moves on they reload, so a user watches neurons finish.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.report.build import BuildResult, ReportBuilder
from agent.report.data import ReportError

log = logging.getLogger("line.report")

HOST = "127.0.0.1"
"""The viewer binds the loopback address only."""


def run_signature(run_dir: Path) -> tuple:
    """Changes whenever the run writes a file the report reads."""
    parts: list[Any] = []
    for name in ("config.json", "results.csv", "cosy.csv"):
        path = run_dir / name
        try:
            stat = path.stat()
            parts.append((name, stat.st_mtime_ns, stat.st_size))
        except OSError:
            parts.append((name, None))
    neurons = run_dir / "neurons"
    try:
        with os.scandir(neurons) as listing:
            for entry in sorted(listing, key=lambda e: e.name):
                if entry.name.endswith(".json"):
                    stat = entry.stat()
                    parts.append((entry.name, stat.st_mtime_ns, stat.st_size))
    except OSError:
        pass
    return tuple(parts)


def writable_report_dir(run_dir: Path) -> Path:
    """``<run>/report``, or a temporary folder when the run folder is read-only."""
    target = run_dir / "report"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, suffix=".probe", delete=True)
        probe.close()
        return target
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="line-view-"))
        log.warning("%s is not writable; the viewer builds its pages in %s", target, folder)
        return folder


class ReportHandler(SimpleHTTPRequestHandler):
    """Serves the report folder; marks HTML pages live and answers ``/_live``."""

    def __init__(self, *args: Any, viewer: ReportViewer, **kwargs: Any) -> None:
        self.viewer = viewer
        super().__init__(*args, directory=str(viewer.out), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("viewer: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        """``/_live`` (JSON), HTML pages marked with the current version, other files as is."""
        path = unquote(urlsplit(self.path).path)
        if path == "/_live":
            body = json.dumps(self.viewer.status()).encode()
            self._send(HTTPStatus.OK, body, "application/json")
            return
        if path.endswith("/"):
            path += "index.html"
        if path.endswith(".html"):
            file = Path(self.translate_path(path))
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                self.send_error(HTTPStatus.NOT_FOUND, "no such page (yet)")
                return
            version = self.viewer.status()["version"]
            text = text.replace('data-live="0"', f'data-live="{version}"', 1)
            self._send(HTTPStatus.OK, text.encode("utf-8"), "text/html; charset=utf-8")
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self.do_GET()


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
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The index page's address."""
        port = self._server.server_address[1] if self._server else self.port
        return f"http://{HOST}:{port}/"

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
        handler = partial(ReportHandler, viewer=self)
        try:
            self._server = ThreadingHTTPServer((HOST, self.port), handler)
        except OSError as error:
            raise ReportError(
                f"cannot serve on {HOST}:{self.port} ({error}); pass another --port"
            ) from error
        self._server.daemon_threads = True
        serve = threading.Thread(target=self._server.serve_forever, name="line-view", daemon=True)
        watch = threading.Thread(target=self._watch, name="line-view-watch", daemon=True)
        self._threads = [serve, watch]
        if run_signature(self.run_dir) != signature:
            self.rebuild()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and watching."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
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
