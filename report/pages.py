"""The report's pages: the index of neurons and one page per neuron.

This module works out what a page shows; the Jinja2 templates in ``templates/`` (autoescaped:
labels and LLM text are always escaped) draw it. Pages link a local stylesheet and script
(``assets/``) and thumbnails (``thumbs/``) by relative paths, so the folder opens from
``file://`` with no server and no network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from analysis.selectivity import NO_SELECTIVE_CONCEPT, SELECTIVE_AUC, WEAK_AUC, shown_label
from report.data import (
    STATUS_ORDER,
    CosyRow,
    EditView,
    EntryView,
    ImageView,
    NeuronView,
    RunView,
    normalise,
)
from report.plot import score_plot
from report.render import render

PAGE_SIZE = 50
"""Rows per page of the index."""
TOP_IMAGES = 12
"""Images in a neuron page's gallery of top activations."""
LLM_LOG_LIMIT = 200
"""LLM calls listed on a neuron page (the rest are counted)."""

SCORE_MEANINGS = {
    "mean": "the neuron's mean activation over the concept's generated images",
    "mad": "(mean activation on the concept's images − mean on control images) / std of control",
    "auc": "the probability that a concept image activates the neuron more than a control image",
}
MATCH_SORT_VALUES = {"yes": "1", "no": "0"}
"""Sort values of ground-truth verdicts in the index (others sort last)."""


@dataclass(frozen=True)
class StatCard:
    """One summary number of the index."""

    title: str
    value: str
    sub: str


@dataclass(frozen=True)
class Column:
    """A column of the index table; ``key`` is empty for a column that does not sort."""

    key: str
    kind: str
    name: str
    tip: str


@dataclass(frozen=True)
class IndexRow:
    """One neuron in the index table, with each cell's sort value (None: no sort value)."""

    neuron: NeuronView
    href: str
    unit_text: str
    label_text: str
    top_image: ImageView | None
    cosy: CosyRow | None
    verdict: str | None
    sort_values: dict[str, str | None]


@dataclass(frozen=True)
class ScoreboardRow:
    """A concept on the scoreboard: its best score and where that lies among the others."""

    rank: int
    entry: EntryView
    share: float
    is_label: bool


@dataclass(frozen=True)
class TimelineStep:
    """A step of the iteration timeline: a concept tried, or (``edit``) an ``edit_images``
    experiment of the agent."""

    entry: EntryView | None
    is_label: bool
    edit: EditView | None = None


def timeline_steps(neuron: NeuronView, label: str) -> list[TimelineStep]:
    """The concepts in the order tried, each edit experiment after the measurements it
    followed."""
    steps: list[TimelineStep] = []
    edits = list(neuron.edits)
    for entry in neuron.entries:
        while edits and edits[0].after_iteration < entry.iteration:
            steps.append(TimelineStep(None, False, edits.pop(0)))
        steps.append(TimelineStep(entry, normalise(entry.concept) == label))
    steps += [TimelineStep(None, False, edit) for edit in edits]
    return steps


@dataclass(frozen=True)
class LoggedCall:
    """One LLM exchange of the log: the last prompt message and the answer."""

    step: str
    attempt: str
    input_tokens: Any
    output_tokens: Any
    cached: bool
    prompt: str
    answer: str


def page_path(neuron: NeuronView) -> str:
    """A neuron page's path relative to the report folder (pages of neurons are siblings)."""
    return f"neurons/{neuron.slug}.html"


def units_text(units: Sequence[int]) -> str:
    """``0-27, 40 (29 units)``: ranges of consecutive units."""
    ordered = sorted(set(int(u) for u in units))
    if not ordered:
        return "none"
    spans: list[str] = []
    start = previous = ordered[0]
    for unit in [*ordered[1:], None]:
        if unit is not None and unit == previous + 1:
            previous = unit
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if unit is not None:
            start = previous = unit
    text = ", ".join(spans[:6]) + (", …" if len(spans) > 6 else "")
    return f"{text} ({len(ordered)} unit{'s' if len(ordered) != 1 else ''})"


def provenance(run: RunView) -> list[tuple[str, str]]:
    """The run's settings shown on every page, as (name, value) pairs."""
    config = run.config
    llm = str(config.get("llm") or "")
    if llm.startswith("offline:"):
        llm += " (not an LLM)"
    if config.get("llm_base_url"):
        llm += f" @ {config['llm_base_url']}"
    variant = str(config.get("prompts") or "paper")
    if config.get("variant_fingerprint"):
        variant += f" · {config['variant_fingerprint']}"
    items = [
        ("run", run.name),
        ("target", str(config.get("target"))),
        ("layer", str(config.get("layer"))),
        ("units", units_text(config.get("units") or [])),
        ("generator", str(config.get("generator") or "the server's default")),
        ("LLM", llm),
        ("variant", variant),
        ("score", run.score_kind),
        ("seed", str(config.get("seed", 0))),
    ]
    overrides = config.get("variant_overrides") or {}
    if overrides:
        items.append(("overrides", ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))))
    if config.get("control"):
        items.append(("control", str(config["control"])))
    if config.get("server"):
        items.append(("server", str(config["server"])))
    if config.get("created"):
        items.append(("created", str(config["created"])))
    return items


def frame_context(run: RunView, title: str, root: str, page: str) -> dict[str, Any]:
    """What the frame of every page (``layout.html.jinja``) shows."""
    return {
        "run": run,
        "title": title,
        "root": root,
        "page": page,
        "provenance": provenance(run),
        "built": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"),
        "score_meaning": SCORE_MEANINGS.get(run.score_kind, run.score_kind),
    }


def match_verdict(match: str | None) -> str | None:
    """``yes``, ``no`` or ``n/a`` (a unit with no concept) for a ground-truth match; None when
    the match is unknown."""
    if match in ("True", "true", "1"):
        return "yes"
    if match in ("False", "false", "0"):
        return "no"
    if match == "-":
        return "n/a"
    return None


def text_or_blank(value: Any) -> str:
    """A logged value as text; blank for none."""
    return "" if value is None else str(value)


def value_or_blank(value: float | None) -> str:
    """A sort value; blank sorts last."""
    return "" if value is None else repr(float(value))


def index_columns(run: RunView) -> list[Column]:
    """The index table's columns: CoSy and ground truth only where the run has them."""
    columns = [
        Column("unit", "num", "Unit", "unit index in the layer"),
        Column("", "", "Top image", "the image that activates the neuron most"),
        Column("label", "text", "Label", "the final label: the best-scoring concept"),
        Column("score", "num", "Score", SCORE_MEANINGS.get(run.score_kind, "")),
        Column(
            "status",
            "text",
            "Status",
            "done, dead (a basis unit that fires on no census image), failed, or unfinished "
            "(no history yet)",
        ),
    ]
    if run.has_cosy:
        columns += [
            Column("auc", "num", "CoSy AUC", "P(label image outranks a control image)"),
            Column("mad", "num", "CoSy MAD", "label images vs control, in control std"),
        ]
    if run.has_truth:
        columns += [
            Column("truth", "text", "Truth", "the planted concept (toy world)"),
            Column("match", "num", "Match", "the label names the planted concept"),
        ]
    columns += [
        Column(
            "groups", "num", "Groups", "high-scoring concept groups; 2+ suggests polysemanticity"
        ),
        Column("llm_calls", "num", "LLM calls", "LLM calls spent on the neuron"),
        Column("tokens", "num", "Tokens", "input + output tokens"),
    ]
    return columns


def index_row(run: RunView, neuron: NeuronView) -> IndexRow:
    """One neuron of the index table."""
    top = neuron.top_images(1)
    cosy = neuron.label_cosy
    verdict = match_verdict(neuron.match)
    groups = "" if neuron.groups is None else str(len(neuron.groups))
    return IndexRow(
        neuron=neuron,
        href=quote(page_path(neuron)),
        unit_text=(
            str(neuron.unit)
            if neuron.layer == run.config.get("layer")
            else f"{neuron.layer}/{neuron.unit}"
        ),
        label_text=shown_label(neuron.label, neuron.selective)
        or ("not finished" if neuron.status == "unfinished" else "no label"),
        top_image=top[0] if top else None,
        cosy=cosy,
        verdict=verdict,
        sort_values={
            "unit": str(neuron.unit),
            "": None,
            "label": normalise(shown_label(neuron.label, neuron.selective)),
            "score": value_or_blank(neuron.score),
            "status": neuron.status,
            "auc": value_or_blank(cosy.auc if cosy else None),
            "mad": value_or_blank(cosy.mad if cosy else None),
            "truth": normalise(neuron.truth),
            "match": MATCH_SORT_VALUES.get(verdict or "", ""),
            "groups": groups,
            "llm_calls": str(neuron.llm_calls),
            "tokens": str(neuron.tokens),
        },
    )


def stat_cards(run: RunView, counts: dict[str, int]) -> list[StatCard]:
    """The index's summary numbers."""
    neurons = run.neurons
    cards = [
        StatCard(
            "Neurons",
            f"{len(neurons)}",
            f"{counts['done']} done · "
            + (f"{counts['dead']} dead · " if counts.get("dead") else "")
            + f"{counts['failed']} failed · {counts['unfinished']} unfinished",
        )
    ]
    if run.has_truth:
        judged = [n for n in neurons if n.match in ("True", "False")]
        hits = sum(n.match == "True" for n in judged)
        cards.append(
            StatCard(
                "Ground truth", f"{hits} / {len(judged)}", "labels matching the planted concept"
            )
        )
    aucs = [c.auc for n in neurons if (c := n.label_cosy) and c.auc is not None]
    if aucs:
        cards.append(
            StatCard("CoSy AUC", f"{sum(aucs) / len(aucs):.3f}", f"mean over {len(aucs)} labels")
        )
    grouped = [n for n in neurons if n.groups is not None and n.has_page]
    if grouped:
        poly = sum(len(n.groups or []) >= 2 for n in grouped)
        cards.append(
            StatCard("Polysemantic", f"{poly}", "neurons with 2+ high-scoring concept groups")
        )
    calls = sum(n.llm_calls for n in neurons)
    tokens = sum(n.tokens for n in neurons)
    images = sum(int(n.counters.get("images", 0)) for n in neurons)
    cards.append(StatCard("LLM", f"{calls:,}", f"calls · {tokens:,} tokens"))
    cards.append(StatCard("Images", f"{images:,}", "generated and measured"))
    return cards


EVALUATION_ROWS = 200
"""Rows of an evaluation's table the index shows (the CSV has all)."""


def index_page(run: RunView, available: set[str], missing_images: int, store: str) -> str:
    """The index: summary cards and a sortable, filterable table of every neuron."""
    counts = {s: sum(n.status == s for n in run.neurons) for s in STATUS_ORDER}
    llm = str(run.config.get("llm") or "")
    return render(
        "index.html.jinja",
        **frame_context(run, f"LINE report · {run.name}", "", "index"),
        counts=counts,
        cards=stat_cards(run, counts),
        columns=index_columns(run),
        rows=[index_row(run, neuron) for neuron in run.neurons],
        available=available,
        missing_images=missing_images,
        store=store,
        proposer="an offline vocabulary, not an LLM" if llm.startswith("offline:") else llm,
        page_size=PAGE_SIZE,
        eval_rows=EVALUATION_ROWS,
    )


def scoreboard_rows(neuron: NeuronView) -> list[ScoreboardRow]:
    """Every concept by its best score, best first, each once."""
    best: dict[str, EntryView] = {}
    for entry in neuron.entries:
        if entry.score is None:
            continue
        key = normalise(entry.concept)
        if key not in best or entry.score > (best[key].score or 0):
            best[key] = entry
    ranked = sorted(best.values(), key=lambda e: -(e.score or 0))
    if not ranked:
        return []
    top = ranked[0].score or 0
    low = min(e.score or 0 for e in ranked)
    label = normalise(neuron.label)
    return [
        ScoreboardRow(
            rank=rank,
            entry=entry,
            share=((entry.score or 0) - low) / (top - low) if top > low else 1.0,
            is_label=normalise(entry.concept) == label,
        )
        for rank, entry in enumerate(ranked, 1)
    ]


def message_text(message: Any, limit: int = 4000) -> str:
    """A logged message's text (and tool calls), shortened."""
    if not isinstance(message, dict):
        return str(message)[:limit]
    content = message.get("content") or ""
    if isinstance(content, list):  # content blocks: text, and images shown to a vision LLM
        content = "\n".join(
            block.get("text", "") if block.get("type") == "text" else f"[{block.get('type')}]"
            for block in content
            if isinstance(block, dict)
        )
    text = str(content)
    calls = message.get("tool_calls") or []
    if calls:
        text += ("\n" if text else "") + "\n".join(
            f"→ {c.get('name')}({json.dumps(c.get('args'), ensure_ascii=False)})" for c in calls
        )
    return text if len(text) <= limit else text[:limit] + " …"


def logged_calls(neuron: NeuronView) -> list[LoggedCall]:
    """The first :data:`LLM_LOG_LIMIT` LLM exchanges of the neuron."""
    calls = []
    for call in neuron.llm_log[:LLM_LOG_LIMIT]:
        request = call.get("request") or []
        calls.append(
            LoggedCall(
                step=text_or_blank(call.get("step", "")),
                attempt=text_or_blank(call.get("attempt", 0)),
                input_tokens=call.get("input_tokens", 0),
                output_tokens=call.get("output_tokens", 0),
                cached=bool(call.get("cached")),
                prompt=message_text(request[-1]) if request else "",
                answer=message_text(call.get("response")),
            )
        )
    return calls


def neuron_page(
    run: RunView,
    neuron: NeuronView,
    available: set[str],
    previous: NeuronView | None,
    following: NeuronView | None,
) -> str:
    """One neuron's evidence: label, summary, plot, top images, groups, scoreboard, timeline."""
    acts = [i.activation for i in neuron.images() if i.activation is not None]
    low, high = (min(acts), max(acts)) if acts else (0.0, 1.0)
    title = f"{neuron.layer} · unit {neuron.unit}"
    label = normalise(neuron.label)
    return render(
        "neuron.html.jinja",
        **frame_context(run, f"{title} · {neuron.label or neuron.status} · LINE", "../", "neuron"),
        neuron=neuron,
        heading=title,
        previous=previous,
        following=following,
        available=available,
        low=low,
        high=high,
        cosy=neuron.label_cosy,
        verdict=match_verdict(neuron.match),
        summary_differs=bool(
            neuron.label and neuron.summary_concept and normalise(neuron.summary_concept) != label
        ),
        plot=Markup(score_plot(neuron.entries, neuron.label)),  # an autoescaped template's SVG
        top_images=neuron.top_images(TOP_IMAGES),
        scoreboard=scoreboard_rows(neuron),
        timeline=timeline_steps(neuron, label),
        calls=logged_calls(neuron),
        more_calls=len(neuron.llm_log) - LLM_LOG_LIMIT,
        no_selective_concept=NO_SELECTIVE_CONCEPT,
        selective_auc=SELECTIVE_AUC,
        weak_auc=WEAK_AUC,
    )
