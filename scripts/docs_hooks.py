"""MkDocs hooks (named in mkdocs.yml): the pages the site derives from the code and the README.

- ``index.md``, the home page, is README.md: links into ``docs/`` become site links, links to
  other files of the repository become code text (they are not part of the site).
- ``cli-reference.md`` is every ``line`` command's usage and options, written by Typer's own
  Markdown generator (the one behind ``typer <module> utils docs``) from the app in cli/app.py.
  The CLI imports its commands' dependencies lazily, so this imports neither torch nor LangChain.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer
import typer.cli
import typer.main
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

# [text](target) where target is relative (no scheme, no leading / or #)
_RELATIVE_LINK = re.compile(r"\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)\s]+)\)")
# a span of inline code, or one character of anything else
_CODE_OR_CHAR = re.compile(r"(`+)(?:.+?)\1|.", re.DOTALL)


def home_page(readme: str) -> str:
    """README.md as the site's home page."""

    def relink(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if target.startswith("docs/"):
            return f"[{text}]({target.removeprefix('docs/')})"
        return text if text.startswith("`") else f"`{text}`"

    return _RELATIVE_LINK.sub(relink, readme)


def _escape_html(line: str) -> str:
    """``<`` outside inline code as ``&lt;``: option help such as ``torchvision:<arch>`` is text."""
    return "".join(
        part.group(0) if part.group(0).startswith("`") else part.group(0).replace("<", "&lt;")
        for part in _CODE_OR_CHAR.finditer(line)
    )


def cli_reference() -> str:
    """Every command's usage and options, generated from the typer app."""
    from cli.app import app

    command = typer.main.get_command(app)
    context = typer.Context(command, info_name="line")
    generated = typer.cli.get_docs_for_click(
        obj=command, ctx=context, name="line", title="CLI reference"
    )
    lines = generated.splitlines()
    intro = (
        "Generated from the `line` command itself (`line COMMAND --help` prints the same); "
        "examples and exit statuses are in [Command line](cli.md)."
    )
    fenced = False
    body = []
    for line in lines[1:]:
        if line.startswith("```"):
            fenced = not fenced
        body.append(line if fenced else _escape_html(line))
    return "\n".join([lines[0], "", intro, *body]) + "\n"


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """Add the generated pages to the site."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=home_page(readme)))
    files.append(File.generated(config, "cli-reference.md", content=cli_reference()))
    return files
