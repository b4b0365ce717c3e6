"""Prompt variants: plain-text templates and a settings file in ``prompts/<variant>/``.

Templates use ``$name`` placeholders (``string.Template``), so braces in prompt text are safe.
A user makes a new variant by copying a folder and editing it; ``load_variant`` takes a variant
name or a folder path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import prompts as prompts_package

PROMPTS_DIR = Path(prompts_package.__file__).parent
TEMPLATES = {
    "paper": ("system", "proposal", "summary", "image_prompt"),
    "agentic": ("system", "task", "summary", "image_prompt"),
}
_IMAGE = frozenset({"concept", "angle", "lighting"})
PLACEHOLDERS: dict[str, dict[str, frozenset[str]]] = {
    "paper": {
        "system": frozenset(),
        "proposal": frozenset({"iteration", "iterations", "scoreboard", "tried"}),
        "summary": frozenset({"scoreboard"}),
        "image_prompt": _IMAGE,
    },
    "agentic": {
        "system": frozenset({"max_concepts", "max_images"}),
        "task": frozenset({"max_concepts", "max_images", "scoreboard"}),
        "summary": frozenset({"scoreboard"}),
        "image_prompt": _IMAGE,
    },
}
"""The ``$placeholders`` each template of a strategy may use: the values every step that
renders it provides. Anything else is refused when the variant loads, before a run starts."""


class VariantError(ValueError):
    """A prompt variant that is missing or malformed."""


class VariantSettings(BaseModel):
    """``settings.json`` of a variant."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["paper", "agentic"]
    temperature: float = Field(0.7, ge=0, le=2)
    scoreboard_size: int = Field(10, ge=1)
    images_per_concept: int = Field(5, ge=1, le=64)
    iterations: int = Field(10, ge=0, description="paper: proposal rounds before the summary")
    seed_top_classes: int = Field(5, ge=0)
    seed_random_classes: int = Field(5, ge=0)
    max_reasks: int = Field(3, ge=0, description="re-asks when an answer is unusable")
    max_concept_words: int = Field(
        8, ge=1, le=8, description="longest concept (in words) an LLM answer may give"
    )
    score: Literal["mean", "mad", "auc"] = "mean"
    max_concepts: int = Field(15, ge=1, description="agentic budget")
    max_images: int = Field(100, ge=1, description="agentic budget")
    max_llm_turns: int = Field(40, ge=1, description="agentic budget")
    confirm_candidates: int = Field(
        5, ge=1, le=20, description="top distinct search concepts re-checked on fresh images"
    )
    confirm_images: int = Field(
        20, ge=2, le=256, description="fresh images per candidate in the confirmation"
    )
    confirm_inhibitors: int = Field(
        3, ge=0, le=20, description="lowest search concepts re-checked for an inhibitor (0: none)"
    )
    confirm_margin: float = Field(
        0.05, ge=0, le=0.5, description="AUC a simpler candidate may lose to the best and win"
    )
    llm_images: int = Field(
        0,
        ge=0,
        le=16,
        description="images shown to a vision LLM with every proposal: this many of the "
        "scoreboard's most and least activating ones (0: text only; --llm-images)",
    )
    edit_tool: bool = Field(
        False,
        description="agentic: the variant relies on the edit_images tool, so a run needs an "
        "image editor (--editor; procedural:shapes by default in the toy world)",
    )
    angles: list[str] = Field(default_factory=lambda: ["front view"])
    lighting: list[str] = Field(default_factory=lambda: ["daylight"])


LATER_SETTINGS = ("llm_images", "edit_tool")
"""Settings added after runs began recording variant fingerprints: left at their defaults
they are not part of the fingerprint, so a run started before them still resumes."""


@dataclass(frozen=True)
class PromptVariant:
    """A loaded variant: its settings and raw templates."""

    name: str
    folder: Path
    settings: VariantSettings
    templates: dict[str, str]

    def render(self, template: str, **values: object) -> str:
        """Fill a template; a placeholder without a value is an error naming it."""
        try:
            return string.Template(self.templates[template]).substitute(
                {key: str(value) for key, value in values.items()}
            )
        except KeyError as error:
            raise VariantError(
                f"template {template}.txt of variant {self.name!r} uses ${error.args[0]}, which "
                f"this step does not provide; available: {', '.join(sorted(values))}"
            ) from error

    def image_prompt(self, concept: str, selector: int) -> str:
        """The text-to-image prompt for a concept; ``selector`` picks angle and lighting."""
        settings = self.settings
        angle = settings.angles[selector % len(settings.angles)]
        lighting = settings.lighting[(selector // len(settings.angles)) % len(settings.lighting)]
        return self.render("image_prompt", concept=concept, angle=angle, lighting=lighting).strip()

    def fingerprint(self) -> str:
        """A hash of settings and templates, recorded with every run."""
        settings = self.settings.model_dump()
        for name in LATER_SETTINGS:  # at their defaults, older runs' fingerprints still hold
            if settings[name] == VariantSettings.model_fields[name].default:
                del settings[name]
        blob = json.dumps({"settings": settings, "templates": self.templates}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_variants() -> list[str]:
    """The variants shipped in ``prompts/``."""
    return sorted(path.name for path in PROMPTS_DIR.iterdir() if (path / "settings.json").is_file())


def load_variant(name_or_path: str, **overrides: object) -> PromptVariant:
    """Load a shipped variant by name or a variant folder by path; ``overrides`` patch settings."""
    folder = Path(name_or_path).expanduser()
    if not (folder / "settings.json").is_file():
        folder = PROMPTS_DIR / name_or_path
    if not (folder / "settings.json").is_file():
        raise VariantError(
            f"unknown prompt variant {name_or_path!r}; shipped variants: "
            f"{', '.join(list_variants())}, or pass a folder holding settings.json and the "
            "templates (copy prompts/paper to start)"
        )
    try:
        raw = json.loads((folder / "settings.json").read_text())
        raw.update({key: value for key, value in overrides.items() if value is not None})
        settings = VariantSettings.model_validate(raw)
    except (json.JSONDecodeError, ValidationError) as error:
        raise VariantError(f"{folder / 'settings.json'} is not valid: {error}") from error
    templates = {}
    for template in TEMPLATES[settings.strategy]:
        path = folder / f"{template}.txt"
        if not path.is_file():
            raise VariantError(
                f"variant {folder.name!r} ({settings.strategy}) needs {path.name}; it has "
                + ", ".join(sorted(p.name for p in folder.iterdir()))
            )
        templates[template] = path.read_text().strip() + "\n"
        check_placeholders(folder.name, settings.strategy, template, templates[template])
    return PromptVariant(folder.name, folder, settings, templates)


def check_placeholders(variant: str, strategy: str, template: str, text: str) -> None:
    """Every ``$placeholder`` of a template is one its step fills, and every ``$`` is one
    (``$$`` writes a dollar sign); else a :class:`VariantError` naming the typo."""
    parsed = string.Template(text)
    known = PLACEHOLDERS[strategy][template]
    if not parsed.is_valid():
        raise VariantError(
            f"template {template}.txt of variant {variant!r} has a '$' that starts no "
            "placeholder; write $$ for a dollar sign"
        )
    for name in parsed.get_identifiers():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise VariantError(
                f"template {template}.txt of variant {variant!r} uses ${name}, which is not one "
                f"of its placeholders ({', '.join(f'${k}' for k in sorted(known)) or 'none'})"
                + (f"; did you mean ${close[0]}?" if close else "")
            )
