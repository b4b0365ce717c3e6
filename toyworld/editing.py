"""``procedural:shapes`` as an image editor: the same scene re-rendered with an edit applied.

The toy world's edits are exact, which makes them the ground truth of concept ablation: an image
that ``procedural:shapes`` rendered is laid out again from its prompt and seed (the store keeps
both), the instruction changes the scene, and the scene is drawn again with everything else
(layout, lighting, noise) unchanged. Two kinds of instruction:

* removal, any text naming attributes ("remove the red circle", "no stripes"): every object that
  matches a named group (all of the group's colours, shapes, textures and size; alternatives such
  as "star or cross" match either) is taken out, distractors included; a named background becomes
  the neutral light gray;
* replacement, ``replace X with Y`` / ``turn X into Y`` / ``change X to Y``: objects matching X
  take the colour, shape, texture or size that Y names (a background named in Y replaces it).

An instruction that names nothing the toy world knows is refused, so is an image that
``procedural:shapes`` did not render (an upload, another generator's image, an earlier edit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from inference.protocols import (
    BackendSpecError,
    EditJob,
    EditSettings,
    GeneratorOptions,
    RenderedImage,
)
from toyworld.procedural import (
    GENERATOR_NAMES,
    ProceduralShapesGenerator,
    draw_scene,
)
from toyworld.scenes import SIZE_RANGES, PlacedObject, Scene, compose_scene
from toyworld.vocabulary import ObjectSpec, SceneSpec, parse_scene_text
from toyworld.world import DEFAULT_BACKGROUND_RGB, NAMED_BACKGROUND_RGB

EDITOR_VERSION = "v1"
"""Bump when a change alters edited pixels: it is part of the editor's identity (edit ids)."""

REPLACEMENT = re.compile(
    r"^\s*(?:replace|turn|change)\s+(?P<old>.+?)\s+(?:with|into|to)\s+(?P<new>.+?)\s*$",
    re.IGNORECASE,
)
NEUTRAL_BACKGROUND = "light gray"
SMALL_BELOW = (SIZE_RANGES["small"][1] + SIZE_RANGES["medium"][0]) / 2
LARGE_ABOVE = (SIZE_RANGES["medium"][1] + SIZE_RANGES["large"][0]) / 2
"""Size classes of placed objects: halfway between the size ranges the generator draws from."""


def size_class(obj: PlacedObject) -> str:
    """``small``, ``medium`` or ``large`` for an object's radius (fraction of the short side)."""
    if obj.radius < SMALL_BELOW:
        return "small"
    return "large" if obj.radius > LARGE_ABOVE else "medium"


def matches(obj: PlacedObject, group: ObjectSpec) -> bool:
    """Whether an object has every attribute a group names (alternatives match either)."""
    return (
        (not group.colours or obj.colour in group.colours)
        and (not group.shapes or obj.shape in group.shapes)
        and (not group.textures or obj.texture in group.textures)
        and (group.size is None or size_class(obj) == group.size)
    )


@dataclass(frozen=True)
class SceneEdit:
    """A parsed instruction: what to match, and for a replacement what to set."""

    match: SceneSpec
    into: SceneSpec | None = None

    @classmethod
    def parse(cls, instruction: str) -> SceneEdit:
        """A removal or a replacement (see the module docstring)."""
        found = REPLACEMENT.match(instruction)
        if found:
            return cls(parse_scene_text(found["old"]), parse_scene_text(found["new"]))
        return cls(parse_scene_text(instruction))

    def problem(self) -> str | None:
        """Why the instruction does nothing in the toy world (``None`` when it does something)."""
        if not self.match.groups and self.match.background is None:
            return (
                "the instruction names no attribute the toy world knows (a colour, shape, "
                "texture, size or background), e.g. 'remove the red circle'"
            )
        if self.into is not None and not self.into.attributes:
            return "the replacement names no attribute, e.g. 'replace the red with blue'"
        return None

    def apply(self, scene: Scene) -> Scene:
        """The scene with the edit applied."""
        if self.into is None:
            objects = tuple(
                obj
                for obj in scene.objects
                if not any(matches(obj, group) for group in self.match.groups)
            )
            background = NEUTRAL_BACKGROUND if self.match.background else scene.background
            rgb = (
                DEFAULT_BACKGROUND_RGB[NEUTRAL_BACKGROUND]
                if self.match.background
                else scene.background_rgb
            )
            return replace(scene, objects=objects, background=background, background_rgb=rgb)
        target = self.into.groups[0] if self.into.groups else ObjectSpec()
        objects = tuple(
            _recast(obj, target) if any(matches(obj, group) for group in self.match.groups) else obj
            for obj in scene.objects
        )
        scene = replace(scene, objects=objects)
        if self.match.background and self.into.background:
            scene = replace(
                scene,
                background=self.into.background,
                background_rgb=NAMED_BACKGROUND_RGB[self.into.background],
            )
        return scene


def _recast(obj: PlacedObject, target: ObjectSpec) -> PlacedObject:
    """An object with the attributes a replacement names (the first of any alternatives)."""
    radius = obj.radius
    if target.size is not None and target.size != size_class(obj):
        low, high = SIZE_RANGES[target.size]
        radius = (low + high) / 2
    return replace(
        obj,
        colour=target.colours[0] if target.colours else obj.colour,
        shape=target.shapes[0] if target.shapes else obj.shape,
        texture=target.textures[0] if target.textures else obj.texture,
        radius=radius,
        pattern_period=obj.pattern_period * radius / obj.radius,
    )


@dataclass
class ProceduralShapesEditor:
    """The ``procedural:shapes`` editor; seeds, steps and guidance do not change its output."""

    name: str = "procedural:shapes"
    identity: str = f"procedural:shapes-edit@{EDITOR_VERSION}"
    device: str = "cpu"
    renderer_identity: str = ProceduralShapesGenerator.identity

    def default_settings(self) -> EditSettings:
        """One step, no guidance (both are ignored)."""
        return EditSettings(steps=1, guidance=0.0)

    def refusal(self, source: dict[str, object], instruction: str) -> str | None:
        """Only images this world rendered can be edited, and only by instructions that name
        toy-world attributes."""
        if source.get("generator") != self.renderer_identity:
            made_by = (
                source.get("generator")
                or source.get("editor")
                or ("an upload" if source.get("uploaded") else "an unknown source")
            )
            return (
                f"it edits images that {self.renderer_identity} rendered (it lays their scene "
                f"out again from prompt and seed); this image comes from {made_by}. Use a "
                "diffusers editor for other images"
            )
        return SceneEdit.parse(instruction).problem()

    def edit(self, jobs: Sequence[EditJob]) -> list[RenderedImage]:
        """Re-render each job's scene with its edit applied, in order."""
        results = []
        for job in jobs:
            source = job.source
            prompt, seed = str(source["prompt"]), int(str(source["seed"]))
            width, height = int(str(source["width"])), int(str(source["height"]))
            scene = compose_scene(parse_scene_text(prompt), seed, aspect=width / height)
            edited = SceneEdit.parse(job.instruction).apply(scene)
            results.append(
                RenderedImage(
                    image=draw_scene(edited, width, height),
                    extra={
                        "removed": len(scene.objects) - len(edited.objects),
                        "objects": [obj.describe() for obj in edited.objects],
                        "background": edited.background,
                    },
                )
            )
        return results


def create_procedural_editor(
    rest: str, device: str, options: GeneratorOptions
) -> ProceduralShapesEditor:
    """Factory for ``procedural:<name>`` editor specs; ``device`` and ``options`` are ignored."""
    if rest not in GENERATOR_NAMES:
        raise BackendSpecError(
            f"unknown procedural editor {rest!r}; valid: "
            + ", ".join(f"'procedural:{name}'" for name in GENERATOR_NAMES)
        )
    return ProceduralShapesEditor()
