"""The evaluations' default settings, in a module that imports nothing: ``line eval``'s option
defaults and help texts show them without loading the evaluations."""

from __future__ import annotations

DEFAULT_COSY_TEMPLATE = "realistic photo of a close up of {label}"
"""CoSy's prompt template; ``{label}`` is replaced by the neuron's label."""
DEFAULT_ABLATION_TEMPLATE = "remove the {label}"
"""Concept ablation's edit instruction; ``{label}`` is replaced by the neuron's label."""
DEFAULT_ABLATION_TOP_K = 10
"""Concept ablation edits this many of each neuron's most activating images."""
DEFAULT_MIN_SIMILARITY = 0.8
"""A label names the control class it is most similar to from this cosine up (all-MiniLM-L6-v2
gives related but different words, "blue" and "red", about 0.73; "circle" and "circles" 0.87)."""
