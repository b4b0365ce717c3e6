"""A scripted OpenAI-compatible chat-completions server for tests, benchmarks and fault drills.

It speaks the wire format real clients use (``ChatOpenAI``, the ``openai`` SDK, curl):
``POST /v1/chat/completions`` as JSON or as a ``stream: true`` SSE stream with tool-call deltas,
and ``GET /v1/models``. What it answers is decided by a policy:

- :class:`ProposerPolicy` acts like a sensible LLM by running the offline proposer's decision
  logic on the request's messages and tools, and answers with real OpenAI ``tool_calls``;
- :class:`ChatDebrisPolicy` answers like a small chat model that often ignores the answer
  format (chat text, scores, fragments, rambling) before a usable answer;
- :class:`ScriptedReplies` plays a fixed queue of :class:`Reply` objects (text, tool calls or
  faults: 429 with Retry-After, 500, a dropped connection, a hang, an empty answer, malformed
  arguments, an unknown tool, a 10,000-character concept), then hands over to another policy.

The server counts requests by reply kind (:class:`ScriptedLLMStats`) and accepts image parts
(OpenAI ``image_url`` parts with a data URL, as ``ChatOpenAI`` sends LangChain's standard image
blocks): it records each request's images (MIME type, bytes, size) for tests to assert, and
counts each as :data:`IMAGE_TOKENS` prompt tokens. Start one on a thread::

    server = start_scripted_llm(ProposerPolicy())
    model = build_chat_model("openai-compatible:scripted", base_url=server.url)
    ...
    server.stop()

or from a shell: ``python -m testing.scripted_llm --port 8001 [--mode offline-proposer|chat-debris]
[--context-window 2048] [--vocab FILE] [--latency-ms 50]``. Neither mode is an LLM: both answer
with the offline proposer's decisions, so prompt variants cannot be compared with them, and the
tokens they report are estimates.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import io
import itertools
import json
import math
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from agent.offline import (
    GENERATE_TOOL,
    MEASURE_TOOL,
    PROPOSE_TOOL,
    SUBMIT_TOOL,
    ToolCallRecord,
    TranscriptMessage,
    VocabProposer,
    Vocabulary,
    content_text,
    resolve_tool_choice,
)
from inference.app import start_server_thread

ReplyKind = Literal[
    "text",
    "tool_calls",
    "rate_limit",
    "server_error",
    "disconnect",
    "hang",
    "empty",
    "malformed_arguments",
    "unknown_tool",
    "long_concept",
]
HTTP_FAULTS = frozenset({"rate_limit", "server_error", "disconnect"})
LONG_CONCEPT_CHARS = 10_000
IMAGE_TOKENS = 85
"""Prompt tokens an image part counts as (OpenAI's price of a low-detail image)."""


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call to send: the name and the raw JSON ``arguments`` text (may be invalid)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """One scripted answer or fault. Build with the class methods.

    ``tool=None`` on the tool-shaped faults means "the first agent tool the request binds".
    """

    kind: ReplyKind
    text: str = ""
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    tool: str | None = None
    retry_after_s: float | None = None
    hang_s: float = 0.0
    status: int = 200
    chars: int = 0

    @classmethod
    def text_reply(cls, text: str) -> Reply:
        """A plain-text answer without tool calls."""
        return cls("text", text=text)

    @classmethod
    def tool_call(cls, name: str, text: str = "", **args: Any) -> Reply:
        """One tool call with JSON arguments."""
        return cls.tool_calls_of([(name, args)], text=text)

    @classmethod
    def tool_calls_of(cls, calls: Iterable[tuple[str, Mapping[str, Any]]], text: str = "") -> Reply:
        """Several (parallel) tool calls in one answer."""
        scripted = tuple(ScriptedToolCall(name, json.dumps(dict(args))) for name, args in calls)
        return cls("tool_calls", text=text, tool_calls=scripted)

    @classmethod
    def rate_limited(cls, retry_after_s: float | None = 1.0) -> Reply:
        """HTTP 429 with ``Retry-After`` and ``retry-after-ms`` headers (none when None)."""
        return cls("rate_limit", retry_after_s=retry_after_s, status=429)

    @classmethod
    def server_error(cls, status: int = 500) -> Reply:
        """An HTTP 5xx error."""
        return cls("server_error", status=status)

    @classmethod
    def disconnect(cls) -> Reply:
        """Start a response, then drop the connection before its body (no answer at all)."""
        return cls("disconnect")

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Reply:
        """Answer nothing for ``seconds`` (longer than the client's timeout), then an empty text."""
        return cls("hang", hang_s=seconds)

    @classmethod
    def empty(cls) -> Reply:
        """An answer with empty content and no tool call."""
        return cls("empty")

    @classmethod
    def malformed_arguments(cls, tool: str | None = None) -> Reply:
        """A tool call whose ``arguments`` are not valid JSON."""
        return cls("malformed_arguments", tool=tool)

    @classmethod
    def unknown_tool(cls, name: str = "launch_rockets") -> Reply:
        """A call to a tool the request did not offer."""
        return cls("unknown_tool", tool=name)

    @classmethod
    def long_concept(cls, tool: str | None = None, chars: int = LONG_CONCEPT_CHARS) -> Reply:
        """A well-formed tool call whose ``concept`` is ``chars`` characters long."""
        return cls("long_concept", tool=tool, chars=chars)


class ReplyPolicy(Protocol):
    """Decides the reply to one chat-completions request (the request JSON as a dict)."""

    def respond(self, request: dict[str, Any]) -> Reply:
        """The reply to send."""
        ...


def request_tool_names(request: Mapping[str, Any]) -> list[str]:
    """Names of the function tools a request offers."""
    names = []
    for tool in request.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def transcript_from_openai(messages: Sequence[Mapping[str, Any]]) -> list[TranscriptMessage]:
    """Convert OpenAI wire-format messages to the offline proposer's neutral transcript."""
    out = []
    for message in messages:
        role = str(message.get("role", "user"))
        role = "system" if role == "developer" else role
        calls = []
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            try:
                args = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError):
                args = {}
            calls.append(
                ToolCallRecord(
                    str(function.get("name", "")),
                    args if isinstance(args, dict) else {},
                    str(call.get("id", "")),
                )
            )
        out.append(
            TranscriptMessage(
                role=role,
                text=content_text(message.get("content")),
                tool_calls=tuple(calls),
                tool_call_id=message.get("tool_call_id"),
                tool_name=message.get("name") if role == "tool" else None,
            )
        )
    return out


@dataclass
class ProposerPolicy:
    """Answers like a sensible tool-calling LLM, using the offline proposer's decisions.

    ``parallel_calls > 1`` lets one answer hold several tool calls (several concepts to try or
    measure), unless the request sets ``parallel_tool_calls: false``.
    """

    vocabulary: Vocabulary | str | Path | None = None
    parallel_calls: int = 1
    images_per_concept: int | None = None
    _proposer: VocabProposer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        vocabulary = self.vocabulary
        if vocabulary is None:
            vocabulary = Vocabulary.default()
        elif not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.from_file(vocabulary)
        self._proposer = VocabProposer(vocabulary, images_per_concept=self.images_per_concept)

    def respond(self, request: dict[str, Any]) -> Reply:
        """Tool calls (or a plain-text concept when no tool is offered) for the request."""
        names, forced = resolve_tool_choice(request.get("tool_choice"), request_tool_names(request))
        calls = self.parallel_calls if request.get("parallel_tool_calls") is not False else 1
        transcript = transcript_from_openai(request.get("messages") or [])
        decisions = self._proposer.decide(transcript, names, forced, calls)
        tool_calls = [(d.tool, d.args) for d in decisions if d.tool is not None]
        if tool_calls:
            return Reply.tool_calls_of(tool_calls)
        return Reply.text_reply(str(decisions[0].args["concept"]))


CHAT_DEBRIS = (
    "i'm right, i was too quick: 0.175",
    "in the sentence",
    "no",
    "3d paper (not available until now",
    'i am": 10/25 = 3.4%',
    "name",
    "Sure! I think the best concept would be one that scores higher than the others.",
)
"""Answers a small chat model gave instead of a concept (SmolLM2-135M at a 2048-token
context): chat, scores, fragments, words about the task."""
RAMBLE = (
    "Let me think about this step by step. The scores above show which concepts the unit "
    "responds to, and the strongest ones seem to share something, although it is hard to say "
    "what exactly without seeing the images. "
) * 12
"""An overlong answer (about 2,600 characters) that holds no concept."""


@dataclass
class ChatDebrisPolicy:
    """Answers like a small chat model that often ignores the answer format, to test that
    debris never becomes a label and that re-asks and long conversations fit a small context.

    Each question (the request's first two messages) gets between 0 and ``max_debris``
    unusable answers before a usable one (the number is fixed by the question's text):
    debris from :data:`CHAT_DEBRIS` or :data:`RAMBLE`, in plain text. A usable answer is the
    offline proposer's, as a tool call or, every other time, as plain text
    (``Concept: red``). Agentic turns call tools like the proposer but carry :data:`RAMBLE` as
    their text, so the conversation outgrows a small context window, and now and then a tool
    call whose concept is debris.
    """

    max_debris: int = 2
    vocabulary: Vocabulary | str | Path | None = None
    _proposer: ProposerPolicy = field(init=False, repr=False)
    _asked: Counter[str] = field(init=False, repr=False, default_factory=Counter)
    _turns: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        self._proposer = ProposerPolicy(self.vocabulary)

    def respond(self, request: dict[str, Any]) -> Reply:
        """Debris or a usable answer, as described above."""
        messages = request.get("messages") or []
        names = request_tool_names(request)
        proper = self._proposer.respond(request)
        if GENERATE_TOOL in names:  # an agentic turn
            self._turns += 1
            if self._turns % 5 == 0 and proper.tool_calls:
                debris = CHAT_DEBRIS[self._turns // 5 % len(CHAT_DEBRIS)]
                return Reply.tool_call(proper.tool_calls[0].name, RAMBLE, concept=debris)
            return Reply(proper.kind, RAMBLE, proper.tool_calls) if proper.tool_calls else proper
        question = json.dumps(messages[:2], sort_keys=True, default=str)
        key = hashlib.sha256(question.encode()).hexdigest()
        self._asked[key] += 1
        if self._asked[key] <= int(key[:8], 16) % (self.max_debris + 1):
            pick = int(key[8:16], 16) + self._asked[key]
            text = RAMBLE if pick % 4 == 0 else CHAT_DEBRIS[pick % len(CHAT_DEBRIS)]
            return Reply.text_reply(text)
        if proper.tool_calls and int(key[16:18], 16) % 2:
            concept = json.loads(proper.tool_calls[0].arguments).get("concept", "")
            return Reply.text_reply(f"Concept: {concept}")
        return proper


@dataclass
class ScriptedReplies:
    """Plays ``replies`` in order, then asks ``then`` (by default a :class:`ProposerPolicy`)."""

    replies: Sequence[Reply]
    then: ReplyPolicy | None = None
    _queue: deque[Reply] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._queue = deque(self.replies)
        if self.then is None:
            self.then = ProposerPolicy()

    @property
    def remaining(self) -> int:
        """Scripted replies not played yet."""
        return len(self._queue)

    def respond(self, request: dict[str, Any]) -> Reply:
        """The next scripted reply, or the fallback policy's."""
        if self._queue:
            return self._queue.popleft()
        assert self.then is not None
        return self.then.respond(request)


# --------------------------------------------------------------------------- HTTP


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat-completions request this server reads (others allowed)."""

    model_config = ConfigDict(extra="allow")
    model: str = "scripted"
    messages: list[dict[str, Any]] = Field(description="OpenAI chat messages.")
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


@dataclass
class ScriptedLLMStats:
    """What the server was asked and answered. Read it from tests; the server writes it."""

    requests: int = 0
    streamed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_prompt_tokens: int = 0
    """The longest prompt asked (estimated tokens): what a context window must hold."""
    overflows: int = 0
    """Requests refused for not fitting the context window."""
    images: int = 0
    """Image parts received, over all requests."""
    log: list[dict[str, Any]] = field(default_factory=list)
    """One row per answered request: its number, reply kind, whether streamed, message count,
    tool names, and its image parts (``images``: MIME type, bytes, width and height each)."""

    def count(self, kind: str) -> int:
        """Requests answered with a reply of ``kind`` (e.g. "rate_limit", "tool_calls")."""
        return self.by_kind[kind]

    def answered(self) -> int:
        """Requests that got a completion (not an HTTP error, a dropped connection or a hang)."""
        return self.requests - sum(self.by_kind[k] for k in (*HTTP_FAULTS, "hang"))


def estimate_tokens(text: str) -> int:
    """A rough token count: a quarter of the characters, at least 1 for non-empty text."""
    return max(1, len(text) // 4) if text else 0


def image_parts(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The image parts of a request's messages, in order: MIME type, decoded bytes and pixel
    size (0 when the data is not an image) of each OpenAI ``image_url`` data URL or LangChain
    standard ``image`` block."""
    found = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url", "") if isinstance(url, Mapping) else str(url or "")
                head, _, data = url.partition(",")
                mime = head.removeprefix("data:").partition(";")[0]
            elif part.get("type") == "image":
                mime, data = str(part.get("mime_type") or ""), str(part.get("base64") or "")
            else:
                continue
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            try:
                width, height = Image.open(io.BytesIO(raw)).size
            except (UnidentifiedImageError, OSError):
                width = height = 0
            found.append({"mime_type": mime, "bytes": len(raw), "width": width, "height": height})
    return found


def _first_agent_tool(names: Sequence[str]) -> str:
    for tool in (PROPOSE_TOOL, GENERATE_TOOL, MEASURE_TOOL, SUBMIT_TOOL):
        if tool in names:
            return tool
    return names[0] if names else PROPOSE_TOOL


def materialise(reply: Reply, request: Mapping[str, Any]) -> tuple[str | None, list[dict]]:
    """The (content, OpenAI tool_calls) a completion reply sends."""
    tool = reply.tool or _first_agent_tool(request_tool_names(request))
    if reply.kind == "malformed_arguments":
        calls = [ScriptedToolCall(tool, '{"concept": "red circ')]
    elif reply.kind == "unknown_tool":
        calls = [ScriptedToolCall(tool, json.dumps({"concept": "red"}))]
    elif reply.kind == "long_concept":
        chars = reply.chars or LONG_CONCEPT_CHARS
        concept = ("red circle " * (chars // 11 + 1))[:chars]
        args: dict[str, Any] = {"concept": concept}
        if tool == SUBMIT_TOOL:
            args["summary"] = "a very long concept"
        calls = [ScriptedToolCall(tool, json.dumps(args))]
    else:
        calls = list(reply.tool_calls)
    if reply.kind in ("empty", "hang"):
        return "", []
    content = reply.text if (reply.text or not calls) else None
    return content, [
        {"id": "", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _prompt_text(request: Mapping[str, Any]) -> str:
    parts = [content_text(m.get("content")) for m in request.get("messages") or ()]
    parts += [
        json.dumps(m.get("tool_calls"))
        for m in request.get("messages") or ()
        if m.get("tool_calls")
    ]
    if request.get("tools"):
        parts.append(json.dumps(request["tools"]))
    return "\n".join(parts)


def create_scripted_llm_app(
    policy: ReplyPolicy,
    latency_ms: float = 0,
    stats: ScriptedLLMStats | None = None,
    context_window: int | None = None,
) -> FastAPI:
    """The FastAPI app: ``POST /v1/chat/completions`` (JSON or SSE) and ``GET /v1/models``.

    ``latency_ms`` delays every answer; ``app.state.stats`` holds the request counts and
    ``app.state.stopping`` (a ``threading.Event``) ends hangs early when set. With
    ``context_window`` it acts like a llama.cpp server of that context: ``GET /props`` states
    it (``n_ctx``), and a request whose prompt (estimated tokens) plus ``max_tokens`` exceeds
    it is refused with llama.cpp's HTTP 400 "maximum context length" error.
    """
    app = FastAPI(title="LINE scripted LLM", version="1")
    app.state.stats = stats if stats is not None else ScriptedLLMStats()
    app.state.stopping = threading.Event()
    counter = itertools.count(1)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The one model this server pretends to be."""
        return {
            "object": "list",
            "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "line"}],
        }

    @app.get("/props", response_model=None)
    async def props() -> Response:
        """The context window, as llama.cpp's server states it (404 without one)."""
        if context_window is None:
            return JSONResponse({"error": "not found"}, 404)
        return JSONResponse({"default_generation_settings": {"n_ctx": context_window}})

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Answer a chat-completions request with the policy's reply."""
        number = next(counter)
        payload = body.model_dump()
        record: ScriptedLLMStats = app.state.stats
        images = image_parts(payload.get("messages") or [])
        asked = estimate_tokens(_prompt_text(payload)) + IMAGE_TOKENS * len(images)
        record.max_prompt_tokens = max(record.max_prompt_tokens, asked)
        completion = payload.get("max_completion_tokens") or payload.get("max_tokens") or 0
        if context_window is not None and asked + completion > context_window:
            record.requests += 1
            record.overflows += 1
            refusal = (
                f"This model's maximum context length is {context_window} tokens. However, you "
                f"requested {asked + completion} tokens ({asked} in the messages, {completion} "
                "in the completion). Please reduce the length of the messages or completion."
            )
            error = {"message": refusal, "type": "invalid_request_error", "code": None}
            return JSONResponse({"error": error}, 400)
        reply = policy.respond(payload)
        record.requests += 1
        record.streamed += int(body.stream)
        record.by_kind[reply.kind] += 1
        record.images += len(images)
        record.log.append(
            {
                "n": number,
                "kind": reply.kind,
                "stream": body.stream,
                "messages": len(body.messages),
                "tools": request_tool_names(payload),
                "images": images,
            }
        )
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        if reply.kind == "rate_limit":
            headers = {}
            if reply.retry_after_s is not None:
                headers["retry-after"] = str(max(1, math.ceil(reply.retry_after_s)))
                headers["retry-after-ms"] = str(int(reply.retry_after_s * 1000))
            error = {"message": "rate limit reached (scripted)", "type": "rate_limit_exceeded"}
            return JSONResponse({"error": {**error, "code": "rate_limit_exceeded"}}, 429, headers)
        if reply.kind == "server_error":
            failure = {"message": "internal error (scripted)", "type": "server_error", "code": None}
            return JSONResponse({"error": failure}, reply.status)
        if reply.kind == "disconnect":
            return DroppedResponse()
        if reply.kind == "hang":
            deadline = time.monotonic() + reply.hang_s
            while time.monotonic() < deadline and not app.state.stopping.is_set():
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
        content, calls = materialise(reply, payload)
        for index, call in enumerate(calls):
            call["id"] = f"call_{number}_{index}"
        prompt_tokens = asked
        completion_text = (content or "") + "".join(
            c["function"]["name"] + c["function"]["arguments"] for c in calls
        )
        completion_tokens = estimate_tokens(completion_text)
        record.prompt_tokens += prompt_tokens
        record.completion_tokens += completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        finish = "tool_calls" if calls else "stop"
        completion_id = f"chatcmpl-scripted-{number}"
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = _stream_chunks(
                completion_id, body.model, content, calls, finish, usage if include_usage else None
            )
            return StreamingResponse(chunks, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                ],
                "usage": usage,
            }
        )

    return app


class DroppedResponse(Response):
    """Sends the status line and headers of a JSON answer, then returns without the body: the
    ASGI server closes the connection, and the client meets a connection dropped mid-response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


def _pieces(text: str, size: int = 16) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _stream_chunks(
    completion_id: str,
    model: str,
    content: str | None,
    calls: list[dict[str, Any]],
    finish: str,
    usage: dict[str, int] | None,
) -> AsyncIterator[str]:
    """SSE events of a streamed completion: role, content pieces, tool-call deltas, finish."""
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    def delta(body: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": body, "finish_reason": finish_reason, "logprobs": None}]

    yield event(delta({"role": "assistant", "content": ""}))
    if content:
        for piece in _pieces(content):
            yield event(delta({"content": piece}))
    for index, call in enumerate(calls):
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        yield event(delta({"tool_calls": [head]}))
        for piece in _pieces(call["function"]["arguments"]):
            yield event(delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    yield event(delta({}, finish))
    if usage is not None:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"


@dataclass
class ScriptedLLMServer:
    """A running scripted server: ``url`` is the base URL to give clients (ends in ``/v1``)."""

    url: str
    stats: ScriptedLLMStats
    app: FastAPI
    running: Any

    def stop(self) -> None:
        """End hangs and stop the server."""
        self.app.state.stopping.set()
        self.running.stop()

    def __enter__(self) -> ScriptedLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_scripted_llm(
    policy: ReplyPolicy, latency_ms: float = 0, context_window: int | None = None
) -> ScriptedLLMServer:
    """Serve a policy on 127.0.0.1 (a free port) on a background thread."""

    stats = ScriptedLLMStats()
    app = create_scripted_llm_app(
        policy, latency_ms=latency_ms, stats=stats, context_window=context_window
    )
    running = start_server_thread(app)
    return ScriptedLLMServer(f"{running.url}/v1", stats, app, running)


MODES = {
    "offline-proposer": "the offline proposer's decisions behind HTTP, not an LLM: prompts do "
    "not change what it answers, and its token counts are estimates (a quarter of the "
    "characters)",
    "chat-debris": "the offline proposer behind a small chat model's manners: chat text, "
    "scores, fragments and rambling before a usable answer",
}
"""What ``python -m testing.scripted_llm --mode`` serves."""


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scripted server in the foreground (``python -m testing.scripted_llm``)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--vocab", default=None, help="vocabulary file (default: toy world)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--parallel-calls", type=int, default=1)
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="offline-proposer",
        help="; ".join(f"{name}: {about}" for name, about in MODES.items()),
    )
    parser.add_argument(
        "--context-window", type=int, default=None, help="act like a llama.cpp server of N tokens"
    )
    args = parser.parse_args(argv)
    policy: ReplyPolicy
    if args.mode == "chat-debris":
        policy = ChatDebrisPolicy(vocabulary=args.vocab)
    else:
        policy = ProposerPolicy(args.vocab, parallel_calls=args.parallel_calls)
    app = create_scripted_llm_app(
        policy, latency_ms=args.latency_ms, context_window=args.context_window
    )
    print(
        f"scripted LLM ({args.mode}: {MODES[args.mode]}) on http://{args.host}:{args.port}/v1 "
        "(model name: anything)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
