"""The run folder: one class owns its layout (config, checkpoints, records, results).

``RUN_DIR/config.json`` (:class:`RunSettings`), ``checkpoints.sqlite`` (LangGraph threads),
``neurons/<layer>__<unit>.json`` (one record per neuron, :class:`agent.record.NeuronRecord`),
``results.csv`` (+ ``.parquet``, derived from the records), ``outages.json`` (every time an
endpoint stopped answering during the run, :class:`OutageRecord`). The runner writes it; the
report, the evaluations and the analyses read it through :class:`RunFolder`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agent.record import (
    FAULT_COUNTERS,
    RESULT_COLUMNS,
    NeuronRecord,
    result_fields,
    result_row,
)
from tools.availability import DEFAULT_PATIENCE_S

log = logging.getLogger("line.run")

__all__ = ["FAULT_COUNTERS", "RESULT_COLUMNS", "NeuronRecord", "RunFolder", "RunSettings"]

EVALUATIONS: dict[str, str] = {
    "ablation": "Concept ablation (edit the label out of the top images)",
    "simulation": "Simulation scoring (does the label predict the activations?)",
    "fidelity": "Fidelity (generated images vs real images of the same class)",
    "iterations": "Iteration analysis (best score so far and discovery rate per step)",
    "compare": "Method comparison (CoSy of several methods' labels)",
    "census": "Basis census (dead and dense latents, before the run)",
}
"""Every evaluation that writes into a run folder, by file stem, with the title the report
shows. Each writes ``<name>.csv`` (one row per neuron or method), ``<name>.md`` (the summary)
and optionally ``<name>.png`` (its figure) and ``<name>.json`` (per-image detail); see
:meth:`RunFolder.evaluation`."""


@dataclass(frozen=True)
class EvaluationFiles:
    """The files of one evaluation of a run: its table, its Markdown summary, its figure."""

    name: str
    title: str
    csv: Path
    summary: Path
    figure: Path
    details: Path
    """Per-image detail for the report (JSON), where the evaluation has any."""

    def exists(self) -> bool:
        """Whether the evaluation has run on this folder (its table is there)."""
        return self.csv.is_file()


class ConfigChange(BaseModel):
    """One setting changed when a run was resumed (``config.json``'s ``history``)."""

    setting: str
    old: Any = None
    new: Any = None
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class RunSettings(BaseModel):
    """``config.json``: everything needed to rerun or resume a run."""

    target: str
    layer: str
    units: list[int]
    generator: str | None = None
    editor: str | None = None
    """The image editor of the agentic ``edit_images`` tool (``--editor``); None: no tool."""
    llm: str
    llm_base_url: str | None = None
    llm_context: int | None = None
    """The LLM's context window in tokens (``--llm-context``); None: read from the server."""
    llm_max_tokens: int | None = None
    """The longest answer in tokens (``--llm-max-tokens``); None: what the window leaves, at
    most a quarter of it."""
    prompts: str = "paper"
    variant_overrides: dict[str, Any] = Field(default_factory=dict)
    variant_fingerprint: str = ""
    seed: int = 0
    concurrency: int = 64
    server: str | list[str] | None = None  # one URL, or several (a pool; see tools.pool)
    control: str | None = None
    llm_cache: str | None = None
    basis: str | None = None  # sae:PATH or directions:PATH; ``layer`` is then layer@<basis key>
    basis_hash: str | None = None  # SHA-256 of the basis's tensors (inference.bases)
    outage_patience_s: float = DEFAULT_PATIENCE_S
    """How long the run waits for an inference server or LLM endpoint that stopped answering
    before it stops (``--outage-patience``)."""
    groups: bool = True
    """Add each neuron's polysemanticity groups to its record and ``results.csv`` (loads the
    offline sentence-embedding model; ``--no-groups``)."""
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    history: list[ConfigChange] = Field(default_factory=list)
    """Settings changed on ``--resume`` (LLM, base URL, concurrency, servers, the variant)."""

    @property
    def server_urls(self) -> list[str]:
        """The inference servers of the run (empty: a local one is started)."""
        if not self.server:
            return []
        return [self.server] if isinstance(self.server, str) else list(self.server)


class OutageRecord(BaseModel):
    """One time an endpoint of the run stopped answering (``outages.json``)."""

    endpoint: str
    """``inference server URL``, ``inference servers URL, URL`` or ``LLM endpoint URL``."""
    started: str
    """When the first request failed (ISO 8601, UTC)."""
    seconds: float
    """How long it lasted (until the run ended, while ``outcome`` is ``ongoing``)."""
    outcome: str
    """``recovered``, ``gave up`` (the run stopped after ``--outage-patience``) or ``ongoing``."""
    probes: int = 0
    """Probes sent while it was down: one prober for all waiting requests."""
    waiting_neurons: int = 0
    """Neurons that waited for it."""
    error: str = ""
    """The failure that started it."""


class RunFolder:
    """Paths and files of one run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.checkpoints = self.path / "checkpoints.sqlite"
        self.neurons = self.path / "neurons"
        self.results_csv = self.path / "results.csv"
        self.results_parquet = self.path / "results.parquet"
        self.outages = self.path / "outages.json"
        self.report = self.path / "report"

    def cosy_csv(self, labels_name: str | None = None) -> Path:
        """CoSy scores of the run's labels (``cosy.csv``), or of a foreign labels file named
        ``labels_name`` (``cosy-<labels_name>.csv``)."""
        return self.path / (f"cosy-{labels_name}.csv" if labels_name else "cosy.csv")

    def evaluation(self, name: str) -> EvaluationFiles:
        """Where evaluation ``name`` (a key of :data:`EVALUATIONS`) keeps its files."""
        if name not in EVALUATIONS:
            raise KeyError(f"unknown evaluation {name!r}; known: {', '.join(EVALUATIONS)}")
        return EvaluationFiles(
            name,
            EVALUATIONS[name],
            self.path / f"{name}.csv",
            self.path / f"{name}.md",
            self.path / f"{name}.png",
            self.path / f"{name}.json",
        )

    def evaluations(self) -> list[EvaluationFiles]:
        """The evaluations that have run on this folder, in :data:`EVALUATIONS` order."""
        return [files for name in EVALUATIONS if (files := self.evaluation(name)).exists()]

    def record_paths(self) -> list[Path]:
        """Every neuron record written so far, sorted by file name."""
        return sorted(self.neurons.glob("*.json"))

    def create(self, settings: RunSettings) -> None:
        """Make the folder and write the config."""
        self.neurons.mkdir(parents=True, exist_ok=True)
        self.config.write_text(settings.model_dump_json(indent=2))

    def read_settings(self) -> RunSettings:
        """The settings of an existing run (for ``--resume``)."""
        if not self.config.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a LINE run folder (no config.json); start a run with "
                "`line run ... --out DIR`"
            )
        return RunSettings.model_validate_json(self.config.read_text())

    def record_path(self, layer: str, unit: int) -> Path:
        """Where a neuron's record lives."""
        return self.neurons / f"{layer.replace('/', '_')}__{unit}.json"

    def read_record(self, layer: str, unit: int) -> NeuronRecord | None:
        """A neuron's record, ``None`` while it has none. A file that is not a neuron record
        raises :class:`RecordError` saying which file and what to do."""
        path = self.record_path(layer, unit)
        if not path.is_file():
            return None
        return read_record_file(path)

    def records(self, units: Sequence[int] | None = None) -> list[NeuronRecord]:
        """The records of the run's units (``units``; default: the config's), in that order;
        a unit without a record yet is ``unfinished``."""
        settings = self.read_settings()
        out = []
        for unit in settings.units if units is None else units:
            record = self.read_record(settings.layer, unit)
            out.append(record or NeuronRecord.unfinished(settings.target, settings.layer, unit))
        return out

    def read_results(self) -> list[dict[str, str]]:
        """The rows of ``results.csv`` as written (strings); empty before the run has one."""
        if not self.results_csv.is_file():
            return []
        with self.results_csv.open(newline="") as stream:
            return list(csv.DictReader(stream))

    def read_outages(self) -> list[OutageRecord]:
        """Every outage recorded in the run's sessions, oldest first (empty: none)."""
        if not self.outages.is_file():
            return []
        try:
            rows = json.loads(self.outages.read_text())
            return [OutageRecord.model_validate(row) for row in rows]
        except (OSError, ValueError):  # damaged: the run does not depend on it
            return []

    def add_outages(self, records: Sequence[OutageRecord]) -> None:
        """Append this session's outages to ``outages.json`` (written atomically)."""
        if not records:
            return
        rows = [record.model_dump() for record in [*self.read_outages(), *records]]
        partial = self.outages.with_suffix(".json.part")
        partial.write_text(json.dumps(rows, indent=1))
        partial.replace(self.outages)

    def write_record(self, record: NeuronRecord) -> None:
        """Write one neuron's record atomically."""
        path = self.record_path(record.layer, record.unit)
        partial = path.with_suffix(".json.part")
        partial.write_text(record.model_dump_json(indent=1))
        partial.replace(path)

    def _write_parquet(self) -> None:
        """``results.parquet`` beside the CSV when pyarrow is installed (the ``parquet`` extra):
        the same columns with their types read from the CSV, an empty cell as null. Written by
        a short child process (:mod:`agent.parquet_copy`), so pyarrow's ~110 MB never add to the
        peak memory of a runner that holds many neurons."""
        if importlib.util.find_spec("pyarrow") is None:
            return
        copy = [sys.executable, "-m", "agent.parquet_copy", str(self.results_csv)]
        done = subprocess.run([*copy, str(self.results_parquet)], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("results.parquet not written: %s", done.stderr.strip()[-500:])

    def write_results(self, records: Sequence[NeuronRecord]) -> list[dict[str, Any]]:
        """``results.csv`` (and ``results.parquet`` when pyarrow is present), derived from the
        records; returns its rows. The columns are :func:`agent.record.result_fields`."""
        fields = result_fields(records)
        columns = list(fields)
        rows = [result_row(record, fields) for record in records]
        with self.results_csv.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self._write_parquet()
        return rows


class RecordError(ValueError):
    """A ``neurons/*.json`` file that is not a neuron record."""


def read_record_file(path: Path) -> NeuronRecord:
    """One ``neurons/<layer>__<unit>.json`` file as a :class:`NeuronRecord` (a history written
    before the typed record is upgraded as it is read); :class:`RecordError` for a file that is
    no neuron record, saying how to write it again."""
    try:
        return NeuronRecord.model_validate_json(path.read_text())
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        why = f"{where}: {first['msg']}"
    except (OSError, UnicodeDecodeError) as error:
        why = str(error)
    raise RecordError(
        f"{path} is not a LINE neuron record ({why}); move it away and run "
        f"`line run --resume {path.parent.parent}`: the run writes the neuron's record again "
        "from its checkpoint (or explains the neuron again)"
    )
