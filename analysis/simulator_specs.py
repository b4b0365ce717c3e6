"""The simulator specs :func:`analysis.simulators.load_simulator` accepts, in a module that
imports nothing: ``line eval simulate --help`` lists them without loading the simulators."""

from __future__ import annotations

EXACT = "exact"
CLIP_PREFIX = "clip:"
TINY_CLIP = "tiny-clip"
"""The name of the offline random-weight CLIP."""
SIMULATOR_SPECS = (
    f"{EXACT} (toy world: the scene's known attributes against the label's)",
    f"{CLIP_PREFIX}HUB_ID_OR_FOLDER (a CLIP-style image-text model, e.g. "
    f"{CLIP_PREFIX}openai/clip-vit-base-patch32)",
    f"{TINY_CLIP} (a random-weight CLIP built offline, for tests: its predictions are noise)",
)
"""What :func:`analysis.simulators.load_simulator` accepts, for help texts and error messages."""
