"""Tables of evaluation results: one cell format for CSV, Markdown and the terminal.

Every ``line eval`` command writes its rows with :func:`write_rows`, its summary with
:func:`markdown_table` and prints :func:`text_table`; columns are ``(key, header)`` pairs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Columns = Sequence[tuple[str, str]]
"""``(row key, header)`` pairs, in display order."""


def format_cell(value: Any, digits: int = 4) -> str:
    """A value as table text: floats to ``digits`` significant figures, missing as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_cell(v, digits) for v in value) + "]"
    return str(value)


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: ``None`` and NaN blank, floats rounded to 6 places, tuples
    joined with ``;``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else ("" if math.isnan(value) else value)
    if isinstance(value, tuple):
        return ";".join(str(csv_cell(v)) for v in value)
    return value


def write_rows(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV: the given columns (extra keys dropped), else every key in first-seen order."""
    names = (
        list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: csv_cell(row.get(key)) for key in names} for row in rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV table that :func:`write_rows` (or another tool) wrote; empty when the
    file does not exist or cannot be read (an evaluation that did not run)."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as stream:
            return list(csv.DictReader(stream))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def present_columns(rows: Sequence[dict], columns: Columns) -> list[tuple[str, str]]:
    """The columns that at least one row has."""
    return [(key, header) for key, header in columns if any(key in row for row in rows)]


def markdown_table(rows: Sequence[dict], columns: Columns, digits: int = 4) -> str:
    """Rows as a Markdown table (one line per row, ``|`` in cells escaped)."""

    def cell(value: Any) -> str:
        return format_cell(value, digits).replace("|", "\\|")

    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[dict], columns: Columns, digits: int = 3) -> str:
    """Rows as aligned plain text for the terminal, with a rule under the header."""
    table = [[header for _, header in columns]]
    table += [[format_cell(row.get(key), digits) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
