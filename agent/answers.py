"""Reading the LLM's answers: the tool call it made, or a concept in plain text.

Re-asking after an unusable answer is the graph's job; :func:`extract_tool_call` and
:func:`extract_concept_from_text` tell it when to, with a reason written to be sent back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from tools.agent_tools import ALL_TOOLS
from tools.scoreboard import MAX_CONCEPT_WORDS, normalise_concept, validate_concept


class UnusableAnswer(ValueError):
    """The model's answer cannot be used; ``reason`` is written to be sent back as a re-ask."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def required_args_of(tools: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """Required argument names per tool, read from LangChain tools or JSON schemas."""
    out = {}
    for tool in tools:
        function = convert_to_openai_tool(tool)["function"]
        parameters = function.get("parameters") or {}
        out[function["name"]] = tuple(parameters.get("required") or ())
    return out


CONTRACT_REQUIRED_ARGS = required_args_of(ALL_TOOLS)
"""Arguments each agent tool must receive, read from the tools' own schemas."""


def extract_tool_call(
    message: BaseMessage,
    allowed_names: Iterable[str],
    required: Mapping[str, Sequence[str]] | None = None,
    *,
    check_concept_arg: bool = True,
    max_concept_words: int = MAX_CONCEPT_WORDS,
) -> tuple[str, dict[str, Any]]:
    """The first tool call of an answer as ``(name, args)``, or :class:`UnusableAnswer`.

    Unusable: no tool call, malformed arguments (not JSON, not an object), a tool not in
    ``allowed_names``, missing required arguments (``required``, by default the agent tools'
    contract), or, with ``check_concept_arg``, a ``concept`` that is not a short noun phrase
    (:func:`tools.scoreboard.validate_concept`: empty, too long, digits, punctuation, chat).
    """
    allowed = list(allowed_names)
    required = CONTRACT_REQUIRED_ARGS if required is None else required
    choices = ", ".join(allowed) or "(none)"
    calls = list(getattr(message, "tool_calls", None) or [])
    if not calls:
        invalid = list(getattr(message, "invalid_tool_calls", None) or [])
        if invalid:
            bad = invalid[0]
            raise UnusableAnswer(
                f"the arguments of your call to {bad.get('name') or 'a tool'} are not valid JSON "
                f"({_short(bad.get('args') or '')}); call {choices} again with a JSON object"
            )
        raise UnusableAnswer(f"your answer has no tool call; answer by calling one of: {choices}")
    call = calls[0]
    name = call.get("name")
    if name not in allowed:
        raise UnusableAnswer(f"there is no tool named {_short(name)!r}; use one of: {choices}")
    args = call.get("args")
    if not isinstance(args, dict):
        raise UnusableAnswer(f"the arguments of {name} must be a JSON object, got {_short(args)}")
    missing = [key for key in required.get(name, ()) if args.get(key) in (None, "")]
    if missing:
        raise UnusableAnswer(f"{name} needs the argument(s) {', '.join(missing)}; call it again")
    if check_concept_arg and "concept" in args:
        try:
            validate_concept(args["concept"], max_concept_words)
        except ValueError as error:
            raise UnusableAnswer(f"{name}: {error}") from error
    return name, args


_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_LABELLED = re.compile(
    r"(?:^|\b)(?:the\s+|my\s+)?(?:final\s+|new\s+|proposed\s+|next\s+)?"
    r"(?:concept|answer|proposal|label|explanation)"
    r"\s*(?:is)?\s*[:=\-–—]\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“«*`]+(?P<inner>[^\"”»*`\n]{1,80})[\"”»*`]+")
_BULLET = re.compile(r"^(?:[-*•+>#]+|\d+[.)])\s*")
_MARKUP = re.compile(r"[*_`]+")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


def _clean_line(line: str) -> str:
    line = _MARKUP.sub("", line).strip()
    line = _BULLET.sub("", line).strip()
    return line


def _as_concept(text: str, max_words: int) -> str:
    """The concept a piece of text is, or ``ValueError`` saying why it is none."""
    text = text.strip().strip("\"'“”‘’«»").strip()
    text = _ARTICLE.sub("", normalise_concept(text))
    text = normalise_concept(text.strip("\"'“”‘’«»()[]"))
    return validate_concept(text, max_words)


def _candidates(lines: list[str]) -> list[str]:
    """Where a concept may sit in a plain-text answer, most explicit first: after a
    ``Concept:`` label, in quotes or bold on a line, then the first line that is no header."""
    found: list[str] = []
    for index, line in enumerate(lines):
        match = _LABELLED.search(_clean_line(line))
        if match:
            rest = match["rest"].strip() or (lines[index + 1] if index + 1 < len(lines) else "")
            found.append(_clean_line(rest))
    found += [match["inner"] for line in lines for match in _QUOTED.finditer(line)]
    first = next((_clean_line(line) for line in lines if not line.endswith(":")), None)
    if first:
        found.append(first)
    return found


def concept_from_text(text: str | None, max_words: int = MAX_CONCEPT_WORDS) -> str:
    """A concept from a plain-text answer (for models that cannot call tools), or
    :class:`UnusableAnswer` whose reason says what was wrong with the answer.

    Takes a ``Concept: ...`` (or ``Answer:``, ``Label:``) line if there is one, else a quoted or
    bold phrase, else the first line that is no header; strips markdown, bullets, quotes,
    articles and end punctuation; the result must be a short noun phrase of at most
    ``max_words`` words (:func:`tools.scoreboard.validate_concept`). Chat text, digits, scores
    and sentences are refused, not cut into a label. ``"Concept: **Red fruit**."`` gives
    ``"red fruit"``.
    """
    lines = [line.strip() for line in _THINK_BLOCK.sub("", str(text or "")).splitlines()]
    lines = [line for line in lines if _clean_line(line)]
    if not lines:
        raise UnusableAnswer("the answer is empty; give one short noun phrase such as 'red fruit'")
    reason = None
    for candidate in _candidates(lines):
        try:
            return _as_concept(candidate, max_words)
        except ValueError as error:
            reason = reason or str(error)
    raise UnusableAnswer(reason or "the answer holds no concept; give one such as 'red fruit'")


def extract_concept_from_text(text: str | None, max_words: int = MAX_CONCEPT_WORDS) -> str | None:
    """:func:`concept_from_text`, or None when the answer holds no usable concept."""
    try:
        return concept_from_text(text, max_words)
    except UnusableAnswer:
        return None
