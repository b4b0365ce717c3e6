"""The offline vocabulary proposer: a deterministic, non-LLM stand-in for the chat model.

``OfflineVocabProposer`` speaks LangChain's chat-model interface (``bind_tools``, tool calls,
``usage_metadata``) so the agent graph runs unchanged without any LLM: for demos, baselines and
tests. It reads the conversation the graph sends (``concept: score`` and ``- concept`` lines,
earlier tool calls and tool results) and answers with the next concept of a vocabulary file:
untried single entries first, in file order, then hypotheses built from the singles' scores:
combinations of two promising entries ("blue triangle", "stars or crosses"), then the best
entry with partners of other categories ("red circle", "dotted heart"), then everything else
(remaining combinations, variations that change the scene: "large red", "red on a white
background"). It spends no round on a rephrasing that cannot change what is rendered ("red
close-up", "a photo of red"): re-measuring a concept on fresh images is the confirmation's job.

The decision logic (:class:`VocabProposer`) works on a neutral transcript, so the scripted
OpenAI-compatible test server (:mod:`testing.scripted_llm`) reuses it on wire-format messages.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from tools.agent_tools import (
    EDIT_IMAGES,
    GENERATE_IMAGES,
    MEASURE_ACTIVATION,
    PROPOSE_CONCEPT,
    READ_SCOREBOARD,
    SUBMIT_EXPLANATION,
)
from tools.scoreboard import (
    MAX_CONCEPT_CHARS,
    MAX_CONCEPT_WORDS,
    SCORE_LINE,
    TRIED_LINE,
    normalise_concept,
)
from toyworld.vocabulary import parse_scene_text, tokenize

DEFAULT_VOCABULARY_PATH = Path(__file__).parent / "vocab" / "toyworld.txt"
NOT_AN_LLM = "offline:vocab (not an LLM)"

PROPOSE_TOOL = PROPOSE_CONCEPT.name
SUBMIT_TOOL = SUBMIT_EXPLANATION.name
GENERATE_TOOL = GENERATE_IMAGES.name
MEASURE_TOOL = MEASURE_ACTIVATION.name
READ_SCOREBOARD_TOOL = READ_SCOREBOARD.name
EDIT_TOOL = EDIT_IMAGES.name
CONCEPT_TOOLS = frozenset({PROPOSE_TOOL, SUBMIT_TOOL, GENERATE_TOOL, MEASURE_TOOL})

CATEGORIES = ("colour", "shape", "texture", "size", "other")
_VARIATIONS = (
    "{c} on a white background",
    "{c} on a black background",
    "a single {c}",
    "many {plural}",
    "large {c}",
    "small {c}",
)
EDIT_AFTER_CONCEPTS = 6
"""Where ``edit_images`` is offered, the proposer calls it once, after this many concepts are
scored: it edits the best concept out of the unit's top images (the drop is evidence in the
conversation; its own choices still follow the scores)."""
EDIT_TOP_K = 4
PROMISING_FRACTION = 0.5
"""An entry is promising when it scores at least this fraction of the best entry (and > 0)."""
_PARTNER_CATEGORIES = {
    "colour": ("shape", "texture"),
    "texture": ("shape", "colour"),
    "shape": ("texture", "colour"),
}
"""Which categories can refine an entry, in the order tried when scores do not tell: a colour
or texture wants a noun (a shape) first; a shape tries the three textures before ten colours."""


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class VocabEntry:
    """One vocabulary concept and its category (colour, shape, texture, size or other)."""

    concept: str
    category: str


def infer_category(concept: str) -> str:
    """The toy-world category of a concept when every word of it is a known attribute word.

    ``"red"`` is a colour, ``"many small objects"`` a size; anything with a word the toy
    vocabulary does not know (``"red fruit"``) is ``"other"``.
    """

    words = tokenize(concept)
    spec = parse_scene_text(concept)
    understood = {word for phrase in spec.understood for word in phrase.split()}
    if not words or any(word not in understood for word in words):
        return "other"
    if spec.background is not None or len(spec.groups) != 1:
        return "other"
    group = spec.groups[0]
    kinds = [
        kind
        for kind, present in (
            ("colour", group.colours),
            ("shape", group.shapes),
            ("texture", group.textures),
            ("size", group.size or group.count),
        )
        if present
    ]
    return kinds[0] if len(kinds) == 1 else "other"


@dataclass(frozen=True)
class Vocabulary:
    """Ordered concepts to try, from a text file (one per line, ``#`` comments)."""

    entries: tuple[VocabEntry, ...]
    source: str = "<text>"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> Vocabulary:
        """Parse vocabulary text; blank lines and ``#`` comments are skipped, repeats dropped."""
        concepts: dict[str, None] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            concept = normalise_concept(line)
            if len(concept) > MAX_CONCEPT_CHARS or len(concept.split()) > MAX_CONCEPT_WORDS:
                raise ValueError(
                    f"{source}:{number}: '{line[:60]}' is too long for a concept; keep entries to "
                    f"at most {MAX_CONCEPT_WORDS} words and {MAX_CONCEPT_CHARS} characters"
                )
            concepts.setdefault(concept, None)
        if not concepts:
            raise ValueError(
                f"the vocabulary {source} lists no concept; write one concept per line "
                "(lines starting with '#' are comments)"
            )
        entries = tuple(VocabEntry(concept, infer_category(concept)) for concept in concepts)
        return cls(entries, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """Load a vocabulary file; the error says which file is missing or empty."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(
                f"cannot read the vocabulary file {path} ({error.strerror or error}); give the "
                "path of a text file with one concept per line, or use offline:vocab for the "
                "built-in toy-world vocabulary"
            ) from error
        return cls.from_text(text, source=str(path))

    @classmethod
    def default(cls) -> Vocabulary:
        """The built-in toy-world vocabulary (``agent/vocab/toyworld.txt``)."""
        return cls.from_file(DEFAULT_VOCABULARY_PATH)

    def concepts(self) -> list[str]:
        """The concepts in file order."""
        return [entry.concept for entry in self.entries]


# --------------------------------------------------------------------------- transcript


@dataclass(frozen=True)
class ToolCallRecord:
    """A tool call an assistant turn made."""

    name: str
    args: Mapping[str, Any]
    id: str = ""


@dataclass(frozen=True)
class TranscriptMessage:
    """A chat message in a form both LangChain and OpenAI wire messages convert to."""

    role: str  # "system", "user", "assistant", "tool"
    text: str = ""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None


def content_text(content: Any) -> str:
    """Plain text of message content given as a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "\n".join(parts)
    return "" if content is None else str(content)


def transcript_from_langchain(messages: Sequence[BaseMessage]) -> list[TranscriptMessage]:
    """Convert LangChain messages to the neutral transcript."""
    roles = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
    out = []
    for message in messages:
        role = roles.get(message.type, "user")
        calls: tuple[ToolCallRecord, ...] = ()
        if isinstance(message, AIMessage):
            calls = tuple(
                ToolCallRecord(call["name"], call.get("args") or {}, call.get("id") or "")
                for call in message.tool_calls
            )
        out.append(
            TranscriptMessage(
                role=role,
                text=content_text(message.content),
                tool_calls=calls,
                tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
                tool_name=message.name if isinstance(message, ToolMessage) else None,
            )
        )
    return out


# --------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """What a conversation says about the neuron: scores, tried concepts, pending measurements."""

    scores: dict[str, float] = field(default_factory=dict)
    tried: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)
    edits: int = 0
    """``edit_images`` calls made so far."""

    def add_tried(self, concept: str) -> None:
        """Record a concept as tried (normalised, once)."""
        concept = normalise_concept(concept)
        if concept and concept not in self.tried:
            self.tried.append(concept)

    def pending(self) -> list[str]:
        """Concepts whose images were generated but not measured yet, in order."""
        return [concept for concept in self.generated if concept not in self.measured]

    def ranked(self) -> list[tuple[str, float]]:
        """Scored concepts, best first; ties keep the earlier one first."""
        return sorted(self.scores.items(), key=lambda item: -item[1])


def _score_lines(text: str, first_only: bool) -> list[tuple[str, float]]:
    """``concept: score`` pairs of a text.

    Only scores written with a decimal point or exponent count (as ``format_score_lines``
    writes them), so prompt lines such as ``budget: 10`` are not read as scores.
    """
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        match = SCORE_LINE.match(line)
        if match and any(mark in match["score"] for mark in ".eE"):
            concept = normalise_concept(match["concept"])
            if concept and len(concept.split()) <= MAX_CONCEPT_WORDS:
                out.append((concept, float(match["score"])))
        if first_only:
            break
    return out


def read_evidence(transcript: Sequence[TranscriptMessage]) -> Evidence:
    """Scores and tried concepts from prompts, tool calls and tool results of a conversation."""
    evidence = Evidence()
    call_names: dict[str, str] = {}
    for message in transcript:
        if message.role in ("system", "user"):
            for concept, score in _score_lines(message.text, first_only=False):
                evidence.scores[concept] = score
            for line in message.text.splitlines():
                if match := TRIED_LINE.match(line):
                    concept = normalise_concept(match["concept"])
                    if len(concept.split()) <= MAX_CONCEPT_WORDS:
                        evidence.add_tried(concept)
        elif message.role == "assistant":
            for call in message.tool_calls:
                call_names[call.id] = call.name
                evidence.edits += call.name == EDIT_TOOL
                argument = call.args.get("concept") if isinstance(call.args, Mapping) else None
                if call.name not in CONCEPT_TOOLS or not isinstance(argument, str):
                    continue
                concept = normalise_concept(argument)
                evidence.add_tried(concept)
                if call.name == GENERATE_TOOL and concept not in evidence.generated:
                    evidence.generated.append(concept)
                if call.name == MEASURE_TOOL and concept not in evidence.measured:
                    evidence.measured.append(concept)
        elif message.role == "tool":
            name = message.tool_name or call_names.get(message.tool_call_id or "")
            if name in (GENERATE_TOOL, EDIT_TOOL):
                continue
            first_only = name != READ_SCOREBOARD_TOOL
            for concept, score in _score_lines(message.text, first_only=first_only):
                evidence.scores[concept] = score
    for concept in evidence.scores:
        evidence.add_tried(concept)
    return evidence


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """One answer: a tool call (``tool`` set) or a plain-text concept (``tool`` is None)."""

    tool: str | None
    args: dict[str, Any]
    note: str


def _plural(shape: str) -> str:
    if shape in ("objects", "shapes", "things"):  # already plural
        return shape
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def combine(first: VocabEntry, second: VocabEntry) -> str:
    """A phrase for two vocabulary entries (``first`` scored higher).

    Same category, plural so a scene can hold both: "stars or crosses", "pink or orange
    objects"; colour + shape: "blue triangle"; texture + shape: "striped square"; texture +
    colour: "striped red objects"; size phrase + colour, texture or shape: "many small red
    objects", "large striped objects", "large triangles"; else "a and b".
    """
    by_category = {first.category: first.concept, second.category: second.concept}
    if first.category == second.category:
        if first.category == "shape":
            return f"{_plural(first.concept)} or {_plural(second.concept)}"
        if first.category in ("colour", "texture"):
            return f"{first.concept} or {second.concept} objects"
        return f"{first.concept} or {second.concept}"
    if set(by_category) == {"colour", "shape"}:
        return f"{by_category['colour']} {by_category['shape']}"
    if set(by_category) == {"texture", "shape"}:
        return f"{by_category['texture']} {by_category['shape']}"
    if set(by_category) == {"texture", "colour"}:
        return f"{by_category['texture']} {by_category['colour']} objects"
    size = by_category.get("size", "")
    if size.endswith(" objects") and ({"colour", "shape", "texture"} & set(by_category)):
        stem = size.removesuffix(" objects")
        if "shape" in by_category:
            return f"{stem} {_plural(by_category['shape'])}"
        return f"{stem} {by_category.get('colour') or by_category['texture']} objects"
    return f"{first.concept} and {second.concept}"


def _vary(template: str, concept: str) -> str:
    words = concept.split()
    plural = " ".join([*words[:-1], _plural(words[-1])]) if words else concept
    return template.format(c=concept, plural=plural)


def _is_usable(concept: str) -> bool:
    return 0 < len(concept) <= MAX_CONCEPT_CHARS and len(concept.split()) <= MAX_CONCEPT_WORDS


@dataclass(frozen=True)
class VocabProposer:
    """The deterministic decision logic behind the offline proposer and the scripted LLM."""

    vocabulary: Vocabulary
    images_per_concept: int | None = None
    """``n`` of the ``generate_images`` calls; None leaves it to the run's prompt variant."""
    scoreboard_top_k: int = 10
    combine_top_k: int = 5
    """Combinations of the ``combine_top_k`` best entries come before the remaining ones."""

    def candidates(self, evidence: Evidence) -> Iterator[tuple[str, str]]:
        """Every concept worth proposing, in order, with the reason; endless (may repeat).

        After the singles: (1) combinations of two promising entries, the pair whose weaker
        part scores best first; size and count entries only when one of them is the best
        entry (they lift almost any unit); (2) the best entry with partners of other categories
        ("blue" + shapes, then textures), best-scoring partners first: a conjunction whose
        other half happened not to show in the singles; then everything else (remaining
        combinations, variations that change the scene).
        """
        for entry in self.vocabulary.entries:
            yield entry.concept, "next untried vocabulary entry"
        ranked = sorted(
            (
                (entry, evidence.scores[entry.concept])
                for entry in self.vocabulary.entries
                if entry.concept in evidence.scores
            ),
            key=lambda item: -item[1],
        )
        bases = [concept for concept, _ in evidence.ranked()] or evidence.tried
        bases = bases or self.vocabulary.concepts()
        if ranked:
            yield from self._hypotheses(ranked, evidence)
        pairs = list(itertools.combinations(range(len(ranked)), 2))

        def mean(pair: tuple[int, int]) -> float:
            return (ranked[pair[0]][1] + ranked[pair[1]][1]) / 2

        def sized(pair: tuple[int, int]) -> bool:  # size modifiers lift almost any unit
            return "size" in (ranked[pair[0]][0].category, ranked[pair[1]][0].category)

        first = sorted(
            (p for p in pairs if p[1] < self.combine_top_k and not sized(p)),
            key=lambda p: (-mean(p), p),
        )
        for i, j in first:
            yield combine(ranked[i][0], ranked[j][0]), "combination of two high-scoring entries"
        for base in bases[:3]:
            for template in _VARIATIONS:
                yield _vary(template, base), f"variation of '{base}', the best so far"
        later = sorted(set(pairs) - set(first), key=lambda p: (sized(p), -mean(p), p))
        for i, j in later:
            yield combine(ranked[i][0], ranked[j][0]), "combination of two scored entries"
        for base in bases[3:]:
            for template in _VARIATIONS:
                yield _vary(template, base), f"variation of '{base}'"
        for number in itertools.count(2):  # the vocabulary is spent: keep the walk endless
            yield f"{bases[0]} variation {number}", f"variation of '{bases[0]}'"

    def _hypotheses(
        self, ranked: list[tuple[VocabEntry, float]], evidence: Evidence
    ) -> Iterator[tuple[str, str]]:
        """Steps (1) and (2) of :meth:`candidates` for scored entries, best first.

        Partners include entries that were tried but whose scores are not shown (a scoreboard
        lists only the best few): they count as tied with the lowest score shown.
        """
        top, best = ranked[0]
        if best <= 0:
            return
        order = {entry.concept: index for index, entry in enumerate(self.vocabulary.entries)}

        def allowed(entry: VocabEntry) -> bool:
            return entry.category != "size" or entry is top

        promising = [
            (entry, score)
            for entry, score in ranked
            if score > 0 and score >= PROMISING_FRACTION * best and allowed(entry)
        ]
        pairs = sorted(
            itertools.combinations(promising, 2),
            key=lambda pair: (-pair[1][1], -pair[0][1], order[pair[0][0].concept]),
        )
        for (a, _), (b, _) in pairs:
            yield combine(a, b), "combination of two promising entries"
        partners = _PARTNER_CATEGORIES.get(top.category, ())
        unseen = min(score for _, score in ranked)  # at most the lowest score shown
        candidates = [
            (entry, evidence.scores.get(entry.concept, unseen))
            for entry in self.vocabulary.entries
            if entry.category in partners and entry.concept in evidence.tried
        ]
        candidates.sort(
            key=lambda item: (
                -item[1],
                partners.index(item[0].category),
                order[item[0].concept],
            )
        )
        for entry, _ in candidates:
            yield combine(top, entry), f"'{top.concept}' with a partner of another category"

    def next_concepts(self, evidence: Evidence, k: int = 1) -> list[tuple[str, str]]:
        """The next ``k`` untried concepts with their reasons."""
        taken = set(evidence.tried) | set(evidence.scores)
        out: list[tuple[str, str]] = []
        for concept, reason in self.candidates(evidence):
            concept = normalise_concept(concept)
            if concept in taken or not _is_usable(concept):
                continue
            taken.add(concept)
            out.append((concept, reason))
            if len(out) >= k:
                break
        return out

    def best(self, evidence: Evidence) -> tuple[str, float] | None:
        """The best-scoring concept seen, or None when the conversation has no scores."""
        ranked = evidence.ranked()
        return ranked[0] if ranked else None

    def decide(
        self,
        transcript: Sequence[TranscriptMessage],
        tool_names: Sequence[str],
        forced_tool: str | None = None,
        max_calls: int = 1,
    ) -> list[Decision]:
        """What to answer: which tool to call with which arguments (or a plain-text concept).

        Mode: the forced tool if any; else ``propose_concept`` if bound; else the agentic tools
        (measure what was generated, else edit the best concept out of the top images once when
        ``edit_images`` is offered and :data:`EDIT_AFTER_CONCEPTS` concepts are scored, else
        generate the next concept); else ``submit_explanation``; else plain text.
        """
        evidence = read_evidence(transcript)
        names = set(tool_names)
        k = max(1, max_calls)
        mode = forced_tool
        if mode is None:
            bound = (PROPOSE_TOOL, GENERATE_TOOL, MEASURE_TOOL, SUBMIT_TOOL)
            mode = next((name for name in bound if name in names), None)
        if mode == SUBMIT_TOOL:
            return [self._submit(evidence)]
        if mode == READ_SCOREBOARD_TOOL:
            top_k = {"top_k": self.scoreboard_top_k}
            return [Decision(READ_SCOREBOARD_TOOL, top_k, "reads the scoreboard")]
        if mode in (GENERATE_TOOL, MEASURE_TOOL):
            pending = evidence.pending()
            if pending and MEASURE_TOOL in names and forced_tool != GENERATE_TOOL:
                return [
                    Decision(MEASURE_TOOL, {"concept": c}, f"measures '{c}': its images are ready")
                    for c in pending[:k]
                ]
            best = self.best(evidence)
            if (
                EDIT_TOOL in names
                and forced_tool is None
                and not evidence.edits
                and best is not None
                and len(evidence.scores) >= EDIT_AFTER_CONCEPTS
            ):
                edit = {"instruction": f"remove the {best[0]}", "top_k": EDIT_TOP_K}
                note = f"edits '{best[0]}', the best so far, out of the unit's top images"
                return [Decision(EDIT_TOOL, edit, note)]
            tool: str | None
            if forced_tool in (GENERATE_TOOL, MEASURE_TOOL):
                tool = forced_tool
            else:
                tool = GENERATE_TOOL if GENERATE_TOOL in names else MEASURE_TOOL
            out = []
            for concept, reason in self.next_concepts(evidence, k):
                args: dict[str, Any] = {"concept": concept}
                if tool == GENERATE_TOOL and self.images_per_concept is not None:
                    args["n"] = self.images_per_concept
                out.append(Decision(tool, args, f"tries '{concept}': {reason}"))
            return out
        proposal = PROPOSE_TOOL if mode == PROPOSE_TOOL else None
        return [
            Decision(proposal, {"concept": concept}, f"proposes '{concept}': {reason}")
            for concept, reason in self.next_concepts(evidence, k)
        ]

    def _submit(self, evidence: Evidence) -> Decision:
        best = self.best(evidence)
        if best is None:
            concept = self.next_concepts(evidence, 1)[0][0]
            summary = f"No scores were seen; '{concept}' is the first untried vocabulary concept."
            return Decision(SUBMIT_TOOL, {"concept": concept, "summary": summary}, summary)
        concept, score = best
        summary = (
            f"'{concept}' scored highest ({score:.4f}) of {len(evidence.scores)} scored concepts; "
            "chosen by the offline vocabulary proposer, not an LLM."
        )
        return Decision(SUBMIT_TOOL, {"concept": concept, "summary": summary}, summary)


def resolve_tool_choice(
    tool_choice: Any, tool_names: Sequence[str]
) -> tuple[list[str], str | None]:
    """(tools usable, tool forced) for an OpenAI-style ``tool_choice``.

    ``"none"`` disables tools; a tool name or ``{"type": "function", "function": {"name": ...}}``
    forces that tool; ``"any"``/``"required"``/``True`` force the only tool when there is one.
    """
    names = list(tool_names)
    if tool_choice in (None, "auto", False):
        return names, None
    if tool_choice == "none":
        return [], None
    if tool_choice in ("any", "required", True):
        return names, names[0] if len(names) == 1 else None
    if isinstance(tool_choice, str):
        return names, tool_choice if tool_choice in names else None
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        return names, name if name in names else None
    return names, None


# --------------------------------------------------------------------------- chat model


class OfflineVocabProposer(BaseChatModel):
    """A deterministic vocabulary walker behind the chat-model interface. It is not an LLM.

    Bind the agent's tools with ``bind_tools``; every answer is one tool call (or a plain-text
    concept when no tool is bound) and says in its content that it comes from
    ``offline:vocab (not an LLM)``. Token usage is always zero.
    """

    vocabulary_path: str | None = None
    """Vocabulary file; None for the built-in toy-world vocabulary."""
    images_per_concept: int | None = None
    """``n`` of the ``generate_images`` calls it makes (None: the prompt variant's)."""
    parallel_calls: int = 1
    """How many tool calls one answer may hold (several concepts or measurements at once)."""

    _proposer: VocabProposer = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        """Load the vocabulary once, when the model is built."""
        super().model_post_init(context)
        vocabulary = (
            Vocabulary.from_file(self.vocabulary_path)
            if self.vocabulary_path
            else Vocabulary.default()
        )
        self._proposer = VocabProposer(vocabulary, images_per_concept=self.images_per_concept)

    @property
    def _llm_type(self) -> str:
        return "offline-vocab-proposer-not-an-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": "offline:vocab",
            "vocabulary": self._proposer.vocabulary.source,
            "images_per_concept": self.images_per_concept,
            "parallel_calls": self.parallel_calls,
        }

    @property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary this proposer walks."""
        return self._proposer.vocabulary

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Bind tools (LangChain tools, functions, pydantic models or OpenAI schemas)."""
        schemas = [convert_to_openai_tool(tool) for tool in tools]
        return self.bind(tools=schemas, tool_choice=tool_choice, **kwargs)

    def answer(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> AIMessage:
        """The AIMessage this proposer answers ``messages`` with (also used by ``invoke``)."""
        tool_names = [schema["function"]["name"] for schema in tools or ()]
        names, forced = resolve_tool_choice(tool_choice, tool_names)
        transcript = transcript_from_langchain(messages)
        decisions = self._proposer.decide(transcript, names, forced, self.parallel_calls)
        digest = hashlib.sha256(
            json.dumps([m.__dict__ for m in transcript], default=str, sort_keys=True).encode()
        ).hexdigest()
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        metadata = {"model_name": "offline:vocab", "not_an_llm": True}
        calls = [
            {
                "name": decision.tool,
                "args": decision.args,
                "id": f"call_offline_{digest[:12]}_{index}",
                "type": "tool_call",
            }
            for index, decision in enumerate(decisions)
            if decision.tool is not None
        ]
        notes = "; ".join(decision.note for decision in decisions)
        if calls:
            content = f"{NOT_AN_LLM} {notes}"
        else:
            content = f"{decisions[0].args['concept']}\n({NOT_AN_LLM} {notes})"
        return AIMessage(
            content=content,
            tool_calls=calls,
            usage_metadata=usage,
            response_metadata=metadata,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = self.answer(messages, kwargs.get("tools"), kwargs.get("tool_choice"))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, None, **kwargs)
