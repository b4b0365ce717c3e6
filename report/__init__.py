"""Reports of runs: a static HTML folder per run (``build_report``) and a live viewer
(``serve_viewer`` / ``start_viewer``) that serves the same pages while the run goes on."""

from report.build import BuildResult, ReportBuilder, build_report
from report.data import ReportError
from report.viewer import ReportViewer, serve_viewer, start_viewer

__all__ = [
    "BuildResult",
    "ReportBuilder",
    "ReportError",
    "ReportViewer",
    "build_report",
    "serve_viewer",
    "start_viewer",
]
