"""The scripted OpenAI-compatible server driven by the real ChatOpenAI and LLMClient: tool calls,
parallel calls, streaming, faults (429, 500, dropped connections, hangs, malformed answers) and
the response cache."""

from __future__ import annotations

import time

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI

from agent.answers import UnusableAnswer, extract_tool_call
from agent.providers import (
    LLMCallError,
    LLMClient,
    LLMConfigError,
    LLMResponseCache,
    build_chat_model,
    probe_llm_endpoint,
)
from inference.app import free_port
from testing.scripted_llm import (
    CHAT_DEBRIS,
    RAMBLE,
    ChatDebrisPolicy,
    ProposerPolicy,
    Reply,
    ScriptedReplies,
    start_scripted_llm,
    transcript_from_openai,
)
from tools.agent_tools import GENERATE_IMAGES, MEASURE_ACTIVATION, PROPOSE_CONCEPT
from tools.retry import FaultKind, RetryPolicy

PROMPT = [
    SystemMessage("You interpret a neuron."),
    HumanMessage("Scoreboard:\nred: 0.4000\norange: 0.1000\n\nTried:\n- red\n- orange"),
]
FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def scripted():
    """Start scripted servers; all are stopped after the test."""
    servers = []

    def start(policy, latency_ms: float = 0, context_window=None):
        server = start_scripted_llm(policy, latency_ms=latency_ms, context_window=context_window)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client_for(server, timeout_s: float = 10, cache_dir=None, **kwargs) -> LLMClient:
    cache = LLMResponseCache(cache_dir) if cache_dir is not None else None
    model = build_chat_model(
        "openai-compatible:scripted", base_url=server.url, timeout_s=timeout_s, cache=cache
    )
    return LLMClient(model, spec="openai-compatible:scripted", retry=FAST_RETRY, **kwargs)


async def test_tool_call_comes_back_parsed(scripted):
    server = scripted(ProposerPolicy())
    reply = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert extract_tool_call(reply.message, ["propose_concept"]) == (
        "propose_concept",
        {"concept": "yellow"},
    )
    assert reply.attempts == 1 and not reply.cached
    assert reply.input_tokens > 0 and reply.output_tokens > 0
    assert server.stats.requests == 1 and server.stats.count("tool_calls") == 1
    assert server.stats.log[0]["tools"] == ["propose_concept"]


async def test_parallel_tool_calls(scripted):
    server = scripted(ProposerPolicy(parallel_calls=3))
    reply = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    concepts = [call["args"]["concept"] for call in reply.message.tool_calls]
    assert concepts == ["yellow", "green", "blue"]
    assert len({call["id"] for call in reply.message.tool_calls}) == 3


async def test_streamed_tool_call_deltas_and_usage(scripted):
    server = scripted(ProposerPolicy(parallel_calls=2))
    model = build_chat_model("openai-compatible:scripted", base_url=server.url)
    assert isinstance(model, ChatOpenAI)
    chunks = [chunk async for chunk in model.bind_tools([PROPOSE_CONCEPT]).astream(PROMPT)]
    assert len(chunks) > 3
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert [call["args"] for call in message.tool_calls] == [
        {"concept": "yellow"},
        {"concept": "green"},
    ]
    assert message.usage_metadata["input_tokens"] > 0
    assert server.stats.streamed == 1


async def test_rate_limit_with_retry_after_is_retried(scripted):
    server = scripted(ScriptedReplies([Reply.rate_limited(retry_after_s=0.3)]))
    started = time.monotonic()
    reply = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert time.monotonic() - started >= 0.3
    assert (reply.attempts, reply.faults) == (2, {FaultKind.RATE_LIMITED: 1})
    assert reply.message.tool_calls[0]["args"] == {"concept": "yellow"}
    assert server.stats.requests == 2 and server.stats.count("rate_limit") == 1


async def test_server_error_is_retried(scripted):
    server = scripted(ScriptedReplies([Reply.server_error(), Reply.server_error(503)]))
    reply = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert (reply.attempts, reply.faults) == (3, {FaultKind.SERVER_ERRORS: 2})
    assert server.stats.count("server_error") == 2 and server.stats.answered() == 1
    assert server.stats.requests == 3


async def test_dropped_connection_is_retried(scripted):
    server = scripted(ScriptedReplies([Reply.disconnect()]))
    reply = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert (reply.attempts, reply.faults) == (2, {FaultKind.CONNECTION_ERRORS: 1})
    assert reply.message.tool_calls[0]["args"] == {"concept": "yellow"}
    assert server.stats.count("disconnect") == 1 and server.stats.answered() == 1


async def test_hang_times_out_is_retried_then_fails_clearly(scripted):
    server = scripted(ScriptedReplies([Reply.hang(30), Reply.hang(30)]))
    client = client_for(server, timeout_s=0.3)
    client.retry = RetryPolicy(max_attempts=2, base_delay_s=0.01)
    started = time.monotonic()
    with pytest.raises(LLMCallError) as error:
        await client.invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert time.monotonic() - started < 5
    assert "after 2 attempts (timeouts)" in str(error.value)
    assert "raise the LLM timeout" in str(error.value)
    assert error.value.faults["timeouts"] == 2
    assert server.stats.count("hang") == 2


async def test_hang_then_success(scripted):
    server = scripted(ScriptedReplies([Reply.hang(30)]))
    reply = await client_for(server, timeout_s=0.3).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert (reply.attempts, reply.faults) == (2, {FaultKind.TIMEOUTS: 1})


async def test_cache_hit_costs_no_request(scripted, tmp_path):
    server = scripted(ProposerPolicy())
    client = client_for(server, cache_dir=tmp_path / "llm-cache")
    first = await client.invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    second = await client.invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert server.stats.requests == 1
    assert second.cached and (second.input_tokens, second.output_tokens) == (0, 0)
    assert second.message.tool_calls == first.message.tool_calls
    assert not first.cached and first.input_tokens > 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply.empty(), "no tool call"),
        (Reply.malformed_arguments(), "not valid JSON"),
        (Reply.unknown_tool(), "no tool named 'launch_rockets'"),
        (Reply.long_concept(), "too long"),
        (Reply.text_reply("I would say red fruit."), "no tool call"),
    ],
)
async def test_unusable_answers_arrive_and_are_flagged(scripted, reply, reason):
    server = scripted(ScriptedReplies([reply]))
    answer = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert answer.attempts == 1  # not a transport fault: the graph re-asks, not the client
    with pytest.raises(UnusableAnswer, match=reason):
        extract_tool_call(answer.message, ["propose_concept"])
    assert server.stats.count(reply.kind) == 1


async def test_long_concept_is_ten_thousand_characters(scripted):
    server = scripted(ScriptedReplies([Reply.long_concept()]))
    answer = await client_for(server).invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert len(answer.message.tool_calls[0]["args"]["concept"]) == 10_000


async def test_agentic_conversation_through_chatopenai(scripted):
    server = scripted(ProposerPolicy(images_per_concept=2))
    client = client_for(server)
    tools = [GENERATE_IMAGES, MEASURE_ACTIVATION]
    messages = [SystemMessage("Explore."), HumanMessage("Find the concept.")]
    seen = []
    for score in (0.2, 0.9):
        reply = await client.invoke(messages, tools=tools)
        name, args = extract_tool_call(reply.message, ["generate_images", "measure_activation"])
        assert name == "generate_images" and args["n"] == 2
        call_id = reply.message.tool_calls[0]["id"]
        messages += [
            reply.message,
            ToolMessage(f"generated 2 images of '{args['concept']}'", tool_call_id=call_id),
        ]
        reply = await client.invoke(messages, tools=tools)
        name, measured = extract_tool_call(reply.message, ["measure_activation", "generate_images"])
        assert (name, measured) == ("measure_activation", {"concept": args["concept"]})
        call_id = reply.message.tool_calls[0]["id"]
        text = f"{args['concept']}: {score:.4f}\nactivations: 0.1, 0.3"
        messages += [reply.message, ToolMessage(text, tool_call_id=call_id)]
        seen.append(args["concept"])
    assert seen == ["red", "orange"]
    assert server.stats.requests == 4


async def test_plain_text_without_tools_and_models_endpoint(scripted):
    server = scripted(ProposerPolicy())
    reply = await client_for(server).invoke(PROMPT)
    assert reply.message.content == "yellow"
    async with httpx.AsyncClient() as http:
        listing = (await http.get(f"{server.url}/models")).json()
    assert listing["data"][0]["id"] == "scripted"


def test_transcript_from_openai_reads_tool_calls():
    transcript = transcript_from_openai(
        [
            {"role": "developer", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "propose_concept", "arguments": '{"concept": "x"}'},
                    },
                    {"id": "c2", "function": {"name": "propose_concept", "arguments": "{bad"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "x: 0.5000"},
        ]
    )
    assert transcript[0].role == "system" and transcript[0].text == "hi"
    assert transcript[1].tool_calls[0].args == {"concept": "x"}
    assert transcript[1].tool_calls[1].args == {}
    assert transcript[2].tool_call_id == "c1"


async def test_unreachable_server_fails_with_advice():
    from inference.app import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    model = build_chat_model("openai-compatible:scripted", base_url=url, timeout_s=2)
    client = LLMClient(model, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(LLMCallError, match="check the base URL") as error:
        await client.invoke(PROMPT)
    assert error.value.faults["connection_errors"] == 2


async def test_chat_debris_mode_answers_debris_then_a_usable_concept(scripted):
    server = scripted(ChatDebrisPolicy(max_debris=2))
    client = client_for(server)
    answers = []
    for question in range(12):
        prompt = [SystemMessage("You interpret a neuron."), HumanMessage(f"question {question}")]
        for _ in range(3):
            reply = await client.invoke(prompt, tools=[PROPOSE_CONCEPT])
            answers.append(reply.message)
            if reply.message.tool_calls or reply.message.text.startswith("Concept:"):
                break
        else:
            pytest.fail("more than max_debris unusable answers to one question")
    texts = [message.text for message in answers if not message.tool_calls]
    assert any(text in CHAT_DEBRIS or text == RAMBLE for text in texts)  # debris came
    assert any(text.startswith("Concept: ") for text in texts)  # and plain-text concepts
    assert any(message.tool_calls for message in answers)  # and tool calls


async def test_a_context_window_is_stated_and_enforced_like_llama_cpp(scripted):
    server = scripted(ProposerPolicy(), context_window=512)
    endpoint = probe_llm_endpoint("openai-compatible:smol", server.url)
    assert endpoint.context_window == 512 and endpoint.context_from == "GET /props"
    assert endpoint.models == ("scripted",)
    too_long = [HumanMessage("word " * 600)]
    unfitted = client_for(server, context_window=4096)  # told a larger window than the server's
    with pytest.raises(LLMCallError, match="context window of 512 tokens") as error:
        await unfitted.invoke(too_long)  # the server's error taught it 512: refitted, too long
    assert "--llm-context" in str(error.value) and "tool calling" not in str(error.value)
    assert server.stats.overflows == 1 and unfitted.context_window == 512
    fitted = client_for(server, context_window=512)  # refused before sending
    with pytest.raises(LLMCallError, match="context window of 512 tokens"):
        await fitted.invoke(too_long)
    assert server.stats.overflows == 1
    reply = await fitted.invoke(PROMPT, tools=[PROPOSE_CONCEPT])
    assert reply.message.tool_calls


def test_preflight_of_an_unreachable_llm_fails_in_seconds():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(LLMConfigError, match=f"cannot reach the LLM server at {url}"):
        probe_llm_endpoint("openai-compatible:smol", url)
    assert time.monotonic() - started < 5
    assert probe_llm_endpoint("offline:vocab") is None


async def test_a_window_the_server_only_states_in_its_error_is_learnt_and_fitted(scripted):
    server = scripted(ProposerPolicy(), context_window=512)  # like llama-cpp-python's server
    client = client_for(server)
    assert client.context_window is None
    conversation = [HumanMessage("word " * 600), *PROMPT]
    reply = await client.invoke(conversation, fit=lambda messages, budget: messages[-2:])
    assert client.context_window == 512 and server.stats.overflows == 1
    assert reply.left_out == 1 and reply.message.text
