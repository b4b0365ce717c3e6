"""The report's Jinja2 templates (``report/templates``), rendered with autoescaping.

Every value a template prints is HTML-escaped, labels and LLM text included; markup lives in
the templates alone.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from report.thumbs import thumbnail_path


def format_number(value: float | None, digits: int = 3) -> str:
    """A score or activation for display: ``0.245``, ``1.2e+04``, ``∞``; an en dash for none."""
    if value is not None and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value is None or not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) >= 10_000 or abs(value) < 10**-(digits)):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def format_count(value: int) -> str:
    """A count with thousands separators: ``12,345``."""
    return f"{int(value):,}"


@functools.cache
def template_environment() -> Environment:
    """The templates' environment (loaded once): autoescaping on, undefined names are errors."""
    environment = Environment(
        loader=PackageLoader("report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        number=format_number, thousands=format_count, thumbnail=thumbnail_path
    )
    return environment


def render(template: str, **context: Any) -> str:
    """Render one template of ``report/templates`` with ``context``."""
    return template_environment().get_template(template).render(**context)


def templates_fingerprint() -> str:
    """Changes whenever a template changes (so a rebuild rewrites the pages it draws)."""
    environment = template_environment()
    loader = environment.loader
    assert loader is not None  # template_environment() always has one
    digest = hashlib.sha256()
    for name in loader.list_templates():
        source, _, _ = loader.get_source(environment, name)
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:16]
