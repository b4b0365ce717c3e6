"""Providers: spec parsing, early checks, model building, the client's retries, the response
cache, and the helpers that tell the graph an answer is unusable."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from agent import providers
from agent.answers import (
    UnusableAnswer,
    concept_from_text,
    extract_concept_from_text,
    extract_tool_call,
    required_args_of,
)
from agent.offline import OfflineVocabProposer
from agent.providers import (
    LLMCallError,
    LLMClient,
    LLMConfigError,
    LLMResponseCache,
    build_chat_model,
    check_llm_ready,
    classify_error,
    count_tokens,
    parse_llm_spec,
    trim_to_fit,
)
from tools.retry import FaultKind, RetryPolicy, classify_fault, retry_after_s

KEY_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GROQ_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "MISTRAL_API_KEY",
    "LINE_LLM_API_KEY",
    "LINE_LLM_BASE_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


@tool
def propose_concept(concept: str) -> str:
    """Propose the next concept."""
    return concept


# ----- specs -----------------------------------------------------------------------------------


def test_parse_specs():
    spec = parse_llm_spec("openai:gpt-4o-mini")
    assert (spec.provider, spec.model, spec.raw) == ("openai", "gpt-4o-mini", "openai:gpt-4o-mini")
    assert parse_llm_spec("ollama:llama3.1:8b").model == "llama3.1:8b"
    assert parse_llm_spec("anthropic:claude-sonnet-4-5").provider == "anthropic"
    assert parse_llm_spec("openai-compatible:qwen2.5-7b").provider == "openai-compatible"
    offline = parse_llm_spec("offline:vocab")
    assert offline.is_offline and offline.vocab_path is None
    assert str(parse_llm_spec("offline:vocab:/tmp/words.txt").vocab_path) == "/tmp/words.txt"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "provider and a model"),
        ("gpt-4o", "did you mean 'openai:gpt-4o'"),
        ("nope:model", "unknown provider 'nope'"),
        ("offline:words", "offline:vocab"),
        ("openai:", "provider and a model"),
    ],
)
def test_bad_specs_list_the_forms(spec, fragment):
    with pytest.raises(LLMConfigError) as error:
        parse_llm_spec(spec)
    assert fragment in str(error.value)
    assert "openai-compatible:<model>" in str(error.value)
    assert "offline:vocab" in str(error.value)


# ----- readiness -------------------------------------------------------------------------------


def test_missing_api_key_names_the_variable(monkeypatch):
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        check_llm_ready("openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert check_llm_ready("openai:gpt-4o-mini").model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("spec", "variable"),
    [
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
        ("groq:llama-3.3-70b-versatile", "GROQ_API_KEY"),
        ("google_genai:gemini-2.5-flash", "GOOGLE_API_KEY"),
        ("mistralai:mistral-large-latest", "MISTRAL_API_KEY"),
    ],
)
def test_key_variables_per_provider(monkeypatch, spec, variable):
    monkeypatch.setattr(providers, "_module_present", lambda module: True)
    with pytest.raises(LLMConfigError, match=variable):
        check_llm_ready(spec)
    monkeypatch.setenv(variable, "secret")
    check_llm_ready(spec)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(
        providers, "_module_present", lambda module: module not in {"langchain_anthropic"}
    )
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
    with pytest.raises(LLMConfigError, match="pip install langchain-anthropic") as error:
        check_llm_ready("anthropic:claude-sonnet-4-5")
    assert "pip install 'line-agent[anthropic]'" in str(error.value)  # as the README says


def test_ollama_needs_no_key(monkeypatch):
    monkeypatch.setattr(providers, "_module_present", lambda module: True)
    check_llm_ready("ollama:llama3.1:8b")


def test_openai_compatible_needs_a_base_url(monkeypatch):
    with pytest.raises(LLMConfigError, match="base URL") as error:
        check_llm_ready("openai-compatible:qwen")
    assert "LINE_LLM_BASE_URL" in str(error.value)
    with pytest.raises(LLMConfigError, match="http://"):
        check_llm_ready("openai-compatible:qwen", base_url="127.0.0.1:8000/v1")
    check_llm_ready("openai-compatible:qwen", base_url="http://127.0.0.1:8000/v1")
    monkeypatch.setenv("LINE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    check_llm_ready("openai-compatible:qwen")


def test_offline_vocabulary_file_must_exist(tmp_path):
    with pytest.raises(LLMConfigError, match="does not exist"):
        check_llm_ready(f"offline:vocab:{tmp_path / 'missing.txt'}")


# ----- building --------------------------------------------------------------------------------


def test_build_openai_compatible(monkeypatch):
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")  # must not leak to a local URL
    model = build_chat_model(
        "openai-compatible:scripted", base_url="http://127.0.0.1:9/v1", timeout_s=7
    )
    assert isinstance(model, ChatOpenAI)
    assert model.max_retries == 0
    assert model.use_responses_api is False
    assert model.openai_api_base == "http://127.0.0.1:9/v1"
    assert model.openai_api_key.get_secret_value() == "not-needed"
    assert model.request_timeout == 7
    monkeypatch.setenv("LINE_LLM_API_KEY", "local-key")
    model = build_chat_model("openai-compatible:scripted", base_url="http://127.0.0.1:9/v1")
    assert model.openai_api_key.get_secret_value() == "local-key"


def test_build_offline(tmp_path):
    assert isinstance(build_chat_model("offline:vocab"), OfflineVocabProposer)
    path = tmp_path / "words.txt"
    path.write_text("wheel\nfur\n")
    model = build_chat_model(f"offline:vocab:{path}")
    assert model.vocabulary.concepts() == ["wheel", "fur"]


# ----- client ----------------------------------------------------------------------------------


def _error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    classes = {429: openai.RateLimitError, 401: openai.AuthenticationError}
    fallback = openai.InternalServerError if status >= 500 else openai.APIStatusError
    cls = classes.get(status, fallback)
    return cls(f"status {status}", response=response, body=None)


class FlakyModel(BaseChatModel):
    """Raises the scripted errors in order, then answers with a tool call."""

    errors: list[Any] = Field(default_factory=list)
    delay_s: float = 0.0
    _calls: int = PrivateAttr(default=0)
    _in_flight: int = PrivateAttr(default=0)
    _peak: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "flaky-test-model"

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self._calls += 1
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.errors:
                raise self.errors.pop(0)
        finally:
            self._in_flight -= 1
        message = AIMessage(
            content="",
            tool_calls=[{"name": "propose_concept", "args": {"concept": "red"}, "id": "c1"}],
            usage_metadata={"input_tokens": 11, "output_tokens": 3, "total_tokens": 14},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_retry_after_is_honoured_and_faults_counted():
    model = FlakyModel(errors=[_error(429, {"retry-after": "2"}), _error(503)])
    sleeps = Sleeps()
    client = LLMClient(model, sleep=sleeps)
    reply = await client.invoke([HumanMessage("go")], tools=[propose_concept])
    assert reply.attempts == 3
    assert reply.faults == {FaultKind.RATE_LIMITED: 1, FaultKind.SERVER_ERRORS: 1}
    assert 2.0 <= sleeps.delays[0] <= 2.2
    assert 1.0 <= sleeps.delays[1] <= 2.0  # attempt 2: 2 s ceiling, half of it jittered
    assert (reply.input_tokens, reply.output_tokens) == (11, 3)
    assert model._calls == 3
    counters = reply.counters()
    assert (counters["rate_limited"], counters["server_errors"], counters["timeouts"]) == (1, 1, 0)
    assert (counters["llm_calls"], counters["llm_cached"], counters["input_tokens"]) == (1, 0, 11)


async def test_attempts_are_bounded_with_exponential_backoff():
    model = FlakyModel(errors=[_error(500) for _ in range(10)])
    sleeps = Sleeps()
    client = LLMClient(model, retry=RetryPolicy(max_attempts=4, base_delay_s=1.0), sleep=sleeps)
    with pytest.raises(LLMCallError, match="after 4 attempts") as error:
        await client.invoke([HumanMessage("go")])
    assert error.value.faults["server_errors"] == 4
    assert len(sleeps.delays) == 3
    for attempt, delay in enumerate(sleeps.delays, start=1):
        assert 2 ** (attempt - 1) * 0.5 <= delay <= 2 ** (attempt - 1)
    assert model._calls == 4 and error.value.attempts == 4


async def test_backoff_is_capped_at_the_longest_delay():
    model = FlakyModel(errors=[_error(500) for _ in range(9)])
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=10, base_delay_s=1, max_delay_s=4)
    await LLMClient(model, retry=policy, sleep=sleeps).invoke([HumanMessage("go")])
    assert len(sleeps.delays) == 9 and max(sleeps.delays) <= 4 and sleeps.delays[-1] >= 2


async def test_client_errors_are_not_retried():
    model = FlakyModel(errors=[_error(401)])
    client = LLMClient(model, sleep=Sleeps())
    with pytest.raises(LLMCallError, match="API key") as error:
        await client.invoke([HumanMessage("go")])
    assert error.value.attempts == 1


async def test_a_very_long_retry_after_gives_up_at_once():
    model = FlakyModel(errors=[_error(429, {"retry-after": "3600"})])
    client = LLMClient(model, sleep=Sleeps())
    with pytest.raises(LLMCallError, match="wait 3600 s") as error:
        await client.invoke([HumanMessage("go")])
    assert error.value.attempts == 1 and model._calls == 1


async def test_attempt_timeout_on_our_side():
    model = FlakyModel(delay_s=5)
    retry = RetryPolicy(max_attempts=2)
    client = LLMClient(model, attempt_timeout_s=0.05, retry=retry, sleep=Sleeps())
    with pytest.raises(LLMCallError, match="timeouts") as error:
        await client.invoke([HumanMessage("go")])
    assert error.value.faults["timeouts"] == 2


async def test_connection_limit_holds():
    model = FlakyModel(delay_s=0.02)
    client = LLMClient(model, max_concurrency=3)
    replies = await asyncio.gather(*(client.invoke([HumanMessage(f"go {i}")]) for i in range(12)))
    assert model._peak == 3
    assert len(replies) == 12 and all(reply.message.tool_calls for reply in replies)


class OtherSDKError(Exception):
    """Another provider SDK's error: an HTTP status and nothing else we know."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code


def _raised_from(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


def test_error_classification_and_retry_after():
    assert classify_error(_error(429)) == "rate_limited"
    assert classify_error(_error(502)) == "server_errors"
    assert classify_error(_error(400)) is None
    request = httpx.Request("POST", "http://127.0.0.1")
    assert classify_error(openai.APITimeoutError(request=request)) == "timeouts"
    assert classify_error(openai.APIConnectionError(request=request)) == "connection_errors"
    assert classify_error(TimeoutError()) == "timeouts"
    assert classify_error(ConnectionResetError()) == "connection_errors"
    assert classify_error(ValueError("no")) is None
    # other SDKs: their status, httpx errors, or the httpx error they were raised from
    assert classify_error(OtherSDKError(429)) is FaultKind.RATE_LIMITED
    assert classify_error(OtherSDKError(503)) is FaultKind.SERVER_ERRORS
    assert classify_error(OtherSDKError(401)) is None
    assert classify_fault(httpx.ReadTimeout("slow", request=request)) is FaultKind.TIMEOUTS
    assert classify_fault(httpx.ConnectError("refused", request=request)) == "connection_errors"
    assert classify_fault(httpx.UnsupportedProtocol("ftp://", request=request)) is None
    wrapped = _raised_from(RuntimeError("SDK"), httpx.RemoteProtocolError("peer closed"))
    assert classify_fault(wrapped) is FaultKind.CONNECTION_ERRORS
    assert retry_after_s(_error(429, {"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    assert retry_after_s(_error(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_s(_error(429)) is None


async def test_cache_hit_costs_nothing(tmp_path):
    model = FlakyModel(cache=LLMResponseCache(tmp_path / "cache"))
    client = LLMClient(model)
    messages = [HumanMessage("go", id="volatile-1")]
    first = await client.invoke(messages, tools=[propose_concept])
    assert not first.cached and first.input_tokens == 11
    again = await client.invoke([HumanMessage("go", id="volatile-2")], tools=[propose_concept])
    assert again.cached and again.attempts == 0
    assert (again.input_tokens, again.output_tokens) == (0, 0)
    assert again.counters()["llm_calls"] == 0 and again.counters()["llm_cached"] == 1
    assert again.message.tool_calls == first.message.tool_calls
    assert again.message.usage_metadata["input_tokens"] == 11  # what it cost when it was made
    assert model._calls == 1
    other = await client.invoke(messages)  # no tools: another request
    assert not other.cached and model._calls == 2
    # the earlier answer in a conversation keys by what the model reads, not by its metadata
    follow_up = [*messages, again.message, HumanMessage("and then?")]
    assert not (await client.invoke(follow_up, tools=[propose_concept])).cached
    follow_up = [*messages, first.message, HumanMessage("and then?")]
    assert (await client.invoke(follow_up, tools=[propose_concept])).cached
    assert model._calls == 3
    # a new model on the same folder (a resumed run) hits the cache without a call
    resumed = FlakyModel(cache=LLMResponseCache(tmp_path / "cache"))
    assert (await LLMClient(resumed).invoke(messages, tools=[propose_concept])).cached
    assert resumed._calls == 0
    LLMResponseCache(tmp_path / "cache").clear()
    assert not (await LLMClient(resumed).invoke(messages, tools=[propose_concept])).cached


async def test_offline_model_through_the_client():
    client = LLMClient(OfflineVocabProposer(), spec="offline:vocab")
    reply = await client.invoke([HumanMessage("- red")], tools=[propose_concept])
    assert extract_tool_call(reply.message, ["propose_concept"]) == (
        "propose_concept",
        {"concept": "orange"},
    )
    assert reply.total_tokens == 0


# ----- unusable answers ------------------------------------------------------------------------


def _call(name: str, args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": "c1"}])


def test_extract_tool_call_cases():
    assert extract_tool_call(_call("propose_concept", {"concept": "red"}), ["propose_concept"]) == (
        "propose_concept",
        {"concept": "red"},
    )
    with pytest.raises(UnusableAnswer, match="no tool call"):
        extract_tool_call(AIMessage(content="I think red"), ["propose_concept"])
    with pytest.raises(UnusableAnswer, match="no tool named 'launch_rockets'"):
        extract_tool_call(_call("launch_rockets", {"concept": "red"}), ["propose_concept"])
    with pytest.raises(UnusableAnswer, match="needs the argument"):
        extract_tool_call(_call("submit_explanation", {"concept": "red"}), ["submit_explanation"])
    with pytest.raises(UnusableAnswer, match="too long"):
        extract_tool_call(_call("propose_concept", {"concept": "x " * 500}), ["propose_concept"])
    malformed = AIMessage(
        content="",
        invalid_tool_calls=[
            {"name": "propose_concept", "args": '{"concept": "re', "id": "c1", "error": "json"}
        ],
    )
    with pytest.raises(UnusableAnswer, match="not valid JSON") as error:
        extract_tool_call(malformed, ["propose_concept"])
    assert error.value.reason == str(error.value)
    custom = {"propose_concept": ("concept", "why")}
    with pytest.raises(UnusableAnswer, match="why"):
        extract_tool_call(_call("propose_concept", {"concept": "red"}), ["propose_concept"], custom)
    assert required_args_of([propose_concept]) == {"propose_concept": ("concept",)}


@pytest.mark.parametrize(
    ("text", "concept"),
    [
        ("Concept: **Red fruit**.", "red fruit"),
        ("red fruit", "red fruit"),
        ('"Striped Square"', "striped square"),
        ("- a blue triangle", "blue triangle"),
        ("Sure! Here is my proposal:\n\n1. **Dog fur**", "dog fur"),
        ("<think>it could be many things</think>\nFinal answer: wheels", "wheels"),
        ("The concept is: green star", "green star"),
        ("Answer:\n`checkered`", "checkered"),
        ("", None),
        ("!!!\n???", None),
        ("I am sorry but I cannot decide which of these concepts would be best here.", None),
    ],
)
def test_extract_concept_from_text(text, concept):
    assert extract_concept_from_text(text) == concept


def test_other_providers_go_through_init_chat_model(monkeypatch):
    seen = {}

    def fake_init(model, **kwargs):
        seen[model] = kwargs
        return OfflineVocabProposer()

    monkeypatch.setattr(providers, "init_chat_model", fake_init)
    monkeypatch.setattr(providers, "_module_present", lambda module: True)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "secret")
    build_chat_model("anthropic:claude-sonnet-4-5", temperature=0.3, max_tokens=200, timeout_s=9)
    assert seen["anthropic:claude-sonnet-4-5"] == {
        "temperature": 0.3,
        "max_tokens": 200,
        "timeout": 9,
        "max_retries": 0,
    }
    build_chat_model("ollama:llama3.1:8b", base_url="http://127.0.0.1:11434", max_tokens=50)
    assert seen["ollama:llama3.1:8b"] == {
        "num_predict": 50,
        "client_kwargs": {"timeout": 120},
        "base_url": "http://127.0.0.1:11434",
    }


async def test_build_llm_client_for_offline():
    client = providers.build_llm_client("offline:vocab", max_concurrency=2)
    assert client.max_concurrency == 2 and client.spec == "offline:vocab"
    reply = await client.invoke([("human", "- red\n- orange")], tools=[propose_concept])
    assert reply.message.tool_calls[0]["args"] == {"concept": "yellow"}


def test_clients_built_in_turn_work_across_event_loops():
    """`line eval variants` runs each arm in its own asyncio.run: no connection may leak across."""
    import asyncio

    from langchain_core.messages import HumanMessage

    from agent.providers import build_llm_client
    from testing.scripted_llm import ProposerPolicy, start_scripted_llm
    from tools.agent_tools import PROPOSE_CONCEPT

    with start_scripted_llm(ProposerPolicy()) as server:
        for _ in range(3):
            client = build_llm_client("openai-compatible:scripted", base_url=server.url)
            reply = asyncio.run(
                client.invoke([HumanMessage("red: 1.0000")], tools=[PROPOSE_CONCEPT])
            )
            assert reply.message.tool_calls[0]["name"] == "propose_concept"


# ----- small local models: context windows, debris, the real cause of an error ----------------


class RecordingModel(FlakyModel):
    """A FlakyModel that keeps the keyword arguments of each call (``max_tokens``)."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.seen.append(kwargs)
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def _bad_request(message: str) -> openai.BadRequestError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(400, request=request)
    return openai.BadRequestError(message, response=response, body=None)


async def test_a_context_overflow_is_named_as_such_not_as_tool_calling():
    overflow = _bad_request(
        "This model's maximum context length is 2048 tokens, you requested 2071"
    )
    client = LLMClient(FlakyModel(errors=[overflow]), spec="smol", context_window=2048)
    with pytest.raises(LLMCallError) as error:
        await client.invoke([HumanMessage("hi")])
    assert "context window" in str(error.value) and "--llm-context" in str(error.value)
    assert "tool calling" not in str(error.value)
    other = LLMClient(FlakyModel(errors=[_bad_request("bad value for temperature")]))
    with pytest.raises(LLMCallError, match="refused the request") as error:
        await other.invoke([HumanMessage("hi")], tools=[propose_concept])
    assert "tool calling" not in str(error.value)


async def test_every_request_is_fitted_to_the_context_window():
    model = RecordingModel()
    client = LLMClient(model, context_window=2048)
    await client.invoke([HumanMessage("short question")], tools=[propose_concept])
    assert model.seen[-1]["max_tokens"] == 512  # a quarter of the window for the answer
    long = "word " * 1000  # about 1,700 estimated tokens
    await client.invoke([HumanMessage(long)])
    room = 2048 - count_tokens([HumanMessage(long)]) - providers.CONTEXT_MARGIN_TOKENS
    assert model.seen[-1]["max_tokens"] == room < 512
    calls = model._calls
    with pytest.raises(LLMCallError, match="context window of 2048 tokens") as error:
        await client.invoke([HumanMessage("word " * 1400)])
    assert error.value.attempts == 0 and model._calls == calls  # refused before sending
    unbounded = RecordingModel()
    await LLMClient(unbounded).invoke([HumanMessage("hi")])
    assert "max_tokens" not in unbounded.seen[-1]  # no window known: nothing imposed


def test_trimming_keeps_the_task_and_whole_tool_exchanges():
    head = [SystemMessage("system " * 20), HumanMessage("task " * 20)]
    turns = []
    for index in range(30):
        call = {"name": "generate_images", "args": {"concept": f"c{index}"}, "id": f"t{index}"}
        turns += [
            AIMessage(content="thinking " * 30, tool_calls=[call]),
            ToolMessage(f"generated images of c{index}", tool_call_id=f"t{index}"),
        ]
    kept = trim_to_fit([*head, *turns], 600)
    assert kept[:2] == head and count_tokens(kept) <= 600
    assert len(kept) < len(head) + len(turns) and isinstance(kept[2], AIMessage)
    assert kept[-1] == turns[-1]  # the latest exchange survives
    assert trim_to_fit([*head, *turns[:2]], 10_000) == [*head, *turns[:2]]


@pytest.mark.parametrize(
    ("text", "reason"),
    [("i'm right, i was too quick: 0.175", "digits"), ("in the sentence", "noun phrase"),
     ("no", "chat"), ("name", "no visual concept"), ("", "empty"),
     ("Let me think. " * 50, "too long")],
)  # fmt: skip
def test_chat_debris_in_plain_text_is_refused_with_its_reason(text, reason):
    with pytest.raises(UnusableAnswer, match=reason):
        concept_from_text(text)
    assert extract_concept_from_text(text) is None


def test_a_concept_is_found_where_chatty_models_put_it():
    assert concept_from_text("Sure! Here is a new concept: red fruit") == "red fruit"
    assert concept_from_text('I propose "blue star" because it scored well') == "blue star"
    with pytest.raises(UnusableAnswer, match="at most 2 words"):
        concept_from_text("small red striped circle", max_words=2)
