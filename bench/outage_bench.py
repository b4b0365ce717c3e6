"""What an outage costs a run: the inference server (or the LLM) is killed for N seconds in the
middle of a multi-neuron ``line run`` and started again; the run's extra wall time is divided by
the time the endpoint was unreachable.

Two runs of the same work, each against fresh processes and a fresh image store (so neither
reuses the other's images): a reference run, then a run during which the endpoint is killed
(SIGKILL) once a third of the reference run's working time has passed, kept down for
``--outage`` seconds and started again on the same port. ``downtime`` runs from the kill until
the new process answers (its start-up included); ``cost_per_downtime = (outage run wall -
reference wall) / downtime``: 1.0 means the outage cost the run what it lasted, once for all
neurons together. Also printed: the outage as the run recorded it (``outages.json``) and the
neurons' waits (``results.csv``).

``python -m bench.outage_bench [--units 28] [--outage 60] [--endpoint server|llm]``; ``make
bench`` runs the server case and writes ``bench-results/outage.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from inference.app import free_port

LINE = [sys.executable, "-m", "cli.app"]
TOY = ["--target", "planted:shapes", "--layer", "planted"]


@dataclass
class Endpoints:
    """The server and scripted LLM processes of one run, on fixed ports."""

    folder: Path
    port: int
    llm_port: int
    store: Path
    server: subprocess.Popen | None = None
    llm: subprocess.Popen | None = None

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def llm_url(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}/v1"

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            [*LINE, "serve", "--generator", "procedural:shapes", "--target", "planted:shapes",
             "--device", "cpu", "--port", str(self.port), "--store", str(self.store),
             "--log-level", "warning"],
            env={**os.environ, "LINE_CACHE": str(self.folder / "cache")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_healthy(f"{self.server_url}/healthz", self.server)

    def start_llm(self, latency_ms: float) -> None:
        self.llm = subprocess.Popen(
            [sys.executable, "-m", "testing.scripted_llm", "--port", str(self.llm_port),
             "--latency-ms", str(latency_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_healthy(f"{self.llm_url}/models", self.llm)

    def stop(self) -> None:
        for process in (self.server, self.llm):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited at start")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start")
        time.sleep(0.1)


def _start_run(endpoints: Endpoints, out: Path, units: int, iterations: int) -> subprocess.Popen:
    command = [
        *LINE, "run", *TOY, "--units", f"0-{units - 1}", "--llm", "openai-compatible:scripted",
        "--llm-base-url", endpoints.llm_url, "--server", endpoints.server_url, "--out", str(out),
        "--iterations", str(iterations), "--concurrency", str(units), "--quiet", "--no-groups",
        "--no-report",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(run: subprocess.Popen, started: float) -> float:
    output, _ = run.communicate(timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"line run exited with {run.returncode}:\n{output}")
    return time.perf_counter() - started


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as stream:
        return list(csv.DictReader(stream))


def measure(
    units: int = 28,
    outage_s: float = 60.0,
    iterations: int = 10,
    endpoint: str = "server",
    latency_ms: float = 50.0,
) -> dict:
    """A reference run, then the same run with ``endpoint`` killed for ``outage_s``."""
    if endpoint not in ("server", "llm"):
        raise ValueError("endpoint is 'server' or 'llm'")
    with tempfile.TemporaryDirectory(prefix="line-outage-") as tmp:
        folder = Path(tmp)
        walls: dict[str, float] = {}
        begun: dict[str, float] = {}
        downtime = 0.0
        for name in ("reference", "outage"):
            endpoints = Endpoints(folder, free_port(), free_port(), folder / f"store-{name}")
            try:
                endpoints.start_server()
                endpoints.start_llm(latency_ms)
                out = folder / name
                started = time.perf_counter()
                run = _start_run(endpoints, out, units, iterations)
                while not (out / "config.json").exists() and run.poll() is None:
                    time.sleep(0.05)  # started: the servers were checked, the folder made
                begun[name] = time.perf_counter() - started
                if name == "outage":
                    time.sleep((walls["reference"] - begun["reference"]) / 3)
                    victim = endpoints.server if endpoint == "server" else endpoints.llm
                    assert victim is not None
                    if run.poll() is not None:
                        raise RuntimeError("the run finished before the outage")
                    killed = time.perf_counter()
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    time.sleep(outage_s)
                    if endpoint == "server":
                        endpoints.start_server()
                    else:
                        endpoints.start_llm(latency_ms)
                    downtime = time.perf_counter() - killed
                walls[name] = _finish(run, started)
            finally:
                endpoints.stop()
        rows = _rows(folder / "outage")
        recorded = folder / "outage" / "outages.json"  # none: a LINE from before outages
        outages = json.loads(recorded.read_text()) if recorded.is_file() else []
    extra = walls["outage"] - walls["reference"]
    return {
        "endpoint": endpoint,
        "units": units,
        "iterations": iterations,
        "outage_s": outage_s,
        "reference_wall_s": round(walls["reference"], 1),
        "outage_wall_s": round(walls["outage"], 1),
        "downtime_s": round(downtime, 1),
        "extra_wall_s": round(extra, 1),
        "cost_per_downtime": round(extra / downtime, 2),
        "done": sum(row["status"] == "done" for row in rows),
        "recorded_outages": outages,
        "neurons_waiting": sum(int(row.get("outages") or 0) > 0 for row in rows),
        "max_neuron_wait_s": max(float(row.get("outage_s") or 0) for row in rows),
    }


def run(units: int = 28, outage_s: float = 60.0, endpoint: str = "server") -> dict:
    """``make bench``: print the figures and write ``bench-results/outage.json``."""
    figures = measure(units, outage_s, endpoint=endpoint)
    recorded = "; ".join(
        f"{o['endpoint']} {o['seconds']} s {o['outcome']}, {o['probes']} probes, "
        f"{o['waiting_neurons']} neurons waiting"
        for o in figures["recorded_outages"]
    )
    print(
        f"{figures['units']} neurons, {figures['endpoint']} killed for {figures['outage_s']:.0f} s "
        f"(unreachable {figures['downtime_s']} s with the restart): run wall "
        f"{figures['reference_wall_s']} s -> {figures['outage_wall_s']} s, extra "
        f"{figures['extra_wall_s']} s = {figures['cost_per_downtime']} x the downtime; "
        f"{figures['done']} done; recorded: {recorded}; {figures['neurons_waiting']} neurons "
        f"waited (longest {figures['max_neuron_wait_s']} s)"
    )
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    name = "outage.json" if endpoint == "server" else f"outage-{endpoint}.json"
    (out / name).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=28)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the endpoint is down")
    parser.add_argument("--endpoint", choices=["server", "llm"], default="server")
    arguments = parser.parse_args()
    run(arguments.units, arguments.outage, arguments.endpoint)
