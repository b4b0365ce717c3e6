"""Concept ablation (the paper's Figures 3 and 8): edit the label out of the images that activate
a neuron most and measure again.

For each neuron with a final label: take its ``top_k`` most activating control images (or, without
a control set, its most activating generated images from the run's history), edit each with
``template`` ("remove the {label}"), and read the neuron on the edited images. As a control, the
same images are edited with a random concept that shares no word or toy-world attribute with the
label (in the toy world: one that no object of the label's matches), so that a drop caused by
editing at all is not credited to the label.

The normalised drop of one image is ``(before - after) / (before - floor)``, clipped to [-1, 1]:
1 when the edit brings the activation down to the neuron's typical level ``floor`` (the median on
the control set, or on all of the run's images of that neuron without one), 0 when nothing
changes. ``drop`` and ``control_drop`` are its means over the ``above`` images that were above
``floor`` before the edit (NaN when none was); ``fell`` is the share of all ``k`` images whose
activation fell at all.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agent.offline import DEFAULT_VOCABULARY_PATH
from agent.run_folder import EvaluationFiles, RunFolder
from agent.runner import thread_id
from evals.baseline import read_vocabulary
from evals.cosy_eval import CosyNeuron, cosy_neurons
from evals.defaults import DEFAULT_ABLATION_TEMPLATE, DEFAULT_ABLATION_TOP_K
from evals.tables import markdown_table, read_rows, write_rows
from inference.wire import RenderOptions
from tools.client import InferenceClient, LineServerError
from tools.controlset import (
    ControlSet,
    ControlSetError,
    cached_control_activations,
    store_control_images,
)
from tools.scoring import normalised_drops
from toyworld import TOY_WORLD_FAMILIES
from toyworld.vocabulary import describes_disjoint_objects

EVERYDAY_CONCEPTS_PATH = Path(__file__).parent / "vocab" / "everyday.txt"
"""Random control concepts for models of natural images (``--control-concepts`` overrides)."""
ABLATION_COLUMNS = [
    "layer", "unit", "label", "k", "above", "before", "after", "drop", "fell", "control_concept",
    "control_after", "control_drop", "floor", "source", "instruction", "editor",
]  # fmt: skip
ABLATION_SUMMARY_COLUMNS = [
    ("unit", "unit"), ("label", "label"), ("k", "k"), ("above", "above floor"),
    ("before", "before"), ("after", "after"),
    ("drop", "drop"), ("fell", "fell"), ("control_concept", "control concept"),
    ("control_drop", "control drop"),
]  # fmt: skip
Notes = Callable[[str], None]


class AblationError(ValueError):
    """An ablation that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class AblationPair:
    """One source image, its label-ablated and its control-edited versions, with activations."""

    source: str
    edited: str
    control_edited: str
    before: float
    after: float
    control_after: float


def read_ablation(
    files: EvaluationFiles,
) -> tuple[list[dict[str, str]], dict[str, list[AblationPair]]]:
    """What :func:`write_ablation` wrote: the rows of ``ablation.csv`` and each neuron's image
    pairs (``ablation.json``, keyed by neuron thread id); empty when no ablation ran."""
    rows = read_rows(files.csv)
    try:
        raw = json.loads(files.details.read_text()) if files.details.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return rows, {}
    names = AblationPair.__dataclass_fields__
    pairs = {
        neuron: [AblationPair(**{name: item[name] for name in names}) for item in items]
        for neuron, items in raw.items()
    }
    return rows, pairs


def instruction_for(template: str, label: str) -> str:
    """The edit instruction for a label; the template must contain ``{label}``."""
    if "{label}" not in template:
        raise AblationError(
            f"the edit template {template!r} has no {{label}}; e.g. {DEFAULT_ABLATION_TEMPLATE!r}"
        )
    return template.replace("{label}", label)


def default_control_concepts(target: str) -> Path:
    """The random-concept vocabulary: the toy world's for toy targets, everyday objects else."""
    family = target.partition(":")[0]
    return DEFAULT_VOCABULARY_PATH if family in TOY_WORLD_FAMILIES else EVERYDAY_CONCEPTS_PATH


def control_concept(label: str, concepts: Sequence[str], seed: int, neuron: str) -> str:
    """A random concept unrelated to ``label``, fixed by ``seed`` and the neuron: where label and
    vocabulary name toy-world attributes, one that no object of the label's matches
    (``describes_disjoint_objects``: "purple" for "red", not "triangle"); else one that shares
    no word with the label."""
    words = set(label.lower().split())
    unrelated = [c for c in concepts if describes_disjoint_objects(label, c)]
    if not unrelated:  # not toy-world text (or a vocabulary without toy concepts)
        unrelated = [c for c in concepts if not words & set(c.lower().split())]
    if not unrelated:
        raise AblationError(
            f"no control concept is unrelated to {label!r}; pass a longer --control-concepts "
            "vocabulary"
        )
    return random.Random(f"{seed}|{neuron}").choice(unrelated)


def mean_or_nan(values: np.ndarray) -> float:
    """The mean, NaN for no values."""
    return float(values.mean()) if values.size else float("nan")


async def _top_generated(
    client: InferenceClient, folder: RunFolder, neuron: CosyNeuron, generator: str | None, k: int
) -> tuple[list[str], float]:
    """The neuron's ``k`` most activating generated images (rendered again where the server lacks
    them: same ids) and the median activation of all its images."""
    record = folder.read_record(neuron.layer, neuron.unit)
    images: dict[str, tuple[float, str, int]] = {}
    for entry in record.entries if record else []:
        for image_id, value, prompt, seed in zip(
            entry.image_ids, entry.activations, entry.prompts, entry.seeds, strict=False
        ):
            images[image_id] = (float(value), prompt, int(seed))
    if not images:
        name = thread_id(neuron.layer, neuron.unit)
        raise AblationError(f"{name} has no generated images in its history")
    ranked = sorted(images, key=lambda key: -images[key][0])[:k]
    rendered = await client.generate_images(
        [images[key][1] for key in ranked],
        [images[key][2] for key in ranked],
        RenderOptions(generator=generator),
    )
    return [image.id for image in rendered], float(np.median([v for v, _, _ in images.values()]))


async def evaluate_ablation(
    folder: RunFolder,
    client: InferenceClient,
    control: ControlSet | None = None,
    top_k: int = DEFAULT_ABLATION_TOP_K,
    template: str = DEFAULT_ABLATION_TEMPLATE,
    *,
    editor: str | None = None,
    control_concepts: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    server_id: str | None = None,
    concurrency: int = 8,
    notes: Notes = lambda _text: None,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Ablate every labelled neuron of a run; its rows (:data:`ABLATION_COLUMNS`) and, per
    neuron (by ``agent.runner.thread_id``), the image pairs for the report."""
    if top_k < 1:
        raise AblationError(f"--top-k must be at least 1, got {top_k}")
    settings = folder.read_settings()
    neurons, skipped = cosy_neurons(folder)
    for text in skipped:
        notes(text)
    if not neurons:
        raise AblationError(
            f"{folder.path} has no labelled neuron to ablate; finish the run first "
            f"(line run --resume {folder.path})"
        )
    instruction_for(template, neurons[0].label)  # a bad template fails before any edit
    concepts = list(control_concepts or read_vocabulary(default_control_concepts(settings.target)))
    measured = None
    if control is not None:
        measured = await cached_control_activations(
            client, control, settings.target, settings.layer, cache_dir or folder.path / "control",
            server_id, settings.generator,
        )  # fmt: skip
        if top_k > len(measured.kept):
            notes(
                f"--top-k {top_k} is more than the {len(measured.kept)} usable control images; "
                f"using all {len(measured.kept)}"
            )
    limit = asyncio.Semaphore(concurrency)

    async def ablate(neuron: CosyNeuron) -> tuple[dict, list[dict]]:
        name = thread_id(neuron.layer, neuron.unit)
        async with limit:
            if measured is not None and control is not None:
                values = measured.unit(neuron.unit)
                rows = np.argsort(-values, kind="stable")[:top_k]
                chosen = ControlSet(
                    control.name, tuple(control.images[measured.kept[r]] for r in rows)
                )
                sources = await store_control_images(client, chosen, settings.generator)
                floor, origin = float(np.median(values)), "control"
            else:
                sources, floor = await _top_generated(
                    client, folder, neuron, settings.generator, top_k
                )
                origin = "generated"
            instruction = instruction_for(template, neuron.label)
            concept = control_concept(neuron.label, concepts, settings.seed, name)
            seeds = [settings.seed] * len(sources)
            edited, controlled = await asyncio.gather(
                client.edit_images(sources, instruction, seeds, editor=editor),
                client.edit_images(
                    sources, instruction_for(template, concept), seeds, editor=editor
                ),
            )
            ids = [*sources, *(e.id for e in edited), *(e.id for e in controlled)]
            result = await client.activations(
                settings.target, neuron.layer, ids, units=[neuron.unit]
            )
        k = len(sources)
        before, after, control_after = (result.values[i * k : (i + 1) * k, 0] for i in range(3))
        row = {
            "layer": neuron.layer,
            "unit": neuron.unit,
            "label": neuron.label,
            "k": k,
            "before": float(before.mean()),
            "after": float(after.mean()),
            "above": int((before > floor + 1e-9).sum()),
            "drop": mean_or_nan(normalised_drops(before, after, floor)),
            "fell": float((after < before).mean()),
            "control_concept": concept,
            "control_after": float(control_after.mean()),
            "control_drop": mean_or_nan(normalised_drops(before, control_after, floor)),
            "floor": floor,
            "source": origin,
            "instruction": instruction,
            "editor": editor or "",
        }
        pairs = [
            asdict(AblationPair(s, e.id, c.id, float(b), float(a), float(ca)))
            for s, e, c, b, a, ca in zip(
                sources, edited, controlled, before, after, control_after, strict=True
            )
        ]
        return row, pairs

    try:
        answers = await asyncio.gather(*(ablate(neuron) for neuron in neurons))
    except (LineServerError, ControlSetError) as error:
        raise AblationError(str(error)) from error
    rows = [row for row, _ in answers]
    pairs = {thread_id(row["layer"], row["unit"]): pair for row, pair in answers}
    return rows, pairs


def summarize_ablation(rows: Sequence[dict]) -> dict[str, float]:
    """Means over the neurons with a defined drop: drop, control drop and fell."""
    scored = [row for row in rows if not np.isnan(row["drop"])]
    return {
        "neurons": len(scored),
        "drop": float(np.mean([row["drop"] for row in scored])) if scored else float("nan"),
        "control_drop": float(np.nanmean([row["control_drop"] for row in scored]))
        if scored
        else float("nan"),
        "fell": float(np.mean([row["fell"] for row in scored])) if scored else float("nan"),
    }


def ablation_markdown(rows: Sequence[dict], template: str, editor: str) -> str:
    """The Markdown summary: what was done, the means, one line per neuron."""
    summary = summarize_ablation(rows)
    return (
        "# Concept ablation\n\n"
        f"Each neuron's top images were edited with `{template}` by `{editor}`; a random "
        "concept's edit of the same images is the control. Normalised drop: 1 = down to the "
        "neuron's typical level, 0 = unchanged.\n\n"
        f"- neurons with an image above its typical level: {summary['neurons']} of {len(rows)}\n"
        f"- mean drop: {summary['drop']:.3f} (control edit: {summary['control_drop']:.3f})\n"
        f"- images whose activation fell: {summary['fell']:.1%}\n\n"
        + markdown_table(rows, ABLATION_SUMMARY_COLUMNS, digits=3)
    )


def write_ablation(
    files: EvaluationFiles,
    rows: Sequence[dict],
    pairs: dict[str, list[dict]],
    template: str,
    editor: str,
) -> None:
    """``ablation.csv``, ``ablation.md`` and the pairs (``ablation.json``) into the run folder."""
    write_rows(files.csv, rows, ABLATION_COLUMNS)
    files.summary.write_text(ablation_markdown(rows, template, editor))
    files.details.write_text(json.dumps(pairs, indent=1))
