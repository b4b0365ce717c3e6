"""LLM providers: parse ``provider:model`` specs, check them early, build chat models, call them.

Specs:

- ``provider:model`` for any provider LangChain's ``init_chat_model`` knows
  (``openai:gpt-4o-mini``, ``anthropic:claude-sonnet-4-5``, ``ollama:llama3.1:8b``, ...);
- ``openai-compatible:<model>`` for a vLLM, llama.cpp or LM Studio server given by base URL;
- ``offline:vocab`` or ``offline:vocab:<vocabulary file>``: the deterministic non-LLM proposer.

:class:`LLMClient` wraps a chat model with a connection limit, transport-level retries
(429, 5xx, timeouts, connection errors; ``Retry-After`` honoured), an optional on-disk response
cache and token accounting. Re-asking after an unusable answer is the graph's job; the helpers
:func:`extract_tool_call` and :func:`extract_concept_from_text` tell it when to.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import importlib.util
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ToolMessage,
    convert_to_messages,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent.offline import OfflineVocabProposer

OPENAI_COMPATIBLE = "openai-compatible"
OFFLINE = "offline"
OPENAI_COMPATIBLE_KEY_ENV = "LINE_LLM_API_KEY"
OPENAI_COMPATIBLE_URL_ENV = "LINE_LLM_BASE_URL"
DUMMY_API_KEY = "not-needed"

SPEC_FORMS = (
    "  provider:model              e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, "
    "ollama:llama3.1:8b\n"
    "  openai-compatible:<model>   a vLLM / llama.cpp / LM Studio server; give its base URL\n"
    "  offline:vocab               the deterministic non-LLM proposer (toy-world vocabulary)\n"
    "  offline:vocab:<file>        the same with your vocabulary file (one concept per line)"
)


class LLMConfigError(ValueError):
    """The LLM spec, package or credentials are not usable; the message says what to do."""


@dataclass(frozen=True)
class ProviderInfo:
    """What a provider needs: its LangChain module, the pip package, API-key variables."""

    module: str
    package: str
    key_env: tuple[str, ...] = ()
    """Environment variables that can hold the API key (any one); empty: no key needed."""


# Providers whose needs are known here; other init_chat_model providers get a package check.
KNOWN_PROVIDERS: dict[str, ProviderInfo] = {
    "openai": ProviderInfo("langchain_openai", "langchain-openai", ("OPENAI_API_KEY",)),
    "anthropic": ProviderInfo("langchain_anthropic", "langchain-anthropic", ("ANTHROPIC_API_KEY",)),
    "ollama": ProviderInfo("langchain_ollama", "langchain-ollama"),
    "groq": ProviderInfo("langchain_groq", "langchain-groq", ("GROQ_API_KEY",)),
    "google_genai": ProviderInfo(
        "langchain_google_genai", "langchain-google-genai", ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    ),
    "mistralai": ProviderInfo("langchain_mistralai", "langchain-mistralai", ("MISTRAL_API_KEY",)),
    "deepseek": ProviderInfo("langchain_deepseek", "langchain-deepseek", ("DEEPSEEK_API_KEY",)),
    "xai": ProviderInfo("langchain_xai", "langchain-xai", ("XAI_API_KEY",)),
    "together": ProviderInfo("langchain_together", "langchain-together", ("TOGETHER_API_KEY",)),
    "fireworks": ProviderInfo("langchain_fireworks", "langchain-fireworks", ("FIREWORKS_API_KEY",)),
    "cohere": ProviderInfo("langchain_cohere", "langchain-cohere", ("COHERE_API_KEY",)),
    "openrouter": ProviderInfo(
        "langchain_openrouter", "langchain-openrouter", ("OPENROUTER_API_KEY",)
    ),
    "nvidia": ProviderInfo(
        "langchain_nvidia_ai_endpoints", "langchain-nvidia-ai-endpoints", ("NVIDIA_API_KEY",)
    ),
}


def init_chat_model_providers() -> dict[str, ProviderInfo]:
    """Every provider ``init_chat_model`` accepts, with what it needs (key variables if known)."""
    providers = dict(KNOWN_PROVIDERS)
    try:  # the table is private in langchain; fall back to the known providers if it moves
        from langchain.chat_models.base import _BUILTIN_PROVIDERS
    except ImportError:
        return providers
    for name, entry in _BUILTIN_PROVIDERS.items():
        if name not in providers:
            module = str(entry[0])
            package = module.split(".")[0].replace("_", "-")
            providers[name] = ProviderInfo(module, package)
    return providers


def provider_info(provider: str) -> ProviderInfo | None:
    """What a provider needs, or None if ``init_chat_model`` does not know it."""
    return KNOWN_PROVIDERS.get(provider) or init_chat_model_providers().get(provider)


@dataclass(frozen=True)
class LLMSpec:
    """A parsed LLM spec: ``provider``, ``model`` and the ``raw`` text it came from."""

    provider: str
    model: str
    raw: str
    vocab_path: Path | None = None
    """For ``offline:vocab:<file>``: the vocabulary file."""

    @property
    def is_offline(self) -> bool:
        """True for the non-LLM offline proposer."""
        return self.provider == OFFLINE

    def __str__(self) -> str:
        return self.raw


def _spec_error(spec: str, problem: str) -> LLMConfigError:
    return LLMConfigError(f"bad LLM spec {spec!r}: {problem}. Use one of:\n{SPEC_FORMS}")


_GUESSES = (
    (("gpt-", "o1", "o3", "o4", "chatgpt"), "openai"),
    (("claude",), "anthropic"),
    (("gemini",), "google_genai"),
    (("mistral", "mixtral", "codestral", "magistral"), "mistralai"),
    (("llama", "qwen", "phi", "gemma"), "ollama"),
)


def parse_llm_spec(spec: str | LLMSpec) -> LLMSpec:
    """Parse ``provider:model``, ``openai-compatible:<model>`` or ``offline:vocab[:<file>]``."""
    if isinstance(spec, LLMSpec):
        return spec
    raw = str(spec).strip()
    provider, sep, model = raw.partition(":")
    provider, model = provider.strip().lower(), model.strip()
    if not sep or not provider or not model:
        hint = "it needs a provider and a model separated by ':'"
        for prefixes, guess in _GUESSES:
            if raw and raw.lower().startswith(prefixes):
                hint += f" (did you mean '{guess}:{raw}'?)"
                break
        raise _spec_error(raw, hint)
    if provider == OFFLINE:
        kind, has_path, path = model.partition(":")
        if kind != "vocab" or (has_path and not path.strip()):
            raise _spec_error(raw, "the offline proposer is written 'offline:vocab[:<file>]'")
        vocab_path = Path(path.strip()).expanduser() if has_path else None
        return LLMSpec(OFFLINE, "vocab", raw, vocab_path)
    if provider in (OPENAI_COMPATIBLE, "openai_compatible"):
        return LLMSpec(OPENAI_COMPATIBLE, model, raw)
    if provider_info(provider) is None:
        known = ", ".join(sorted(init_chat_model_providers()))
        raise _spec_error(raw, f"unknown provider '{provider}' (LangChain knows: {known})")
    return LLMSpec(provider, model, raw)


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_base_url(spec: LLMSpec, base_url: str | None) -> str | None:
    """The base URL to use: the one given, else ``LINE_LLM_BASE_URL`` for openai-compatible."""
    if base_url:
        return base_url
    if spec.provider == OPENAI_COMPATIBLE:
        return os.environ.get(OPENAI_COMPATIBLE_URL_ENV) or None
    return None


def resolve_api_key(spec: LLMSpec, api_key: str | None = None) -> str | None:
    """The API key a spec will use (given, else from its environment variables), or None."""
    if api_key:
        return api_key
    if spec.provider == OPENAI_COMPATIBLE:
        # Never OPENAI_API_KEY here: that key must not travel to an arbitrary base URL.
        return os.environ.get(OPENAI_COMPATIBLE_KEY_ENV) or DUMMY_API_KEY
    info = provider_info(spec.provider)
    for name in info.key_env if info else ():
        if os.environ.get(name):
            return os.environ[name]
    return None


def check_llm_ready(
    spec: str | LLMSpec, base_url: str | None = None, api_key: str | None = None
) -> LLMSpec:
    """Fail fast, before anything loads: missing provider package, API key or base URL.

    Returns the parsed spec; raises :class:`LLMConfigError` saying what to install or set.
    """
    parsed = parse_llm_spec(spec)
    if parsed.is_offline:
        path = parsed.vocab_path
        if path is not None and not path.is_file():
            raise LLMConfigError(
                f"the vocabulary file {path} does not exist; give a text file with one concept "
                "per line, or use 'offline:vocab' for the built-in toy-world vocabulary"
            )
        return parsed
    if parsed.provider == OPENAI_COMPATIBLE:
        if not _module_present("langchain_openai"):
            raise LLMConfigError(
                "openai-compatible endpoints need langchain-openai: pip install langchain-openai"
            )
        url = resolve_base_url(parsed, base_url)
        if not url:
            raise LLMConfigError(
                f"'{parsed.raw}' needs the server's base URL, e.g. http://127.0.0.1:8000/v1 "
                "(vLLM, llama.cpp server, LM Studio): pass it as the LLM base URL option or set "
                f"{OPENAI_COMPATIBLE_URL_ENV}"
            )
        if not re.match(r"^https?://", url):
            raise LLMConfigError(
                f"the base URL {url!r} must start with http:// or https://, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        return parsed
    info = provider_info(parsed.provider)
    assert info is not None  # parse_llm_spec accepted it
    if not _module_present("langchain"):
        raise LLMConfigError("provider:model specs need langchain: pip install langchain")
    if not _module_present(info.module.split(".")[0]):
        raise LLMConfigError(
            f"the '{parsed.provider}' provider needs the package {info.package}: "
            f"pip install {info.package}"
        )
    if info.key_env and not resolve_api_key(parsed, api_key):
        names = " or ".join(info.key_env)
        raise LLMConfigError(
            f"'{parsed.raw}' needs an API key: set {names} (export {info.key_env[0]}=...)"
        )
    return parsed


def build_chat_model(
    spec: str | LLMSpec,
    *,
    base_url: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout_s: float = 120,
    api_key: str | None = None,
) -> BaseChatModel:
    """A LangChain chat model for a spec, with the provider's own retries off (LLMClient retries).

    openai and openai-compatible build ``ChatOpenAI`` on the Chat Completions API; other
    providers go through ``init_chat_model``; ``offline:vocab`` builds the non-LLM proposer.
    """
    parsed = check_llm_ready(spec, base_url, api_key)
    if parsed.is_offline:
        path = str(parsed.vocab_path) if parsed.vocab_path else None
        try:
            return OfflineVocabProposer(vocabulary_path=path)
        except ValueError as error:
            raise LLMConfigError(str(error)) from error
    optional: dict[str, Any] = {}
    if temperature is not None:
        optional["temperature"] = temperature
    if parsed.provider in ("openai", OPENAI_COMPATIBLE):
        from langchain_openai import ChatOpenAI

        if max_tokens is not None:
            optional["max_tokens"] = max_tokens
        compatible = parsed.provider == OPENAI_COMPATIBLE
        # An HTTP client of its own: langchain-openai's shared default client keeps connections
        # bound to the first event loop, which breaks the next ``asyncio.run`` in this process.
        optional["http_async_client"] = httpx.AsyncClient(timeout=timeout_s)
        return ChatOpenAI(
            model=parsed.model,
            base_url=resolve_base_url(parsed, base_url),
            api_key=resolve_api_key(parsed, api_key),
            use_responses_api=False,
            max_retries=0,
            timeout=timeout_s,
            stream_usage=True if compatible else None,
            **optional,
        )
    from langchain.chat_models import init_chat_model

    if parsed.provider == "ollama":
        if max_tokens is not None:
            optional["num_predict"] = max_tokens
        optional["client_kwargs"] = {"timeout": timeout_s}
    else:
        if max_tokens is not None:
            optional["max_tokens"] = max_tokens
        optional["timeout"] = timeout_s
        optional["max_retries"] = 0
    if base_url:
        optional["base_url"] = base_url
    if api_key:
        optional["api_key"] = api_key
    try:
        return init_chat_model(f"{parsed.provider}:{parsed.model}", **optional)
    except ImportError as error:
        info = provider_info(parsed.provider)
        assert info is not None
        raise LLMConfigError(
            f"the '{parsed.provider}' provider needs {info.package}: pip install {info.package} "
            f"({error})"
        ) from error


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter; ``Retry-After`` wins when the server sends it."""

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    """A server asking to wait longer than this is treated as out of quota: give up at once."""

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after_s is not None:
            return max(0.0, retry_after_s) * (1 + 0.1 * rng.random())
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * rng.random())


FAULT_KINDS = ("rate_limited", "server_errors", "timeouts", "connection_errors")


def _status_code(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def classify_error(error: BaseException) -> str | None:
    """The transient fault an exception is (one of ``FAULT_KINDS``), or None if not retryable."""
    status = _status_code(error)
    if status == 429:
        return "rate_limited"
    if status is not None and status >= 500:
        return "server_errors"
    if status == 408:
        return "timeouts"
    if status is not None:
        return None
    names = {cls.__name__ for cls in type(error).__mro__}
    timeout_names = ("Timeout", "DeadlineExceeded")
    if isinstance(error, TimeoutError) or any(t in name for name in names for t in timeout_names):
        return "timeouts"
    if isinstance(error, ConnectionError) or names & {
        "APIConnectionError",
        "ConnectError",
        "NetworkError",
        "RemoteProtocolError",
        "ReadError",
        "WriteError",
    }:
        return "connection_errors"
    if names & {"RateLimitError", "ResourceExhausted", "TooManyRequests"}:
        return "rate_limited"
    if names & {
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableError",
        "OverloadedError",
        "BadGateway",
    }:
        return "server_errors"
    return None


def retry_after_s(error: BaseException) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``Retry-After``), if it said."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return float(milliseconds) / 1000
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _advice(fault: str | None, error: BaseException) -> str:
    status = _status_code(error)
    if fault == "rate_limited":
        return "the provider keeps rate-limiting: lower the LLM concurrency or retry later"
    if fault == "server_errors":
        return "the provider keeps failing on its side: retry later or try another model"
    if fault == "timeouts":
        return "the model did not answer in time: raise the LLM timeout or check the server"
    if fault == "connection_errors":
        return "cannot reach the LLM server: check the base URL and that the server is running"
    if status in (401, 403):
        return "the API key was refused: check the key in your environment"
    if status == 404:
        return "model or endpoint not found: check the model name and that the base URL ends in /v1"
    if status == 400:
        return "the request was refused: check the model supports tool calling and these settings"
    return "check the error message above and the LLM settings"


class LLMCallError(RuntimeError):
    """A model call failed for good (not retryable, or out of attempts); says what to do."""

    def __init__(self, message: str, *, attempts: int, fault: str | None, faults: dict[str, int]):
        super().__init__(message)
        self.attempts = attempts
        self.fault = fault
        self.faults = dict(faults)


@dataclass
class LLMReply:
    """One answer of the model with what it cost."""

    message: AIMessage
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    attempts: int = 1
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    elapsed_s: float = 0.0
    cache_key: str | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens of this reply (0 for a cache hit)."""
        return self.input_tokens + self.output_tokens


@dataclass
class LLMUsage:
    """Running totals of an :class:`LLMClient`."""

    replies: int = 0
    requests: int = 0
    cached: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class CachedReply:
    """A stored answer: the message and the tokens it cost when it was made."""

    message: AIMessage
    input_tokens: int
    output_tokens: int


class ResponseCache:
    """Model answers on disk, one JSON file per request key (``<folder>/ab/abcd....json``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the answer for ``key`` lives."""
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedReply | None:
        """The stored answer, or None (also for an unreadable file)."""
        try:
            row = json.loads(self.path(key).read_text(encoding="utf-8"))
            message = messages_from_dict([row["message"]])[0]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(message, AIMessage):
            return None
        return CachedReply(message, int(row["input_tokens"]), int(row["output_tokens"]))

    def put(self, key: str, reply: CachedReply) -> None:
        """Store an answer atomically."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {
            "message": message_to_dict(reply.message),
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "stored_at": time.time(),
        }
        tmp = path.with_suffix(f".{os.getpid()}.{id(row)}.tmp")
        tmp.write_text(json.dumps(row, default=str), encoding="utf-8")
        os.replace(tmp, path)

    def discard(self, key: str) -> None:
        """Forget an answer (e.g. one the graph found unusable and wants asked again)."""
        self.path(key).unlink(missing_ok=True)


def _message_key(message: BaseMessage) -> dict[str, Any]:
    """What of a message reaches the model (ids, metadata and usage left out)."""
    row: dict[str, Any] = {"type": message.type, "content": message.content}
    if message.name:
        row["name"] = message.name
    if isinstance(message, AIMessage):
        row["tool_calls"] = [
            {"name": call["name"], "args": call["args"], "id": call.get("id")}
            for call in message.tool_calls
        ]
        row["invalid_tool_calls"] = [
            {"name": call.get("name"), "args": call.get("args"), "id": call.get("id")}
            for call in message.invalid_tool_calls
        ]
    if isinstance(message, ToolMessage):
        row["tool_call_id"] = message.tool_call_id
        row["status"] = message.status
    return row


def model_identity(model: BaseChatModel) -> str:
    """A stable description of a model and its settings (no secrets), for cache keys."""
    cls = type(model)
    try:
        params = dict(model._identifying_params)
    except Exception:  # some integrations compute these lazily; the class still identifies
        params = {}
    for attribute in ("openai_api_base", "base_url", "anthropic_api_url"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            params[f"_{attribute}"] = value
    return json.dumps(
        {"class": f"{cls.__module__}.{cls.__qualname__}", "params": params},
        sort_keys=True,
        default=str,
    )


class LLMClient:
    """A chat model behind a connection limit, retries, an optional cache and token accounting.

    Safe to share between concurrent neuron tasks on one event loop: share one client per
    provider so the connection limit holds for all of them.
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        spec: str | LLMSpec | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        cache_dir: str | Path | None = None,
        attempt_timeout_s: float | None = None,
        identity: str | None = None,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``spec`` names the model in errors and cache keys; ``attempt_timeout_s`` bounds one
        attempt on our side as well (for providers whose own timeout is unreliable); ``sleep``
        and ``seed`` make backoff testable."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.model = model
        self.spec = str(spec) if spec is not None else None
        self.retry = retry or RetryPolicy()
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.attempt_timeout_s = attempt_timeout_s
        self.identity = identity or f"{self.spec or ''}|{model_identity(model)}"
        self.usage = LLMUsage()
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._rng = random.Random(seed)
        self._sleep = sleep

    def cache_key(
        self,
        messages: Sequence[BaseMessage],
        tool_schemas: Sequence[Mapping[str, Any]],
        tool_choice: Any,
    ) -> str:
        """sha256 of model identity, messages, tool schemas and tool choice."""
        payload = {
            "model": self.identity,
            "messages": [_message_key(message) for message in messages],
            "tools": list(tool_schemas),
            "tool_choice": tool_choice,
        }
        text = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def discard_cached(self, key: str | None) -> None:
        """Forget a cached answer (no-op without a cache or key)."""
        if self.cache is not None and key:
            self.cache.discard(key)

    async def invoke(
        self,
        messages: Sequence[BaseMessage | Mapping[str, Any] | tuple[str, str] | str],
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        *,
        use_cache: bool = True,
    ) -> LLMReply:
        """Ask the model once (retrying transient faults); raises :class:`LLMCallError`."""
        started = time.monotonic()
        history = convert_to_messages(messages)
        schemas = [convert_to_openai_tool(tool) for tool in tools or ()]
        key = self.cache_key(history, schemas, tool_choice) if self.cache is not None else None
        if key is not None and use_cache and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.replies += 1
                self.usage.cached += 1
                message = hit.message.model_copy(
                    update={
                        "usage_metadata": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
                    }
                )
                message.response_metadata = {
                    **message.response_metadata,
                    "line_cache": {
                        "hit": True,
                        "input_tokens": hit.input_tokens,
                        "output_tokens": hit.output_tokens,
                    },
                }
                return LLMReply(message, 0, 0, True, 0, cache_key=key)

        runnable: Any = self.model
        if tools:
            runnable = (
                self.model.bind_tools(tools, tool_choice=tool_choice)
                if tool_choice is not None
                else self.model.bind_tools(tools)
            )
        faults = dict.fromkeys(FAULT_KINDS, 0)
        attempt = 0
        while True:
            attempt += 1
            self.usage.requests += 1
            try:
                async with self._semaphore:
                    call = runnable.ainvoke(history)
                    if self.attempt_timeout_s is not None:
                        answer = await asyncio.wait_for(call, self.attempt_timeout_s)
                    else:
                        answer = await call
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                fault = classify_error(error)
                if fault is not None:
                    faults[fault] += 1
                    setattr(self.usage, fault, getattr(self.usage, fault) + 1)
                wait = retry_after_s(error) if fault is not None else None
                out_of_quota = wait is not None and wait > self.retry.max_retry_after_s
                if fault is None or attempt >= self.retry.max_attempts or out_of_quota:
                    self.usage.failures += 1
                    raise self._failure(error, fault, attempt, faults, wait) from error
                await self._sleep(self.retry.delay_s(attempt, wait, self._rng))

        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=getattr(answer, "content", str(answer)))
        usage = answer.usage_metadata or {}
        input_tokens = int(usage.get("input_tokens", 0) or 0)
        output_tokens = int(usage.get("output_tokens", 0) or 0)
        self.usage.replies += 1
        self.usage.input_tokens += input_tokens
        self.usage.output_tokens += output_tokens
        if key is not None and self.cache is not None:
            self.cache.put(key, CachedReply(answer, input_tokens, output_tokens))
        return LLMReply(
            message=answer,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached=False,
            attempts=attempt,
            elapsed_s=time.monotonic() - started,
            cache_key=key,
            **faults,
        )

    def _failure(
        self,
        error: BaseException,
        fault: str | None,
        attempts: int,
        faults: dict[str, int],
        wait: float | None,
    ) -> LLMCallError:
        what = f"{type(error).__name__}: {str(error)[:300] or 'no message'}"
        if self.spec:
            what = f"{self.spec}: {what}"
        if wait is not None and wait > self.retry.max_retry_after_s:
            text = (
                f"the LLM provider asks to wait {wait:.0f} s before the next request (over the "
                f"{self.retry.max_retry_after_s:.0f} s limit; quota exhausted?): {what}. "
                "Retry later or use another model"
            )
        elif fault is None:
            text = f"the LLM call failed: {what}. {_advice(fault, error)}"
        else:
            text = (
                f"the LLM call failed after {attempts} attempts "
                f"({fault.replace('_', ' ')}): {what}. {_advice(fault, error)}"
            )
        return LLMCallError(text, attempts=attempts, fault=fault, faults=faults)


def build_llm_client(
    spec: str | LLMSpec,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout_s: float = 120,
    max_concurrency: int = 16,
    retry: RetryPolicy | None = None,
    cache_dir: str | Path | None = None,
) -> LLMClient:
    """Check a spec, build its chat model and wrap it in an :class:`LLMClient`."""
    model = build_chat_model(
        spec,
        base_url=base_url,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        api_key=api_key,
    )
    return LLMClient(
        model,
        spec=spec,
        max_concurrency=max_concurrency,
        retry=retry,
        cache_dir=cache_dir,
        attempt_timeout_s=timeout_s + 10,
    )
