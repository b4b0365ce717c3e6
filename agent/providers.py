"""LLM providers: parse ``provider:model`` specs, check them early, build chat models, call them.

Specs:

- ``provider:model`` for any provider LangChain's ``init_chat_model`` knows
  (``openai:gpt-4o-mini``, ``anthropic:claude-sonnet-4-5``, ``ollama:llama3.1:8b``, ...);
- ``openai-compatible:<model>`` for a vLLM, llama.cpp or LM Studio server given by base URL;
- ``offline:vocab`` or ``offline:vocab:<vocabulary file>``: the deterministic non-LLM proposer.

:class:`LLMClient` wraps a chat model with a connection limit and tenacity retries of transient
faults (429, 5xx, timeouts, connection errors; ``Retry-After`` honoured), and reports what each
answer cost. :class:`LLMResponseCache` is a LangChain cache on disk: set on the chat model, a
repeated request is answered without a call. Re-asking after an unusable answer is the graph's
job; :mod:`agent.answers` tells it when to.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from langchain.chat_models import init_chat_model
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    MessageLikeRepresentation,
    convert_to_messages,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.messages.utils import count_tokens_approximately, trim_messages
from langchain_core.outputs import ChatGeneration
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from agent.offline import OfflineVocabProposer
from tools.availability import DEFAULT_PATIENCE_S, AvailabilityGate, EndpointUnreachable, Probe
from tools.retry import FaultKind, RetryPolicy, classify_fault, status_code_of

log = logging.getLogger("line.llm")

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


def _provider(name: str, *key_env: str, module: str | None = None) -> ProviderInfo:
    module = module or f"langchain_{name}"
    return ProviderInfo(module, module.replace("_", "-"), key_env)


# Providers checked early here. Any other provider whose integration package
# (langchain-<provider>) is installed is left to init_chat_model to accept or refuse.
KNOWN_PROVIDERS: dict[str, ProviderInfo] = {
    "openai": _provider("openai", "OPENAI_API_KEY"),
    "anthropic": _provider("anthropic", "ANTHROPIC_API_KEY"),
    "ollama": _provider("ollama"),
    "groq": _provider("groq", "GROQ_API_KEY"),
    "google_genai": _provider("google_genai", "GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "google_vertexai": _provider("google_vertexai"),
    "mistralai": _provider("mistralai", "MISTRAL_API_KEY"),
    "deepseek": _provider("deepseek", "DEEPSEEK_API_KEY"),
    "xai": _provider("xai", "XAI_API_KEY"),
    "together": _provider("together", "TOGETHER_API_KEY"),
    "fireworks": _provider("fireworks", "FIREWORKS_API_KEY"),
    "cohere": _provider("cohere", "COHERE_API_KEY"),
    "openrouter": _provider("openrouter", "OPENROUTER_API_KEY"),
    "nvidia": _provider("nvidia", "NVIDIA_API_KEY", module="langchain_nvidia_ai_endpoints"),
    "azure_openai": _provider("azure_openai", "AZURE_OPENAI_API_KEY", module="langchain_openai"),
    "bedrock": _provider("bedrock", module="langchain_aws"),
    "bedrock_converse": _provider("bedrock_converse", module="langchain_aws"),
    "huggingface": _provider("huggingface"),
}


EXTRAS = {"anthropic": "anthropic", "ollama": "ollama", "groq": "groq", "google_genai": "google"}
"""Providers with an extra of this package (``pip install 'line-agent[anthropic]'``)."""


def install_hint(provider: str) -> str:
    """The command that installs a provider's integration (and its extra, when it has one)."""
    package = provider_package(provider)
    extra = EXTRAS.get(provider)
    if extra:
        return f"pip install {package} (or pip install 'line-agent[{extra}]')"
    return f"pip install {package}"


def provider_package(provider: str) -> str:
    """The pip package of a provider's LangChain integration (``langchain-<provider>`` unless
    the table says otherwise)."""
    info = KNOWN_PROVIDERS.get(provider)
    return info.package if info else _provider(provider).package


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
    if provider not in KNOWN_PROVIDERS and not _module_present(_provider(provider).module):
        known = ", ".join(sorted(KNOWN_PROVIDERS))
        raise _spec_error(
            raw,
            f"unknown provider '{provider}' (known: {known}; another provider of LangChain's "
            f"init_chat_model works once its package is installed: pip install "
            f"{provider_package(provider)})",
        )
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
    info = KNOWN_PROVIDERS.get(spec.provider)
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
    info = KNOWN_PROVIDERS.get(parsed.provider)
    if info is None:  # an installed integration we keep no table for: init_chat_model decides
        return parsed
    if not _module_present(info.module):
        raise LLMConfigError(
            f"the '{parsed.provider}' provider needs the package {info.package}: "
            f"{install_hint(parsed.provider)}"
        )
    if info.key_env and not resolve_api_key(parsed, api_key):
        names = " or ".join(info.key_env)
        raise LLMConfigError(
            f"'{parsed.raw}' needs an API key: set {names} (export {info.key_env[0]}=...)"
        )
    return parsed


# --------------------------------------------------------------------------- images

TEXT_ONLY_PROVIDERS = {"deepseek": "DeepSeek's chat API takes text only"}
"""Providers whose chat API takes no images."""
TEXT_ONLY_MODELS = re.compile(
    r"(?:^|[/:])(?:gpt-3\.5|o1-mini|o3-mini|deepseek-(?:chat|reasoner|r1|v[23])|"
    r"llama-?3(?:\.[0-3])?(?:[-:]|$)|qwen2(?:\.5)?(?:[-:]|$)|qwen3(?:[-:]|$)|mistral(?:[-:]7b|$|:)|"
    r"mixtral|phi-?3|gemma-?2|gemma3:1b|smollm|tinyllama|codellama)",
    re.IGNORECASE,
)
"""Model names known to take text only (their vision siblings, such as llama3.2-vision,
qwen2.5-vl or gemma3:4b, are not matched)."""
VISION_MARKERS = re.compile(r"vision|[-_.]vl\b|-vl-|llava|multimodal|omni", re.IGNORECASE)


def images_refusal(spec: str | LLMSpec) -> str | None:
    """Why a model is known not to accept images (None: it may; the offline proposer reads the
    text and ignores images)."""
    parsed = parse_llm_spec(spec)
    if parsed.is_offline:
        return None
    if parsed.provider in TEXT_ONLY_PROVIDERS:
        return TEXT_ONLY_PROVIDERS[parsed.provider]
    if VISION_MARKERS.search(parsed.model):
        return None
    if TEXT_ONLY_MODELS.search(parsed.model):
        return f"{parsed.model} is a text-only model"
    return None


def check_accepts_images(spec: str | LLMSpec, images: int) -> None:
    """Refuse, before a run starts, to send ``images`` per proposal to a model known to take
    text only (:func:`images_refusal`)."""
    if images <= 0:
        return
    why = images_refusal(spec)
    if why is not None:
        raise LLMConfigError(
            f"--llm-images {images} sends images with every proposal, and '{spec}' cannot read "
            f"them ({why}); use a vision model (e.g. openai:gpt-4o-mini, "
            "anthropic:claude-sonnet-4-5, ollama:gemma3:4b, ollama:llava) or --llm-images 0"
        )


# --------------------------------------------------------------------------- pre-flight

PROBE_TIMEOUT_S = 5.0
"""How long pre-flight waits for an LLM endpoint to answer."""
CONTEXT_KEYS = (
    "max_model_len",  # vLLM
    "n_ctx",  # llama.cpp servers
    "loaded_context_length",  # LM Studio
    "context_length",
    "context_window",
    "max_context_length",
)
"""Fields in which servers state the context window they run a model with."""


@dataclass(frozen=True)
class LLMEndpoint:
    """What an LLM endpoint said about itself before a run: where it is, the models it lists
    and the context window it runs with (None when it does not say)."""

    url: str
    models: tuple[str, ...] = ()
    context_window: int | None = None
    context_from: str = ""
    """Where the context window was read (``GET /v1/models``, ``GET /props``)."""


def _find_context(data: Any) -> int | None:
    """The first positive whole number under one of :data:`CONTEXT_KEYS`, searched depth
    first through dicts and lists."""
    if isinstance(data, Mapping):
        for key in CONTEXT_KEYS:
            value = data.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        children: Any = data.values()
    elif isinstance(data, list):
        children = data
    else:
        return None
    for child in children:
        found = _find_context(child)
        if found:
            return found
    return None


def _unreachable(url: str, error: BaseException) -> LLMConfigError:
    return LLMConfigError(
        f"cannot reach the LLM server at {url} ({type(error).__name__}: {error}); start it "
        "(python -m llama_cpp.server, llama-server, vllm serve, ollama serve, LM Studio) or fix "
        "--llm-base-url"
    )


def _get_json(client: httpx.Client, url: str, what: str) -> Any:
    """GET a JSON document; a failure to connect, a refused key or a missing page says what
    to fix."""
    try:
        response = client.get(url)
    except httpx.HTTPError as error:
        raise _unreachable(url, error) from error
    if response.status_code in (401, 403):
        raise LLMConfigError(
            f"the LLM server at {url} refused the API key (HTTP {response.status_code}): set "
            f"{OPENAI_COMPATIBLE_KEY_ENV} (openai-compatible) or the provider's key variable"
        )
    if response.status_code == 404:
        raise LLMConfigError(f"the LLM server has no {url} (HTTP 404): {what}")
    if response.status_code >= 400:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def probe_llm_endpoint(
    spec: str | LLMSpec,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> LLMEndpoint | None:
    """Pre-flight of a local or OpenAI-compatible LLM: ask its endpoint for its model list
    (``GET <base>/models``; Ollama's ``/api/tags``) and the context window it runs with, so a
    wrong URL or a server that is down fails in seconds, before any run folder or model.

    The window is read where servers state it: vLLM's ``max_model_len`` in the model list,
    llama.cpp's ``n_ctx`` (``GET /props``, ``GET /v1/models``), LM Studio's
    ``loaded_context_length``. Returns None where nothing is asked: the offline proposer, and
    hosted APIs without a base URL (their key is checked by :func:`check_llm_ready`).
    Raises :class:`LLMConfigError` saying what to fix.
    """
    parsed = check_llm_ready(spec, base_url, api_key)
    if parsed.is_offline:
        return None
    url = resolve_base_url(parsed, base_url)
    if parsed.provider == "ollama":
        root = ollama_root(url)
        with httpx.Client(timeout=timeout_s) as client:
            tags = _get_json(client, f"{root}/api/tags", "is this an Ollama server?") or {}
        names = tuple(str(m.get("name", "")) for m in tags.get("models", []) or [])
        wanted = {parsed.model, f"{parsed.model}:latest"}
        if names and not wanted & set(names):
            raise LLMConfigError(
                f"Ollama at {root} has no model {parsed.model!r} (it has: {', '.join(names)}); "
                f"run: ollama pull {parsed.model}"
            )
        return LLMEndpoint(root, names)
    if parsed.provider not in (OPENAI_COMPATIBLE, "openai") or not url:
        return None
    url = url.rstrip("/")
    key = resolve_api_key(parsed, api_key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        listed = _get_json(client, f"{url}/models", "check the base URL ends in /v1") or {}
        entries = listed.get("data") if isinstance(listed, Mapping) else None
        entries = [entry for entry in entries or [] if isinstance(entry, Mapping)]
        names = tuple(str(entry.get("id", "")) for entry in entries)
        mine = [entry for entry in entries if entry.get("id") == parsed.model] or entries[:1]
        context, where = _find_context(mine), "GET /v1/models"
        if context is None:  # llama.cpp's server states the window it runs with in /props
            root = re.sub(r"/v1$", "", url)
            try:
                props = client.get(f"{root}/props")
                found = _find_context(props.json()) if props.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                found = None
            context, where = found, "GET /props"
    return LLMEndpoint(url, names, context, where if context else "")


HOSTED_PROBE_URLS = {
    "openai": "https://api.openai.com/v1/models",
    "anthropic": "https://api.anthropic.com/v1/models",
}
"""Where a hosted API without a base URL is asked whether it answers during an outage."""


def ollama_root(base_url: str | None) -> str:
    """The Ollama server's root URL: the one given, else ``OLLAMA_HOST``, else the default."""
    root = (base_url or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434").rstrip("/")
    return root if re.match(r"^https?://", root) else f"http://{root}"


def llm_probe_url(spec: str | LLMSpec, base_url: str | None = None) -> str | None:
    """The URL that tells whether an LLM endpoint answers (its model list), or None where
    none is known (the offline proposer; a hosted API LINE keeps no address for)."""
    parsed = parse_llm_spec(spec)
    if parsed.is_offline:
        return None
    if parsed.provider == "ollama":
        return f"{ollama_root(base_url)}/api/tags"
    url = resolve_base_url(parsed, base_url)
    if url:
        return f"{url.rstrip('/')}/models"
    return HOSTED_PROBE_URLS.get(parsed.provider)


def http_probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """A probe that GETs ``url``: any HTTP answer (even 401 or 404) means it is reachable."""

    async def answers() -> bool:
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                await client.get(url)
        except httpx.HTTPError:
            return False
        return True

    return answers


def llm_gate(
    spec: str | LLMSpec, base_url: str | None = None, patience_s: float = DEFAULT_PATIENCE_S
) -> AvailabilityGate | None:
    """The availability gate of an LLM endpoint (None where no probe URL is known)."""
    url = llm_probe_url(spec, base_url)
    if url is None:
        return None
    endpoint = re.sub(r"/(models|api/tags)$", "", url)
    return AvailabilityGate(f"LLM endpoint {endpoint}", http_probe(url), patience_s=patience_s)


def build_chat_model(
    spec: str | LLMSpec,
    *,
    base_url: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout_s: float = 120,
    api_key: str | None = None,
    cache: BaseCache | None = None,
) -> BaseChatModel:
    """A LangChain chat model for a spec, with the provider's own retries off (LLMClient retries).

    openai and openai-compatible build ``ChatOpenAI`` on the Chat Completions API; other
    providers go through ``init_chat_model``; ``offline:vocab`` builds the non-LLM proposer.
    ``cache`` (e.g. an :class:`LLMResponseCache`) answers repeated requests without a call.
    """
    parsed = check_llm_ready(spec, base_url, api_key)
    if parsed.is_offline:
        path = str(parsed.vocab_path) if parsed.vocab_path else None
        try:
            return OfflineVocabProposer(vocabulary_path=path, cache=cache)
        except ValueError as error:
            raise LLMConfigError(str(error)) from error
    optional: dict[str, Any] = {}
    if temperature is not None:
        optional["temperature"] = temperature
    if cache is not None:
        optional["cache"] = cache
    if parsed.provider in ("openai", OPENAI_COMPATIBLE):
        if max_tokens is not None:
            optional["max_tokens"] = max_tokens
        compatible = parsed.provider == OPENAI_COMPATIBLE
        # An HTTP client of its own: langchain-openai's shared default client keeps connections
        # bound to the first event loop, which breaks the next ``asyncio.run`` in this process.
        optional["http_async_client"] = httpx.AsyncClient(timeout=timeout_s)
        key = resolve_api_key(parsed, api_key)
        return ChatOpenAI(
            model=parsed.model,
            base_url=resolve_base_url(parsed, base_url),
            api_key=SecretStr(key) if key else None,
            use_responses_api=False,
            max_retries=0,
            timeout=timeout_s,
            stream_usage=True if compatible else None,
            **optional,
        )
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
        package = provider_package(parsed.provider)
        raise LLMConfigError(
            f"the '{parsed.provider}' provider needs {package}: {install_hint(parsed.provider)} "
            f"({error})"
        ) from error
    except ValueError as error:  # a provider init_chat_model does not know, or bad settings
        raise LLMConfigError(f"LangChain cannot build '{parsed.raw}': {error}") from error


# --------------------------------------------------------------------------- response cache

CACHE_HIT = "line_cache_hit"
"""``response_metadata`` key that marks an answer :class:`LLMResponseCache` gave back."""


class LLMResponseCache(BaseCache):
    """LangChain's chat-model cache on disk: the answers to each request, keyed as LangChain
    keys them (the serialized messages, and the model with its settings and bound tools), one
    JSON file per key (``<folder>/ab/abcd....json``). Safe for several processes at once.

    Answers it gives back carry ``response_metadata[CACHE_HIT]``; their ``usage_metadata`` is
    what they cost when they were made.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, prompt: str, llm_string: str) -> Path:
        """Where the answers to a request live."""
        key = hashlib.sha256(json.dumps([llm_string, prompt]).encode("utf-8")).hexdigest()
        return self.folder / key[:2] / f"{key}.json"

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The stored answers, marked as cache hits; None when absent or unreadable."""
        try:
            stored = messages_from_dict(json.loads(self.path(prompt, llm_string).read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return [
            ChatGeneration(
                message=message.model_copy(
                    update={"response_metadata": {**message.response_metadata, CACHE_HIT: True}}
                )
            )
            for message in stored
        ]

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the answers to a request atomically (chat answers only)."""
        answers = [g.message for g in return_val if isinstance(g, ChatGeneration)]
        if not answers or len(answers) != len(return_val):
            return
        rows = [message_to_dict(message) for message in answers]
        path = self.path(prompt, llm_string)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, suffix=".part", delete=False, encoding="utf-8"
        ) as partial:
            json.dump(rows, partial, default=str)
        os.replace(partial.name, path)

    def clear(self, **kwargs: Any) -> None:
        """Forget every stored answer."""
        for path in self.folder.glob("*/*.json"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- client

_OPENAI_FAULTS: tuple[tuple[type[openai.OpenAIError], FaultKind], ...] = (
    (openai.RateLimitError, FaultKind.RATE_LIMITED),
    (openai.APITimeoutError, FaultKind.TIMEOUTS),  # before APIConnectionError, its base class
    (openai.APIConnectionError, FaultKind.CONNECTION_ERRORS),
    (openai.InternalServerError, FaultKind.SERVER_ERRORS),
)


def classify_error(error: BaseException) -> FaultKind | None:
    """The transient fault an LLM call's exception is, or None if retrying cannot help.

    The openai SDK's exception types decide for OpenAI and OpenAI-compatible servers; other
    SDKs' errors go by their HTTP status, their type (builtin, httpx) or what they wrap.
    """
    for error_type, kind in _OPENAI_FAULTS:
        if isinstance(error, error_type):
            return kind
    return classify_fault(error)


_CONTEXT_OVERFLOW = re.compile(
    r"context (?:length|window|size)|maximum context|exceeds? (?:the )?(?:available )?context|"
    r"too many tokens|n_ctx|prompt is too long|input is too long",
    re.IGNORECASE,
)


_STATED_WINDOW = re.compile(
    r"(?:maximum context length is|context window of|context length of|n_ctx\W{0,3}=?\s*)"
    r"\s*(\d{3,7})",
    re.IGNORECASE,
)


def is_context_overflow(error: BaseException) -> bool:
    """Whether an LLM error says the request did not fit the model's context window."""
    return bool(_CONTEXT_OVERFLOW.search(str(error)))


def context_window_of(error: BaseException | None) -> int | None:
    """The context window a "does not fit" error states (llama.cpp, vLLM, OpenAI word it
    "maximum context length is N tokens"), or None."""
    if error is None or not is_context_overflow(error):
        return None
    match = _STATED_WINDOW.search(str(error))
    return int(match[1]) if match else None


def _advice(fault: FaultKind | None, error: BaseException, tools: bool = True) -> str:
    status = status_code_of(error)
    if is_context_overflow(error):
        return (
            "the request did not fit the model's context window: give the window with "
            "--llm-context N (the size the server runs with), or start the server with a "
            "larger one (llama.cpp: --n_ctx / -c, Ollama: num_ctx, vLLM: --max-model-len)"
        )
    if fault == FaultKind.RATE_LIMITED:
        return "the provider keeps rate-limiting: lower the LLM concurrency or retry later"
    if fault == FaultKind.SERVER_ERRORS:
        return "the provider keeps failing on its side: retry later or try another model"
    if fault == FaultKind.TIMEOUTS:
        return "the model did not answer in time: raise the LLM timeout or check the server"
    if fault == FaultKind.CONNECTION_ERRORS:
        return "cannot reach the LLM server: check the base URL and that the server is running"
    if status in (401, 403):
        return "the API key was refused: check the key in your environment"
    if status == 404:
        return "model or endpoint not found: check the model name and that the base URL ends in /v1"
    if status == 400 and re.search(r"image|vision|multimodal", str(error), re.IGNORECASE):
        return (
            "the server refused the request's images (--llm-images): use a vision-capable "
            "model or run with --llm-images 0"
        )
    if status == 400 and tools and re.search(r"tool|function", str(error), re.IGNORECASE):
        return "the request's tools were refused: check the model and server support tool calling"
    if status == 400:
        return "the server refused the request: check the model name and the LLM settings"
    return "check the error message above and the LLM settings"


class LLMCallError(RuntimeError):
    """A model call failed for good (not retryable, or out of attempts); says what to do.

    ``faults`` counts the transient faults met on the way, by :class:`FaultKind` value.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        fault: FaultKind | None,
        faults: Mapping[FaultKind, int],
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.fault = fault
        self.faults: dict[str, int] = {kind.value: count for kind, count in faults.items()}


@dataclass(frozen=True)
class LLMReply:
    """One answer of the model with what it cost (a cache hit: no attempt, no tokens)."""

    message: AIMessage
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    attempts: int = 1
    faults: Mapping[FaultKind, int] = field(default_factory=dict)
    """Transient faults retried before the answer came, per kind."""
    left_out: int = 0
    """Messages of the conversation left out to fit the context window (``fit``)."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens of this reply (0 for a cache hit)."""
        return self.input_tokens + self.output_tokens

    def counters(self) -> dict[str, int]:
        """What the reply adds to a neuron's counters: a call or a cache hit, tokens, faults."""
        return {
            "llm_calls": 0 if self.cached else 1,
            "llm_cached": 1 if self.cached else 0,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            **{kind.value: self.faults.get(kind, 0) for kind in FaultKind},
        }


CHARS_PER_TOKEN = 3.0
"""Characters per token the request estimate assumes: fewer than the usual 4, so the estimate
errs on the long side for small models' tokenizers, chat templates and JSON tool schemas."""
CONTEXT_MARGIN_TOKENS = 64
"""Tokens of the context window kept free for what the estimate misses (template markup)."""
MIN_ANSWER_TOKENS = 48
"""The fewest tokens an answer may be left: a request leaving less is refused before sending."""


FitMessages = Callable[[list[BaseMessage], int], list[BaseMessage]]
"""Shortens a conversation to a token budget (see :func:`trim_to_fit`)."""


def count_tokens(
    messages: Sequence[MessageLikeRepresentation], tools: Sequence[Any] | None = None
) -> int:
    """A cautious estimate of a request's prompt tokens (messages and tool schemas)."""
    return count_tokens_approximately(
        messages, chars_per_token=CHARS_PER_TOKEN, tools=list(tools) if tools else None
    )


def trim_to_fit(
    messages: Sequence[BaseMessage], max_tokens: int, keep_first: int = 2
) -> list[BaseMessage]:
    """The first ``keep_first`` messages (system prompt and task) and the latest others that
    fit ``max_tokens`` in all, cut before an AI message so no tool result loses its call
    (LangChain's ``trim_messages``). Everything when it all fits."""
    messages = list(messages)
    if count_tokens(messages) <= max_tokens:
        return messages
    head, rest = messages[:keep_first], messages[keep_first:]
    room = max(0, max_tokens - count_tokens(head))
    tail = trim_messages(
        rest,
        max_tokens=room,
        token_counter=lambda chunk: count_tokens(chunk),
        strategy="last",
        start_on="ai",
    )
    return [*head, *tail]


def _as_sent(message: BaseMessage) -> BaseMessage:
    """A message as the model reads it: an earlier answer without its usage and response
    metadata, which no provider sends back and which would change the cache key."""
    if isinstance(message, AIMessage) and (message.response_metadata or message.usage_metadata):
        return message.model_copy(update={"response_metadata": {}, "usage_metadata": None})
    return message


class LLMClient:
    """A chat model behind a connection limit and retries, reporting what each answer cost.

    Safe to share between concurrent neuron tasks on one event loop: share one client per
    provider so the connection limit holds for all of them. With a ``gate``
    (:func:`llm_gate`), an endpoint that cannot be reached is waited for once by every call
    together (:mod:`tools.availability`), not retried call by call.
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        spec: str | LLMSpec | None = None,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        attempt_timeout_s: float | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        context_window: int | None = None,
        max_output_tokens: int | None = None,
        gate: AvailabilityGate | None = None,
    ) -> None:
        """``spec`` names the model in errors; ``attempt_timeout_s`` bounds one attempt on our
        side as well (for providers whose own timeout is unreliable); ``sleep`` makes backoff
        testable. With ``context_window`` (tokens) every request is fitted to it: its answer
        may take what the prompt leaves (at most ``max_output_tokens``, by default a quarter
        of the window), and a prompt that leaves too little is refused before it is sent."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.model = model
        self.context_window = context_window
        self.max_output_tokens = max_output_tokens
        self.send_max_tokens = False
        """Send the answer's limit as ``max_tokens`` too (OpenAI-compatible servers such as
        llama-cpp-python read only that field, not ``max_completion_tokens``)."""
        self.spec = str(spec) if spec is not None else None
        self.retry = retry or RetryPolicy()
        self.attempt_timeout_s = attempt_timeout_s
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._sleep = sleep
        self.gate = gate

    @property
    def gates(self) -> list[AvailabilityGate]:
        """The endpoint's availability gate, when it has one."""
        return [self.gate] if self.gate is not None else []

    def _unreachable(self, error: BaseException) -> bool:
        """A failure the gate waits out: the endpoint could not be reached."""
        return self.gate is not None and classify_error(error) == FaultKind.CONNECTION_ERRORS

    def answer_reserve(self) -> int:
        """Tokens kept for the answer when the context window is known (else 0)."""
        if not self.context_window:
            return 0
        return self.max_output_tokens or max(MIN_ANSWER_TOKENS, self.context_window // 4)

    def message_budget(self, tools: Sequence[Any] | None = None) -> int | None:
        """Prompt tokens the messages of a request may take (the window less the tools, the
        answer's reserve and a margin); None when the context window is unknown."""
        if not self.context_window:
            return None
        spent = self.answer_reserve() + CONTEXT_MARGIN_TOKENS + (count_tokens([], tools) or 0)
        return max(0, self.context_window - spent)

    def _answer_tokens(self, request: list[BaseMessage], tools: Sequence[Any] | None) -> int:
        """The answer's token limit for this request, or :class:`LLMCallError` when the prompt
        leaves it too little room in the context window."""
        assert self.context_window
        prompt = count_tokens(request, tools)
        room = self.context_window - prompt - CONTEXT_MARGIN_TOKENS
        if room < MIN_ANSWER_TOKENS:
            raise LLMCallError(
                f"{self.spec or 'the LLM'}: the request needs about {prompt} tokens, more than "
                f"the model's context window of {self.context_window} tokens allows (with "
                f"{MIN_ANSWER_TOKENS} for the answer); use a model or server with a larger "
                "context (--llm-context N), fewer iterations or a smaller scoreboard",
                attempts=0,
                fault=None,
                faults={},
            )
        return min(self.answer_reserve(), room)

    async def invoke(
        self,
        messages: Sequence[MessageLikeRepresentation],
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        fit: FitMessages | None = None,
    ) -> LLMReply:
        """Ask the model once (retrying transient faults); raises :class:`LLMCallError`.

        With a context window (given, or learnt from a server's "maximum context length"
        error, after which the request is fitted and sent once more), the answer's length is
        bounded to what the prompt leaves, and ``fit`` (messages, token budget -> messages)
        may shorten the conversation first.
        """
        asked = [_as_sent(message) for message in convert_to_messages(messages)]
        window = self.context_window
        try:
            return await self._invoke_once(asked, tools, tool_choice, fit)
        except LLMCallError as failure:
            learnt = context_window_of(failure.__cause__)
            if learnt is None or (window is not None and learnt >= window):
                raise
            log.warning("%s: the server's context window is %d tokens", self.spec, learnt)
            self.context_window = learnt
            return await self._invoke_once(asked, tools, tool_choice, fit)

    async def _invoke_once(
        self,
        asked: list[BaseMessage],
        tools: Sequence[Any] | None,
        tool_choice: Any,
        fit: FitMessages | None,
    ) -> LLMReply:
        request = asked
        if self.context_window and fit is not None:
            request = fit(asked, self.message_budget(tools) or 0)
        runnable: Any = self.model
        if tools:
            choice = {} if tool_choice is None else {"tool_choice": tool_choice}
            runnable = self.model.bind_tools(tools, **choice)
        limit = self._answer_tokens(request, tools) if self.context_window else None
        limit = limit or self.max_output_tokens
        if limit:
            extra = {"extra_body": {"max_tokens": limit}} if self.send_max_tokens else {}
            runnable = runnable.bind(max_tokens=limit, **extra)
        faults: Counter[FaultKind] = Counter()
        attempts = 0

        async def attempt() -> BaseMessage:
            nonlocal attempts
            if self.gate is not None:  # during an outage: wait with every other call
                await self.gate.wait_until_up()
            attempts += 1
            sent_at = time.monotonic()
            try:
                async with self._semaphore:
                    sent_at = time.monotonic()  # after the wait for a slot
                    return await asyncio.wait_for(runnable.ainvoke(request), self.attempt_timeout_s)
            except Exception as error:
                if self.gate is not None and self._unreachable(error):
                    self.gate.report(error, sent_at)
                raise

        def count(kind: FaultKind) -> None:
            faults[kind] += 1

        retrying = self.retry.retrying(
            classify_error, on_fault=count, sleep=self._sleep, waited_elsewhere=self._unreachable
        )
        try:
            answer: BaseMessage = await retrying(attempt)
        except EndpointUnreachable:  # the outage outlasted the patience: the run stops
            raise
        except Exception as error:
            raise self._failure(error, attempts, faults, bool(tools)) from error
        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=getattr(answer, "content", str(answer)))
        kept = {id(message) for message in request}
        left_out = sum(id(message) not in kept for message in asked)
        if answer.response_metadata.get(CACHE_HIT):
            return LLMReply(answer, cached=True, attempts=0, left_out=left_out)
        usage: Mapping[str, Any] = answer.usage_metadata or {}
        return LLMReply(
            message=answer,
            input_tokens=int(usage.get("input_tokens", 0) or 0),
            output_tokens=int(usage.get("output_tokens", 0) or 0),
            attempts=attempts,
            faults=dict(faults),
            left_out=left_out,
        )

    def _failure(
        self,
        error: BaseException,
        attempts: int,
        faults: Mapping[FaultKind, int],
        tools: bool = True,
    ) -> LLMCallError:
        fault = classify_error(error)
        what = f"{type(error).__name__}: {str(error)[:300] or 'no message'}"
        if self.spec:
            what = f"{self.spec}: {what}"
        wait = self.retry.out_of_quota(error) if fault is not None else None
        if wait is not None:
            text = (
                f"the LLM provider asks to wait {wait:.0f} s before the next request (over the "
                f"{self.retry.max_retry_after_s:.0f} s limit; quota exhausted?): {what}. "
                "Retry later or use another model"
            )
        elif fault is None:
            text = f"the LLM call failed: {what}. {_advice(fault, error, tools)}"
        else:
            text = (
                f"the LLM call failed after {attempts} attempts "
                f"({fault.replace('_', ' ')}): {what}. {_advice(fault, error, tools)}"
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
    context_window: int | None = None,
    outage_patience_s: float = DEFAULT_PATIENCE_S,
) -> LLMClient:
    """Check a spec, build its chat model (with an :class:`LLMResponseCache` in ``cache_dir``)
    and wrap it in an :class:`LLMClient` (that fits every request to ``context_window`` and
    waits up to ``outage_patience_s`` for an endpoint that stops answering)."""
    model = build_chat_model(
        spec,
        base_url=base_url,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout_s,
        api_key=api_key,
        cache=LLMResponseCache(cache_dir) if cache_dir is not None else None,
    )
    client = LLMClient(
        model,
        spec=spec,
        max_concurrency=max_concurrency,
        retry=retry,
        attempt_timeout_s=timeout_s + 10,
        context_window=context_window,
        max_output_tokens=max_tokens,
        gate=llm_gate(spec, base_url, outage_patience_s),
    )
    client.send_max_tokens = parse_llm_spec(spec).provider == OPENAI_COMPATIBLE
    return client
