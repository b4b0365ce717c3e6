"""The agent's tools run by LangGraph's ToolNode against a real toy-world server: what the LLM
sees of them, what they record in the state, and how every failure comes back as a message."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, StateGraph

from inference.wire import RenderOptions
from prompts.variant import load_variant
from tools.agent_tools import (
    AGENTIC_TOOLS,
    ALL_TOOLS,
    GENERATE_IMAGES,
    MEASURE_ACTIVATION,
    READ_SCOREBOARD,
    NeuronContext,
    ToolState,
    agentic_tool_node,
)
from tools.client import LineClient


def tool_graph():
    """One ToolNode between START and END, with the tools' own state schema and context."""
    graph = StateGraph(ToolState, context_schema=NeuronContext)
    graph.add_node("tools", agentic_tool_node())
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    return graph.compile()


def call(name: str, **args) -> dict:
    return {"name": name, "args": args, "id": f"call_{name}_{len(args)}", "type": "tool_call"}


def run_calls(server_url: str, state: dict, *calls: dict, generator: str | None = None, **budget):
    """Answer one agent message holding ``calls`` (run together, as ToolNode does)."""

    async def go() -> dict:
        async with LineClient(server_url) as client:
            context = NeuronContext(
                client=client,
                variant=load_variant("agentic", **budget),
                target="planted:shapes",
                layer="planted",
                unit=0,
                render=RenderOptions(generator=generator),
            )
            message = AIMessage("", tool_calls=list(calls))
            start = {**state, "messages": [*state.get("messages", []), message]}
            return await tool_graph().ainvoke(start, context=context)

    return asyncio.run(go())


def replies(state: dict) -> list[str]:
    """The tool messages answering the last agent message."""
    messages = state["messages"]
    last_ai = max(i for i, m in enumerate(messages) if isinstance(m, AIMessage))
    return [m.content for m in messages[last_ai + 1 :] if isinstance(m, ToolMessage)]


def test_the_llm_sees_the_arguments_and_never_the_runtime():
    schemas = {
        schema["function"]["name"]: schema["function"]["parameters"]
        for schema in map(convert_to_openai_tool, ALL_TOOLS)
    }
    assert list(schemas) == [
        "propose_concept",
        "submit_explanation",
        "generate_images",
        "measure_activation",
        "read_scoreboard",
    ]
    assert set(schemas["generate_images"]["properties"]) == {"concept", "n"}
    assert schemas["generate_images"]["required"] == ["concept"]
    assert set(schemas["read_scoreboard"]["properties"]) == {"top_k"}
    assert all("runtime" not in parameters["properties"] for parameters in schemas.values())


def test_generate_then_measure_records_the_concept(toy_world_server):
    state = run_calls(toy_world_server, {}, call(GENERATE_IMAGES.name, concept="Blue", n=2))
    (text,) = replies(state)
    assert text.startswith("generated 2 images of 'blue'") and "measure_activation" in text
    assert state["counters"] == {"images": 2}
    assert len(state["generated"]["blue"]["image_ids"]) == 2
    assert not state.get("entries")

    state = run_calls(toy_world_server, state, call(MEASURE_ACTIVATION.name, concept="blue"))
    (text,) = replies(state)
    (entry,) = state["entries"]
    assert (entry["concept"], entry["source"], entry["iteration"]) == ("blue", "agent", 1)
    assert entry["image_ids"] == state["generated"]["blue"]["image_ids"]
    assert text == (
        f"blue: {entry['score']:.4f}\nper-image activations: "
        + ", ".join(f"{value:.4f}" for value in entry["activations"])
    )
    assert state["iteration"] == 1

    state = run_calls(
        toy_world_server,
        state,
        call(MEASURE_ACTIVATION.name, concept="blue"),
        call(READ_SCOREBOARD.name, top_k=5),
    )
    assert replies(state) == [
        f"blue: {entry['score']:.4f}\n(already measured)",
        f"blue: {entry['score']:.4f}",
    ]
    assert len(state["entries"]) == 1 and "tool_errors" not in state["counters"]


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([call("launch_rockets", concept="blue")], "error: there is no tool 'launch_rockets'; use"),
        ([call(MEASURE_ACTIVATION.name, concept="blue")], "error: no images of 'blue' yet; call"),
        ([call(GENERATE_IMAGES.name, concept="blue", n=17)], "error: n must be a whole number"),
        ([call(GENERATE_IMAGES.name, concept="blue", n=6)], "error: only 5 images are left"),
        ([call(GENERATE_IMAGES.name, n=2)], "error: bad arguments for generate_images: concept:"),
        ([call(GENERATE_IMAGES.name, concept="x " * 40)], "error: the concept is too long"),
        ([call(READ_SCOREBOARD.name, top_k=0)], "error: top_k must be a positive whole number"),
    ],
)
def test_mistakes_are_answered_and_counted(toy_world_server, calls, expected):
    state = run_calls(toy_world_server, {}, *calls, max_images=5)
    (text,) = replies(state)
    assert text.startswith(expected), text
    assert state["counters"] == {"tool_errors": 1}
    assert not state.get("entries") and not state.get("generated")


def test_a_failing_server_is_answered_not_raised(toy_world_server):
    state = run_calls(
        toy_world_server,
        {},
        call(GENERATE_IMAGES.name, concept="blue", n=1),
        generator="no-such-generator",
    )
    (text,) = replies(state)
    assert text.startswith("error: generate_images failed: ")
    assert state["counters"] == {"tool_errors": 1}


def test_unknown_tool_error_lists_the_agentic_tools(toy_world_server):
    state = run_calls(toy_world_server, {}, call("launch_rockets"))
    names = ", ".join(tool.name for tool in AGENTIC_TOOLS)
    assert replies(state) == [f"error: there is no tool 'launch_rockets'; use one of: {names}"]
