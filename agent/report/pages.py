"""HTML of the report: the index of neurons and one page per neuron.

Pages are plain HTML with every value escaped; they link a local stylesheet and script
(``assets/``) and thumbnails (``thumbs/``) by relative paths, so the folder opens from
``file://`` with no server and no network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from agent.report.data import EntryView, ImageView, NeuronView, RunView, normalise
from agent.report.plot import format_number, score_plot
from agent.report.thumbs import thumbnail_path

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


def h(value: Any) -> str:
    """Escape text for HTML content and attributes."""
    return escape("" if value is None else str(value), quote=True)


def page_href(neuron: NeuronView) -> str:
    """A neuron page's path relative to the report folder."""
    return f"neurons/{quote(neuron.slug)}.html"


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


def layout(run: RunView, title: str, body: str, root: str, page: str) -> str:
    """The frame of every page: header, provenance strip, body, footer."""
    chips = "".join(
        f'<span class="chip"><span class="k">{h(k)}</span> <span class="v">{h(v)}</span></span>'
        for k, v in provenance(run)
    )
    built = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    meaning = SCORE_MEANINGS.get(run.score_kind, run.score_kind)
    return f"""<!doctype html>
<html lang="en" data-live="0" data-page="{h(page)}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}assets/report.css">
</head>
<body>
<header class="topbar">
<a class="brand" href="{root}index.html">LINE</a>
<span class="bar-title">neuron explanations · {h(run.name)}</span>
<span class="live" id="live" hidden></span>
</header>
<div class="provenance" aria-label="run settings">{chips}</div>
<main>
{body}
</main>
<footer>
Report built {h(built)} from <code>{h(run.path.resolve())}</code>.
Score: {h(meaning)}. Labels, scores and images come from the run folder alone.
</footer>
<script src="{root}assets/report.js"></script>
</body>
</html>
"""


def status_badge(status: str) -> str:
    """A coloured status label."""
    return f'<span class="badge status-{h(status)}">{h(status)}</span>'


def match_cell(match: str | None) -> tuple[str, str]:
    """(display, sort value) of a ground-truth match."""
    if match in ("True", "true", "1"):
        return '<span class="yes" title="label matches the planted concept">✓ yes</span>', "1"
    if match in ("False", "false", "0"):
        return '<span class="no" title="label differs from the planted concept">✗ no</span>', "0"
    if match == "-":
        return '<span class="muted" title="a unit with no concept">n/a</span>', ""
    return '<span class="muted">–</span>', ""


def image_tag(image: ImageView | None, available: set[str], root: str, css: str = "") -> str:
    """An ``<img>`` of a thumbnail (lazy), or a placeholder when the image is missing."""
    if image is None:
        return f'<span class="noimg {css}">no image</span>'
    tip = f"{image.concept} · activation {format_number(image.activation)}"
    if image.prompt:
        tip += f"\n{image.prompt}"
    if image.seed is not None:
        tip += f"\nseed {image.seed}"
    if image.image_id not in available:
        return f'<span class="noimg {css}" title="{h(tip)}">image not in store</span>'
    return (
        f'<img class="{css}" src="{root}{thumbnail_path(image.image_id)}" loading="lazy" '
        f'alt="{h(image.concept)}" title="{h(tip)}">'
    )


def index_page(run: RunView, available: set[str], missing_images: int, store: str) -> str:
    """The index: summary cards and a sortable, filterable table of every neuron."""
    neurons = run.neurons
    counts = {s: sum(n.status == s for n in neurons) for s in ("done", "failed", "unfinished")}
    cards = [
        stat_card(
            "Neurons",
            f"{len(neurons)}",
            f"{counts['done']} done · {counts['failed']} failed · "
            f"{counts['unfinished']} unfinished",
        )
    ]
    if run.has_truth:
        judged = [n for n in neurons if n.match in ("True", "False")]
        hits = sum(n.match == "True" for n in judged)
        cards.append(
            stat_card(
                "Ground truth",
                f"{hits} / {len(judged)}",
                "labels matching the planted concept",
            )
        )
    aucs = [c.auc for n in neurons if (c := n.label_cosy) and c.auc is not None]
    if aucs:
        cards.append(
            stat_card("CoSy AUC", f"{sum(aucs) / len(aucs):.3f}", f"mean over {len(aucs)} labels")
        )
    grouped = [n for n in neurons if n.groups is not None and n.has_page]
    if grouped:
        poly = sum(len(n.groups or []) >= 2 for n in grouped)
        cards.append(
            stat_card("Polysemantic", f"{poly}", "neurons with 2+ high-scoring concept groups")
        )
    calls = sum(n.llm_calls for n in neurons)
    tokens = sum(n.tokens for n in neurons)
    images = sum(int(n.counters.get("images", 0)) for n in neurons)
    cards.append(stat_card("LLM", f"{calls:,}", f"calls · {tokens:,} tokens"))
    cards.append(stat_card("Images", f"{images:,}", "generated and measured"))

    columns: list[tuple[str, str, str, str]] = [
        ("unit", "num", "Unit", "unit index in the layer"),
        ("", "", "Top image", "the image that activates the neuron most"),
        ("label", "text", "Label", "the final label: the best-scoring concept"),
        ("score", "num", "Score", SCORE_MEANINGS.get(run.score_kind, "")),
        ("status", "text", "Status", "done, failed, or unfinished (no history yet)"),
    ]
    if run.has_cosy:
        columns += [
            ("auc", "num", "CoSy AUC", "P(label image outranks a control image)"),
            ("mad", "num", "CoSy MAD", "label images vs control, in control std"),
        ]
    if run.has_truth:
        columns += [
            ("truth", "text", "Truth", "the planted concept (toy world)"),
            ("match", "num", "Match", "the label names the planted concept"),
        ]
    columns += [
        ("groups", "num", "Groups", "high-scoring concept groups; 2+ suggests polysemanticity"),
        ("llm_calls", "num", "LLM calls", "LLM calls spent on the neuron"),
        ("tokens", "num", "Tokens", "input + output tokens"),
    ]
    head = "".join(
        f'<th data-key="{key}" data-type="{kind}" title="{h(tip)}" aria-sort="none">'
        f'<button type="button">{h(name)}</button></th>'
        if key
        else f'<th title="{h(tip)}">{h(name)}</th>'
        for key, kind, name, tip in columns
    )
    rows = "\n".join(index_row(run, n, available, columns) for n in neurons)
    statuses = "".join(
        f'<option value="{s}">{s} ({counts[s]})</option>' for s in counts if counts[s]
    )
    note = ""
    if missing_images:
        note = (
            f'<p class="note warn">{missing_images:,} image(s) were not found in the image store '
            f"<code>{h(store)}</code>; they show as placeholders. Rebuild with "
            "<code>line report RUN_DIR --store FOLDER</code> naming the store the run used.</p>"
        )
    if counts["unfinished"]:
        note += (
            f'<p class="note">{counts["unfinished"]} neuron(s) have not finished: the run is '
            "still going, or was interrupted (continue it with "
            "<code>line run --resume RUN_DIR</code>).</p>"
        )
    llm = str(run.config.get("llm") or "")
    proposer = "an offline vocabulary, not an LLM" if llm.startswith("offline:") else llm
    body = f"""<h1 class="page-title">Neurons of {h(run.config.get("target"))} ·
layer {h(run.config.get("layer"))}</h1>
<p class="intro muted">Each neuron was explained by a loop: a proposer (here {h(proposer)})
suggests a concept, images of it are rendered, and the neuron's activation on them gives the
concept a score. After the last iteration, the best-scoring concept of the whole history is
the neuron's label. Open a label to see the evidence.</p>
<section class="cards">{"".join(cards)}</section>
{note}
<section class="card table-card">
<div class="toolbar">
<input id="filter" type="search" placeholder="Filter by label…" aria-label="filter by label">
<select id="status-filter" aria-label="filter by status"><option value="">all statuses</option>
{statuses}</select>
<span id="shown" class="muted"></span>
<span class="pager"><button type="button" id="prev" aria-label="previous page">‹ prev</button>
<span id="page-info"></span>
<button type="button" id="next" aria-label="next page">next ›</button></span>
</div>
<div class="table-wrap">
<table id="neurons" class="neurons" data-page-size="{PAGE_SIZE}">
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</div>
<p class="muted help">Click a column to sort (again to reverse). Open a label for the neuron's
evidence: its scoreboard, every concept with its images, the score plot and the concept
groups.</p>
</section>"""
    return layout(run, f"LINE report · {run.name}", body, "", "index")


def stat_card(title: str, value: str, sub: str) -> str:
    """One summary number."""
    return (
        f'<div class="card stat"><div class="stat-k">{h(title)}</div>'
        f'<div class="stat-v">{h(value)}</div><div class="stat-sub">{h(sub)}</div></div>'
    )


def index_row(
    run: RunView, neuron: NeuronView, available: set[str], columns: list[tuple[str, ...]]
) -> str:
    """One table row; cells carry their sort value in ``data-v``."""
    top = neuron.top_images(1)
    label = neuron.label or ("not finished" if neuron.status == "unfinished" else "no label")
    if neuron.has_page:
        label_html = f'<a href="{page_href(neuron)}">{h(label)}</a>'
    else:
        label_html = f'<span class="muted">{h(label)}</span>'
    if neuron.status == "failed" and neuron.reason:
        label_html += f'<div class="reason" title="{h(neuron.reason)}">{h(neuron.reason)}</div>'
    cosy = neuron.label_cosy
    match_html, match_value = match_cell(neuron.match)
    groups = "" if neuron.groups is None else len(neuron.groups)
    unit_text = (
        str(neuron.unit)
        if neuron.layer == run.config.get("layer")
        else f"{neuron.layer}/{neuron.unit}"
    )
    cells = {
        "unit": (h(unit_text), str(neuron.unit)),
        "": (image_tag(top[0] if top else None, available, "", "row-thumb"), None),
        "label": (label_html, normalise(neuron.label)),
        "score": (format_number(neuron.score), value_or_blank(neuron.score)),
        "status": (status_badge(neuron.status), neuron.status),
        "auc": (format_number(cosy.auc if cosy else None), value_or_blank(cosy and cosy.auc)),
        "mad": (format_number(cosy.mad if cosy else None), value_or_blank(cosy and cosy.mad)),
        "truth": (h(neuron.truth or "–"), normalise(neuron.truth)),
        "match": (match_html, match_value),
        "groups": (h(groups) if groups != "" else '<span class="muted">–</span>', str(groups)),
        "llm_calls": (f"{neuron.llm_calls:,}", str(neuron.llm_calls)),
        "tokens": (f"{neuron.tokens:,}", str(neuron.tokens)),
    }
    tds = []
    for key, kind, *_ in columns:
        html_, value = cells[key]
        css = f' class="{kind}"' if kind == "num" else ""
        data = f' data-v="{h(value)}"' if value is not None else ""
        tds.append(f"<td{css}{data}>{html_}</td>")
    return (
        f'<tr data-status="{h(neuron.status)}" data-label="{h(normalise(neuron.label))}">'
        + "".join(tds)
        + "</tr>"
    )


def value_or_blank(value: float | None) -> str:
    """A sort value; blank sorts last."""
    return "" if value is None else repr(float(value))


def neuron_page(
    run: RunView,
    neuron: NeuronView,
    available: set[str],
    previous: NeuronView | None,
    following: NeuronView | None,
) -> str:
    """One neuron's evidence: label, summary, plot, top images, groups, scoreboard, timeline."""
    root = "../"
    acts = [i.activation for i in neuron.images() if i.activation is not None]
    low, high = (min(acts), max(acts)) if acts else (0.0, 1.0)
    title = f"{neuron.layer} · unit {neuron.unit}"
    nav = '<nav class="crumbs"><a href="../index.html">← all neurons</a>'
    nav += f'<span class="here">{h(title)}</span><span class="pn">'
    if previous is not None:
        nav += f'<a id="prev-neuron" href="{quote(previous.slug)}.html">‹ unit {previous.unit}</a>'
    if following is not None:
        nav += (
            f'<a id="next-neuron" href="{quote(following.slug)}.html">unit {following.unit} ›</a>'
        )
    nav += "</span></nav>"
    body = (
        nav
        + hero(run, neuron)
        + top_images_section(neuron, available, root, low, high)
        + '<div class="two">'
        + groups_section(neuron)
        + scoreboard_section(neuron)
        + "</div>"
        + timeline_section(neuron, available, root, low, high)
        + llm_log_section(neuron)
    )
    return layout(run, f"{title} · {neuron.label or neuron.status} · LINE", body, root, "neuron")


def hero(run: RunView, neuron: NeuronView) -> str:
    """Label, score, summary, counters and the score plot."""
    facts = [f"score <b>{format_number(neuron.score)}</b> ({h(run.score_kind)})"]
    if neuron.label_source:
        facts.append(f"found by <b>{h(neuron.label_source)}</b>")
    cosy = neuron.label_cosy
    if cosy is not None:
        facts.append(
            f"CoSy AUC <b>{format_number(cosy.auc)}</b> · MAD <b>{format_number(cosy.mad)}</b>"
        )
    if neuron.truth is not None:
        match_html, _ = match_cell(neuron.match)
        facts.append(f"planted concept <b>{h(neuron.truth)}</b> {match_html}")
    if neuron.groups is not None:
        facts.append(f"<b>{len(neuron.groups)}</b> high-scoring concept group(s)")
    counters = neuron.counters
    spent = [
        f"{neuron.llm_calls:,} LLM calls",
        f"{int(counters.get('input_tokens', 0)):,} in / "
        f"{int(counters.get('output_tokens', 0)):,} out tokens",
        f"{int(counters.get('images', 0)):,} images",
        f"{len(neuron.entries)} concepts",
        f"{int(counters.get('reasks', 0))} re-asks",
        f"{neuron.faults} faults",
    ]
    summary = ""
    if neuron.summary_text:
        summary = (
            f'<blockquote class="summary"><div class="q-k">LLM summary</div>'
            f"{h(neuron.summary_text)}</blockquote>"
        )
    if (
        neuron.label
        and neuron.summary_concept
        and normalise(neuron.summary_concept) != normalise(neuron.label)
    ):
        summary += (
            f'<p class="muted">The summary step named “{h(neuron.summary_concept)}”; a concept '
            "that scored higher became the label.</p>"
        )
    if neuron.seed_concepts:
        summary += (
            '<p class="muted">Seeded with: '
            + ", ".join(h(c) for c in neuron.seed_concepts)
            + "</p>"
        )
    reason = ""
    if neuron.status == "failed":
        reason = (
            f'<p class="note error">This neuron failed: {h(neuron.reason or "no reason given")}. '
            "Retry it with <code>line run --resume RUN_DIR</code>.</p>"
        )
    label = neuron.label or "no label"
    return f"""<section class="card hero">
<div class="hero-main">
<div class="eyebrow">{h(neuron.layer)} · unit {neuron.unit} {status_badge(neuron.status)}</div>
<h1 class="label">{h(label)}</h1>
{reason}
<ul class="facts">{"".join(f"<li>{f}</li>" for f in facts)}</ul>
{summary}
<ul class="spent">{"".join(f"<li>{h(s)}</li>" for s in spent)}</ul>
</div>
<figure class="plot">
{score_plot(neuron.entries, neuron.label)}
<figcaption>Each concept's score (dots; filled when it beat every earlier one) and the best
score so far (line), by iteration. The ring marks the final label.</figcaption>
</figure>
</section>
"""


def activation_caption(value: float | None, low: float, high: float) -> str:
    """An activation with a bar showing where it lies in the neuron's range."""
    share = 0.0
    if value is not None and high > low:
        share = (value - low) / (high - low)
    return f'<span class="act" style="--a:{share:.3f}">{format_number(value)}</span>'


def top_images_section(
    neuron: NeuronView, available: set[str], root: str, low: float, high: float
) -> str:
    """The images that activate the neuron most."""
    images = neuron.top_images(TOP_IMAGES)
    if not images:
        return ""
    figures = "".join(
        f'<figure class="top">{image_tag(image, available, root, "big")}'
        f'<figcaption><span class="concept">{h(image.concept)}</span>'
        f"{activation_caption(image.activation, low, high)}</figcaption></figure>"
        for image in images
    )
    return (
        '<section class="card"><h2>Top activating images</h2>'
        '<p class="muted">The synthetic images that drove the neuron hardest, with the concept '
        "they were rendered for and the activation.</p>"
        f'<div class="gallery" id="top-images">{figures}</div></section>'
    )


def groups_section(neuron: NeuronView) -> str:
    """Polysemanticity: the high-scoring concepts grouped by meaning."""
    if neuron.groups is None:
        text = neuron.groups_note or "concepts were not grouped"
        body = f'<p class="muted">{h(text)}</p>'
        title = "Concept groups"
    else:
        count = len(neuron.groups)
        title = f"Concept groups · {count}"
        if count == 0:
            body = '<p class="muted">No concept stands out: every score is alike.</p>'
        else:
            verdict = (
                "Several distinct meanings score high: the neuron may be polysemantic."
                if count > 1
                else "The high-scoring concepts share one meaning."
            )
            items = []
            for number, group in enumerate(neuron.groups, 1):
                members = "".join(
                    f'<li><span class="concept">{h(c)}</span>'
                    f'<span class="num">{format_number(s)}</span></li>'
                    for c, s in zip(group.concepts, group.scores, strict=True)
                )
                items.append(
                    f'<div class="group"><div class="group-head">group {number}: '
                    f"<b>{h(group.best_concept)}</b></div><ul>{members}</ul></div>"
                )
            body = f'<p class="muted">{verdict}</p>' + "".join(items)
    return f'<section class="card" id="groups"><h2>{h(title)}</h2>{body}</section>'


def scoreboard_section(neuron: NeuronView) -> str:
    """Every concept by score, best first, each once."""
    best: dict[str, EntryView] = {}
    for entry in neuron.entries:
        if entry.score is None:
            continue
        key = normalise(entry.concept)
        if key not in best or entry.score > (best[key].score or 0):
            best[key] = entry
    ranked = sorted(best.values(), key=lambda e: -(e.score or 0))
    if not ranked:
        return '<section class="card"><h2>Scoreboard</h2><p class="muted">empty</p></section>'
    top = ranked[0].score or 0
    low = min(e.score or 0 for e in ranked)
    rows = []
    for rank, entry in enumerate(ranked, 1):
        share = (entry.score - low) / (top - low) if top > low else 1.0
        is_label = normalise(entry.concept) == normalise(neuron.label)
        css = ' class="is-label"' if is_label else ""
        rows.append(
            f'<tr{css}><td class="num">{rank}</td><td>{h(entry.concept)}</td>'
            f'<td class="num bar" style="--a:{share:.3f}">{format_number(entry.score)}</td>'
            f'<td class="num">{entry.iteration}</td><td>{h(entry.source)}</td></tr>'
        )
    return (
        '<section class="card" id="scoreboard"><h2>Scoreboard</h2>'
        '<div class="scoreboard-wrap"><table class="scoreboard"><thead><tr><th>#</th>'
        "<th>concept</th><th>score</th>"
        "<th>iter.</th><th>source</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div></section>"
    )


def timeline_section(
    neuron: NeuronView, available: set[str], root: str, low: float, high: float
) -> str:
    """Every concept in the order tried, with its images and their activations."""
    if not neuron.entries:
        return (
            '<section class="card"><h2>Iteration timeline</h2>'
            '<p class="muted">No concept was tried.</p></section>'
        )
    steps = []
    for entry in neuron.entries:
        flag = '<span class="badge new-best">new best</span>' if entry.new_best else ""
        label = ""
        if normalise(entry.concept) == normalise(neuron.label):
            label = '<span class="badge is-label">label</span>'
        thumbs = "".join(
            f'<figure class="thumb">{image_tag(image, available, root)}'
            f"<figcaption>{activation_caption(image.activation, low, high)}</figcaption></figure>"
            for image in entry.images
        )
        steps.append(
            f'<li class="step"><div class="step-head"><span class="it">{entry.iteration}</span>'
            f'<span class="badge source">{h(entry.source)}</span>'
            f'<span class="concept">{h(entry.concept)}</span>'
            f'<span class="num score">{format_number(entry.score)}</span>{flag}{label}'
            f'<span class="muted best-so-far">best so far {format_number(entry.best_so_far)}'
            f'</span></div><div class="thumbs">{thumbs}</div></li>'
        )
    return (
        '<section class="card" id="timeline"><h2>Iteration timeline</h2>'
        '<p class="muted">Each concept in the order it was tried: its score, and every image '
        "rendered for it with the neuron's activation (hover an image for its prompt and seed)."
        f'</p><ol class="timeline">{"".join(steps)}</ol></section>'
    )


def message_text(message: Any, limit: int = 4000) -> str:
    """A logged message's text (and tool calls), shortened."""
    if not isinstance(message, dict):
        return str(message)[:limit]
    text = str(message.get("content") or "")
    calls = message.get("tool_calls") or []
    if calls:
        text += ("\n" if text else "") + "\n".join(
            f"→ {c.get('name')}({json.dumps(c.get('args'), ensure_ascii=False)})" for c in calls
        )
    return text if len(text) <= limit else text[:limit] + " …"


def llm_log_section(neuron: NeuronView) -> str:
    """Every LLM exchange: the last prompt message and the answer, folded away."""
    if not neuron.llm_log:
        return ""
    items = []
    for call in neuron.llm_log[:LLM_LOG_LIMIT]:
        request = call.get("request") or []
        prompt = message_text(request[-1]) if request else ""
        tokens = f"{call.get('input_tokens', 0)} in / {call.get('output_tokens', 0)} out tokens"
        cached = " · cached" if call.get("cached") else ""
        items.append(
            f'<li><div class="call-head"><span class="badge source">{h(call.get("step", ""))}'
            f"</span> attempt {h(call.get('attempt', 0))} · {h(tokens)}{cached}</div>"
            f"<details><summary>prompt</summary><pre>{h(prompt)}</pre></details>"
            f'<pre class="answer">{h(message_text(call.get("response")))}</pre></li>'
        )
    more = len(neuron.llm_log) - LLM_LOG_LIMIT
    extra = f'<p class="muted">… and {more} more calls in the history file.</p>' if more > 0 else ""
    return (
        f'<section class="card" id="llm-log"><details><summary><h2>LLM log · '
        f"{len(neuron.llm_log)} calls</h2></summary>"
        f'<ol class="calls">{"".join(items)}</ol>{extra}</details></section>'
    )
