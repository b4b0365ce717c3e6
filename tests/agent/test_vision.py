"""Images for vision LLMs and the agent's edit_images tool (issue 25): whole runs through the
real ChatOpenAI against the scripted LLM server (which records the image parts it receives) and
the toy-world server with its procedural:shapes editor."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from agent.launch import settings_from_options
from agent.offline import EDIT_AFTER_CONCEPTS, OfflineVocabProposer
from agent.providers import LLMConfigError, check_accepts_images, images_refusal
from inference.app import create_app, start_server_thread
from inference.registry import load_generator, load_target
from inference.service import open_service
from report import build_report
from testing.scripted_llm import ProposerPolicy, Reply, ScriptedReplies, start_scripted_llm
from tools.agent_tools import AGENTIC_TOOLS, EDIT_IMAGES
from tools.llm_images import LLM_IMAGE_PIXELS, extreme_images, image_blocks
from tools.server_session import RunSetupError, server_session

OPENAI = "openai-compatible:scripted"


def history(folder, unit: int, layer: str = "planted") -> dict:
    return json.loads(folder.record_path(layer, unit).read_text())


def requests_with(llm, tool: str) -> list[dict]:
    return [row for row in llm.stats.log if tool in row["tools"]]


def test_paper_proposals_carry_the_scoreboards_extreme_images(toy_world_server, explain, tmp_path):
    with start_scripted_llm(ProposerPolicy()) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [9], llm=OPENAI, llm_base_url=llm.url,
            iterations=3, llm_images=2,
        )  # fmt: skip
        proposals = requests_with(llm, "propose_concept")
        summaries = requests_with(llm, "submit_explanation")
    assert rows[0]["status"] == "done"
    assert len(proposals) == 3 and summaries
    assert not proposals[0]["images"]  # an empty scoreboard (no class labels to seed it)
    for request in proposals[1:]:  # then every proposal shows the 2 + 2 extreme images
        assert len(request["images"]) == 4
        for image in request["images"]:
            assert image["mime_type"] == "image/png" and image["bytes"] > 0
            assert 0 < max(image["width"], image["height"]) <= LLM_IMAGE_PIXELS
    assert all(not request["images"] for request in summaries)
    assert rows[0]["llm_images"] == 8  # what was sent is counted in the results
    neuron = history(folder, 9)
    assert neuron["counters"]["llm_images"] == 8
    shown = [log.get("images", []) for log in neuron["llm_log"] if log["step"] == "propose"]
    assert [len(images) for images in shown] == [0, 4, 4]
    activations = {
        image_id: value
        for entry in neuron["entries"]
        for image_id, value in zip(entry["image_ids"], entry["activations"], strict=True)
    }
    for images in shown[1:]:
        assert [image["end"] for image in images] == ["most", "most", "least", "least"]
        assert all(activations[image["image_id"]] == image["activation"] for image in images)
        assert images[0]["activation"] >= images[1]["activation"] >= images[3]["activation"]
    # the history keeps which images were shown, never their data
    request = [log for log in neuron["llm_log"] if log["step"] == "propose"][1]["request"]
    blocks = request[-1]["content"]
    assert [block["type"] for block in blocks] == ["text", "text", *["text", "image"] * 4]
    assert all("base64" not in block for block in blocks)
    assert blocks[3]["base64_chars"] > 0


def test_text_only_runs_send_no_images_and_offer_no_edit_tool(toy_world_server, explain, tmp_path):
    with start_scripted_llm(ProposerPolicy()) as llm:
        rows, _folder = explain(
            toy_world_server, tmp_path / "run", [1], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", max_concepts=3, max_images=15, max_llm_turns=8,
        )  # fmt: skip
        log = llm.stats.log
    assert rows[0]["status"] == "done" and rows[0]["llm_images"] == 0 and rows[0]["edits"] == 0
    assert llm.stats.images == 0
    agent_turns = [row for row in log if "generate_images" in row["tools"]]
    assert agent_turns and all("edit_images" not in row["tools"] for row in agent_turns)


def test_agentic_vision_sees_images_and_edits_the_top_images(toy_world_server, explain, tmp_path):
    with start_scripted_llm(ProposerPolicy()) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [0], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic-vision", editor="procedural:shapes", max_concepts=8,
            max_images=60, max_llm_turns=30,
        )  # fmt: skip
        turns = requests_with(llm, "generate_images")
    assert rows[0]["status"] == "done", rows[0]["reason"]
    assert all("edit_images" in turn["tools"] for turn in turns)
    shown = [len(turn["images"]) for turn in turns]
    # nothing is measured before the first turns; then 4 most and 4 least activating images
    assert shown[:5] == [0, 0, 5, 5, 8] and set(shown[5:]) == {8}
    neuron = history(folder, 0)
    (edit,) = neuron["edits"]  # the proposer edits once, after EDIT_AFTER_CONCEPTS concepts
    assert edit["after_iteration"] == EDIT_AFTER_CONCEPTS
    best = max(neuron["entries"][:EDIT_AFTER_CONCEPTS], key=lambda entry: entry["score"])
    assert edit["instruction"] == f"remove the {best['concept']}"
    assert len(edit["edited_ids"]) == len(edit["drops"]) == 4
    top = sorted(
        (
            value
            for entry in neuron["entries"][:EDIT_AFTER_CONCEPTS]
            for value in entry["activations"]
        ),
        reverse=True,
    )[:4]
    assert edit["before"] == top
    assert edit["mean_drop"] is not None and -1 <= edit["mean_drop"] <= 1
    assert rows[0]["edits"] == 1
    answer = next(
        message["content"]
        for message in neuron["messages"]
        if message["role"] == "tool" and message["content"].startswith("edited the unit's")
    )
    assert f"with '{edit['instruction']}'" in answer and "mean drop" in answer
    agent_images = sum(
        len(entry["image_ids"]) for entry in neuron["entries"] if entry["source"] == "agent"
    )
    assert neuron["counters"]["images"] == agent_images + 4 + sum(
        len(entry["image_ids"]) for entry in neuron["entries"] if entry["source"] == "summary"
    )
    # the report's timeline shows the experiment with its images
    index = build_report(folder.path)
    page = (index.parent / "neurons" / "planted__0.html").read_text()
    assert 'class="step edit"' in page and edit["instruction"] in page


def test_edit_images_errors_come_back_to_the_model(toy_world_server, explain, tmp_path):
    script = ScriptedReplies(
        [
            Reply.tool_call("edit_images", instruction="remove the red"),  # nothing measured
            Reply.tool_call("generate_images", concept="red circle", n=4),
            Reply.tool_call("measure_activation", concept="red circle"),
            Reply.tool_call("edit_images", instruction="paint it like van gogh"),  # refused
            Reply.tool_call("edit_images", instruction="remove the red", top_k=99),
            Reply.tool_call("edit_images", instruction="remove the red", top_k=2),
        ]
    )
    with start_scripted_llm(script) as llm:
        rows, folder = explain(
            toy_world_server, tmp_path / "run", [0], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", editor="procedural:shapes", max_concepts=3, max_images=30,
            max_llm_turns=9,
        )  # fmt: skip
    assert rows[0]["status"] == "done"
    neuron = history(folder, 0)
    answers = [m["content"] for m in neuron["messages"] if m["role"] == "tool"]
    assert answers[0].startswith("error: nothing is measured yet")
    assert answers[3].startswith("error: the editor refused the instruction")
    assert answers[4].startswith("error: top_k must be a whole number from 1 to 8")
    assert answers[5].startswith("edited the unit's 2 most activating images with 'remove the red'")
    assert len(neuron["edits"]) == 1 and neuron["edits"][0]["source_concepts"] == ["red circle"] * 2
    assert neuron["counters"]["tool_errors"] >= 3


def test_edit_images_is_no_tool_without_an_editor(toy_world_server, explain, tmp_path):
    script = ScriptedReplies([Reply.tool_call("edit_images", instruction="remove the red")])
    with start_scripted_llm(script) as llm:
        _rows, folder = explain(
            toy_world_server, tmp_path / "run", [0], llm=OPENAI, llm_base_url=llm.url,
            prompts="agentic", max_concepts=2, max_images=10, max_llm_turns=4,
        )  # fmt: skip
    first = next(m for m in history(folder, 0)["messages"] if m["role"] == "tool")
    names = ", ".join(tool.name for tool in AGENTIC_TOOLS)
    assert first["content"] == f"error: there is no tool 'edit_images'; use one of: {names}"


def test_models_known_to_take_text_only_are_refused_up_front(monkeypatch, tmp_path):
    assert images_refusal("openai:gpt-4o-mini") is None
    assert images_refusal("ollama:llama3.2-vision") is None
    assert images_refusal("offline:vocab") is None  # it reads the text and ignores images
    assert images_refusal("ollama:llama3.1:8b") and images_refusal("deepseek:deepseek-chat")
    check_accepts_images("ollama:llama3.1:8b", 0)  # text only: nothing to refuse
    with pytest.raises(LLMConfigError, match=r"--llm-images 2 .* cannot read them"):
        check_accepts_images("ollama:llama3.1:8b", 2)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(RunSetupError, match=r"gpt-3\.5-turbo is a text-only model"):
        settings_from_options(
            target="planted:shapes", layer="planted", units="0", generator="procedural:shapes",
            llm="openai:gpt-3.5-turbo", out=tmp_path / "run", llm_images=2,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()


def options(tmp_path, **extra):
    base = {
        "target": "planted:shapes", "layer": "planted", "units": "0",
        "generator": "procedural:shapes", "llm": "offline:vocab", "out": tmp_path / "run",
    }  # fmt: skip
    return settings_from_options(**{**base, **extra})[0]


def test_the_editor_is_checked_against_strategy_and_variant(tmp_path):
    assert options(tmp_path, prompts="agentic").editor is None
    assert options(tmp_path, prompts="agentic", llm_images=3).variant_overrides == {"llm_images": 3}
    assert options(tmp_path, prompts="agentic-vision").editor == "procedural:shapes"  # toy world
    assert options(tmp_path, prompts="agentic", editor="x").editor == "x"
    with pytest.raises(RunSetupError, match="the paper strategy does not edit images"):
        options(tmp_path, prompts="paper", editor="procedural:shapes")
    with pytest.raises(RunSetupError, match="needs an image editor: pass --editor"):
        options(tmp_path, prompts="agentic-vision", target="torchvision:resnet18", layer="fc")


def test_a_server_without_an_editor_is_refused_up_front(line_cache, tmp_path):
    service = open_service(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
        tmp_path / "store",
    )
    running = start_server_thread(create_app(service))
    try:
        with pytest.raises(RunSetupError, match="has no editor 'procedural:shapes'"):
            with server_session(
                running.url, "planted:shapes", "planted", [0], None,
                editors=["procedural:shapes"],
            ):  # fmt: skip
                pass
    finally:
        running.stop()


def test_image_blocks_are_standard_blocks_chatopenai_sends_as_image_urls():
    entries = [
        {"concept": "red", "image_ids": ["a", "b", "c"], "activations": [3.0, 1.0, 0.5]},
        {"concept": "blue", "image_ids": ["d", "a"], "activations": [0.0, 3.0]},
    ]
    shown = extreme_images(entries, 2)
    assert [(s.image_id, s.end, s.rank) for s in shown] == [
        ("a", "most", 1), ("b", "most", 2), ("d", "least", 1), ("c", "least", 2),
    ]  # fmt: skip
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png, "PNG")
    data = base64.b64encode(png.getvalue()).decode()
    blocks = image_blocks(shown, {s.image_id: data for s in shown})
    assert blocks[2] == {"type": "image", "base64": data, "mime_type": "image/png"}
    assert blocks[1]["text"] == "most activating image 1, concept 'red', activation 3.0000"
    # the offline proposer reads the text and ignores the images (a label is no score line)
    plain = OfflineVocabProposer().invoke([SystemMessage("x"), HumanMessage("- red")])
    seen = OfflineVocabProposer().invoke(
        [SystemMessage("x"), HumanMessage([{"type": "text", "text": "- red"}, *blocks])]
    )
    assert seen.content.split("\n")[0] == plain.content.split("\n")[0]


def test_the_offline_proposer_edits_once_when_the_tool_is_offered():
    model = OfflineVocabProposer().bind_tools([*AGENTIC_TOOLS, EDIT_IMAGES])
    scores = "\n".join(f"{c}: 0.{i}000" for i, c in enumerate(["red", "orange", "yellow"]))
    few = [SystemMessage("x"), HumanMessage(f"Concepts so far:\n{scores}")]
    assert model.invoke(few).tool_calls[0]["name"] == "generate_images"
    colours = ["red", "orange", "yellow", "green", "blue", "purple"]
    scores = "\n".join(f"{c}: 0.{i}000" for i, c in enumerate(colours))
    enough = [SystemMessage("x"), HumanMessage(f"Concepts so far:\n{scores}")]
    call = model.invoke(enough).tool_calls[0]
    assert (call["name"], call["args"]) == (
        "edit_images", {"instruction": "remove the purple", "top_k": 4},
    )  # fmt: skip
    answered = [*enough, model.invoke(enough)]
    answered.append(ToolMessage("edited the unit's 4 ...", tool_call_id=call["id"]))
    assert model.invoke(answered).tool_calls[0]["name"] == "generate_images"


def test_the_scripted_server_records_image_parts(line_cache):
    from agent.providers import build_chat_model

    png = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(png, "PNG")
    block = {
        "type": "image",
        "base64": base64.b64encode(png.getvalue()).decode(),
        "mime_type": "image/png",
    }
    with start_scripted_llm(ProposerPolicy()) as llm:
        model = build_chat_model(OPENAI, base_url=llm.url)
        asyncio.run(
            model.ainvoke([HumanMessage([{"type": "text", "text": "- red"}, block, block])])
        )
        (row,) = llm.stats.log
    assert llm.stats.images == 2
    assert (
        row["images"]
        == [{"mime_type": "image/png", "bytes": len(png.getvalue()), "width": 20, "height": 10}] * 2
    )
    assert llm.stats.prompt_tokens >= 2 * 85


def test_line_run_with_llm_images_and_an_editor(tmp_path):
    """The issue's goal run: `line run --llm-images 4 --prompts agentic` (and an editor) sends
    image parts in every proposal once something is measured, and offers edit_images."""
    from typer.testing import CliRunner

    from cli.app import app

    args = [
        "run", "--target", "planted:shapes", "--layer", "planted", "--units", "9",
        "--generator", "procedural:shapes", "--llm", OPENAI, "--prompts", "agentic",
        "--llm-images", "4", "--editor", "procedural:shapes", "--out", str(tmp_path / "run"),
        "--quiet", "--no-groups", "--no-report", "--device", "cpu",
    ]  # fmt: skip
    with start_scripted_llm(ProposerPolicy()) as llm:
        result = CliRunner().invoke(app, [*args, "--llm-base-url", llm.url])
        turns = requests_with(llm, "generate_images")
    assert result.exit_code == 0, result.output
    assert all("edit_images" in turn["tools"] for turn in turns)
    assert [len(turn["images"]) > 0 for turn in turns[:3]] == [False, False, True]
    assert all(len(turn["images"]) == 8 for turn in turns[4:])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["editor"] == "procedural:shapes"
    assert config["variant_overrides"] == {"llm_images": 4}
