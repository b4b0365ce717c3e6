"""The verdict on a final label: does it stand out, or does no concept stand out?

Every search finds a best concept, even for a neuron that responds to nothing; its score is then
the luck of the draw. The verdict compares the neuron's activations on the label's own images
with a reference: the control set's activations when the run has one, otherwise the rest of the
neuron's history, each other concept summarised by the median activation of its images. The
figure is a robust z-score of the label's typical activation,

    selectivity = 0.6745 * (median(label) - median(reference)) / MAD(reference)

(MAD: median absolute deviation; 0.6745 makes it comparable to a standard score for normal data,
as in Iglewicz and Hoaglin's modified z-score). The label is **selective** when the figure
reaches :data:`SELECTIVE_Z` (3.5, the usual outlier cut). Medians keep it honest about the
search: the best of many concepts of a noise neuron has a few lucky images, but its median
image does not stand out (in simulation, the best of 28 concepts of 5 noise images each reaches
3.5 in 2-6% of neurons). Summarising the history per concept keeps a neuron that responds a little
to almost every scene (a texture detector in a world full of textured distractors) comparable
with one that is silent. A reference of equal values (MAD 0) gives +inf above it, 0 at it and
-inf below it; a label with no images or no reference gets no verdict (NaN, not selective).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.groundtruth import normalised_score

NO_SELECTIVE_CONCEPT = "no selective concept"
"""What tables and reports show instead of a label that does not stand out."""
SELECTIVE_Z = 3.5
"""A label is selective when its selectivity reaches this."""


@dataclass(frozen=True)
class Verdict:
    """Whether a label stands out, and the figure behind it."""

    selectivity: float
    """Robust z-score of the label's median activation against the reference (NaN: no data)."""
    reference: str
    """What the label was compared with: ``control`` or ``history``."""

    @property
    def selective(self) -> bool:
        """True when the selectivity reaches :data:`SELECTIVE_Z`."""
        return not math.isnan(self.selectivity) and self.selectivity >= SELECTIVE_Z


def selectivity(label: Sequence[float], reference: Sequence[float] | np.ndarray) -> float:
    """The robust z-score of the label's median activation against the reference's spread
    (:func:`analysis.groundtruth.normalised_score` of that median); NaN without data."""
    ours = [v for v in label if math.isfinite(v)]
    if not ours:
        return math.nan
    figure = normalised_score(float(np.median(ours)), [float(v) for v in reference])
    return math.nan if figure is None else figure


def label_verdict(
    entries: Iterable[Mapping[str, Any]],
    label: str | None,
    control: Sequence[float] | np.ndarray | None = None,
) -> Verdict:
    """The verdict on ``label`` from a neuron's history entries (each with ``concept`` and
    ``activations``): against ``control`` when given, else against the other concepts' medians."""
    rows = list(entries)
    ours = [float(v) for row in rows if row.get("concept") == label for v in row["activations"]]
    if control is not None and len(control) > 0:
        return Verdict(selectivity(ours, [float(v) for v in control]), "control")
    others = [
        float(np.median(row["activations"]))
        for row in rows
        if row.get("concept") != label and len(row["activations"]) > 0
    ]
    return Verdict(selectivity(ours, others), "history")


def shown_label(label: str, selective: bool | None) -> str:
    """The label as tables show it: ``no selective concept (best: red)`` when the verdict says
    it does not stand out; the label itself when it does or when there is no verdict (older
    runs, failed neurons)."""
    if selective is False and label:
        return f"{NO_SELECTIVE_CONCEPT} (best: {label})"
    return label
