"""The census of a unit basis before a run: which units never fire (dead) and which fire on
nearly every image (dense).

A unit fires on an image when its activation is above 0 (an SAE latent's ReLU opens, a direction
points the image's way). The census images are the run's control set when it has one, else
:data:`CENSUS_IMAGES` neutral scenes rendered by the run's generator (``ControlSet.toy``: prompts
without a concept, such as "a photo", with fixed seeds). A dead unit is not explained: the run
marks it ``dead`` in ``results.csv`` with the census's figures as the reason. Dense units are
explained like any other, and reported, since a unit that fires on everything rarely has one
concept.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tools.client import InferenceClient
from tools.controlset import ControlActivations, ControlSet, measure_control

CENSUS_IMAGES = 64
"""Neutral scenes rendered for the census of a run without a control set."""
DENSE_FRACTION = 0.9
"""A unit that fires on at least this share of the census images is dense."""
CENSUS_COLUMNS = ["unit", "status", "images", "fires", "density", "max", "mean"]


@dataclass(frozen=True)
class UnitCensus:
    """How one unit behaved on the census images."""

    unit: int
    images: int
    fires: int
    max: float
    mean: float

    @property
    def density(self) -> float:
        """The share of census images the unit fires on."""
        return self.fires / self.images if self.images else 0.0

    @property
    def status(self) -> str:
        """``dead`` (fires on none), ``dense`` (on at least ``DENSE_FRACTION``) or ``live``."""
        if self.fires == 0:
            return "dead"
        return "dense" if self.density >= DENSE_FRACTION else "live"


@dataclass(frozen=True)
class Census:
    """Every unit of a run on the census images of ``source`` (a control set's name)."""

    source: str
    units: list[UnitCensus]

    @classmethod
    def of(cls, values: np.ndarray, units: Sequence[int], source: str) -> Census:
        """The census of ``[images, units]`` activations."""
        values = np.asarray(values, dtype=np.float64)
        return cls(
            source,
            [
                UnitCensus(
                    unit=int(unit),
                    images=int(values.shape[0]),
                    fires=int(np.count_nonzero(values[:, column] > 0)),
                    max=float(values[:, column].max()) if values.shape[0] else 0.0,
                    mean=float(values[:, column].mean()) if values.shape[0] else 0.0,
                )
                for column, unit in enumerate(units)
            ],
        )

    def with_status(self, status: str) -> list[int]:
        """The units of one status (``dead``, ``dense``, ``live``)."""
        return [entry.unit for entry in self.units if entry.status == status]

    def unit(self, unit: int) -> UnitCensus:
        """One unit's census."""
        return next(entry for entry in self.units if entry.unit == unit)

    def dead_reason(self, unit: int) -> str:
        """Why a dead unit is not explained (for ``results.csv``)."""
        entry = self.unit(unit)
        return (
            f"dead: fires on none of the {entry.images} census images ({self.source}); highest "
            f"activation {entry.max:.4g}"
        )

    def summary(self) -> str:
        """One paragraph: how many units are dead and dense, and which."""
        dead, dense = self.with_status("dead"), self.with_status("dense")
        images = self.units[0].images if self.units else 0

        def listed(units: list[int]) -> str:
            shown = ", ".join(map(str, units[:20])) + (" ..." if len(units) > 20 else "")
            return f" ({shown})" if units else ""

        return (
            f"Basis census on {self.source} ({images} images): {len(dead)} of {len(self.units)} "
            f"units dead{listed(dead)}, {len(dense)} dense{listed(dense)} (firing on at least "
            f"{DENSE_FRACTION:.0%} of the images). Dead units are not explained: results.csv "
            "marks them dead."
        )

    def write(self, csv_path: Path, summary_path: Path) -> None:
        """The table (one row per unit) as CSV and the summary as Markdown."""
        with csv_path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=CENSUS_COLUMNS)
            writer.writeheader()
            for entry in self.units:
                row = {**asdict(entry), "status": entry.status, "density": entry.density}
                writer.writerow(
                    {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
                )
        summary_path.write_text(self.summary() + "\n")


def census_set(control: ControlSet | None) -> ControlSet:
    """The census images: the control set, else the neutral scenes."""
    return control if control is not None else ControlSet.toy(CENSUS_IMAGES)


async def take_census(
    client: InferenceClient,
    target: str,
    layer: str,
    units: Sequence[int],
    generator: str | None,
    control: ControlSet | None = None,
    measured: ControlActivations | None = None,
) -> Census:
    """The census of ``units`` of ``layer``: from ``measured`` (the control set, already read)
    when given, else measured now on :func:`census_set`."""
    images = census_set(control)
    if measured is None:
        measured = await measure_control(client, images, target, layer, units, generator)
    columns = [measured.units.index(unit) for unit in units]
    return Census.of(measured.values[:, columns], units, images.name)
