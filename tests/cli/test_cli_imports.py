"""The CLI answers at once: importing it, its help screens and the planted truth load none of
the heavy libraries (each command imports what it runs, when it runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "sklearn",
    "scipy",
    "numpy",
    "langchain_core",
    "langgraph",
    "uvicorn",
    "fastapi",
    "diffusers",
    "transformers",
    "tqdm",
)
LOADED = f"""
import sys
try:
    from cli.app import app
    app(sys.argv[1:], prog_name="line")
except SystemExit:
    pass
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["run", "--help"], ["serve", "--help"], ["eval", "--help"],
     ["eval", "simulate", "--help"], ["toyworld", "truth"]],
    ids=" ".join,
)  # fmt: skip
def test_a_command_loads_no_heavy_library_it_does_not_run(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADED, *args], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "[]"
