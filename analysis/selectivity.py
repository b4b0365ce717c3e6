"""The verdict on a final label: does it stand out, or does no concept stand out?

Every search finds a best concept, even for a neuron that responds to nothing, and its search
score is then the luck of the draw. The verdict is therefore never read off the search: it is
computed on the label's **confirmation images** (fresh seeds no search round used, see
:mod:`analysis.confirmation`) against the run's fixed control set. The figure is CoSy's AUC,
the chance that a confirmation image outranks a control image (ties count one half), with a
95% bootstrap interval. It is bounded by construction: a neuron that is constant on both sets
(zero spread) gets exactly 0.5, never an infinite figure.

Three outcomes, with the thresholds stated here and nowhere else:

- **selective**: AUC at least :data:`SELECTIVE_AUC` (0.85, the cut dissection uses for a
  reference concept) and the interval's lower end above :data:`CHANCE_AUC` (the label beats the
  control set beyond doubt);
- **weak**: AUC at least :data:`WEAK_AUC` (0.65) but not selective;
- **none**: below that, or a label that was not confirmed (no confirmation images): never
  selective.

An inhibitor (the concept that drives the unit lowest) is judged the same way from below
(:meth:`Verdict.inhibitor`): ``selective`` when its AUC is at most 1 - 0.85 = 0.15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NO_SELECTIVE_CONCEPT = "no selective concept"
"""What tables and reports show instead of a label that does not stand out."""
SELECTIVE_AUC = 0.85
"""A confirmed label is selective when its AUC against the control set reaches this."""
WEAK_AUC = 0.65
"""...and weak when it reaches this but is not selective."""
CHANCE_AUC = 0.5
"""A selective label's interval must lie above this."""
VERDICTS = ("selective", "weak", "none")


@dataclass(frozen=True)
class Verdict:
    """Whether a label stands out, and the figure behind it."""

    auc: float
    """AUC of the label's confirmation images against the control set (NaN: not confirmed)."""
    low: float = math.nan
    high: float = math.nan
    """The AUC's 95% interval."""

    @property
    def outcome(self) -> str:
        """``selective``, ``weak`` or ``none`` (module docstring)."""
        if not math.isfinite(self.auc):
            return "none"
        if self.auc >= SELECTIVE_AUC and (math.isnan(self.low) or self.low > CHANCE_AUC):
            return "selective"
        return "weak" if self.auc >= WEAK_AUC else "none"

    @property
    def selective(self) -> bool:
        """True only for the ``selective`` outcome."""
        return self.outcome == "selective"

    def inhibitor(self) -> Verdict:
        """The verdict on an inhibitor, whose AUC is read from below: an AUC of 0.1 (its images
        rank under nearly every control image) is as sure as 0.9 is for a label."""
        return Verdict(1.0 - self.auc, 1.0 - self.high, 1.0 - self.low)


def shown_label(label: str, selective: bool | str | None) -> str:
    """The label as tables show it: ``no selective concept (best: red)`` when the verdict says
    it does not stand out (``selective`` False, or a verdict ``weak``/``none``); the label
    itself when it does or when there is no verdict (older runs, failed neurons)."""
    if selective in ("True", "selective"):
        selective = True
    elif selective in ("False", "weak", "none"):
        selective = False
    if selective is False and label:
        return f"{NO_SELECTIVE_CONCEPT} (best: {label})"
    return label
