"""The servers of one command: given ones are checked, a local one lives as long as the block."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tools.server_session import RunSetupError, server_session
from toyworld.truth import planted_ground_truth

TOY = ("planted:shapes", "planted", [0, 27], "procedural:shapes")
PLANTED_UNITS = len(planted_ground_truth())


def _models(session) -> dict:
    async def ask() -> dict:
        async with session.connect() as client:
            return await client.models()

    return asyncio.run(ask())


def test_a_local_server_serves_the_block_and_stops_after(tmp_path):
    with server_session(None, *TOY, device="cpu", store=tmp_path / "store") as session:
        assert session.local_store == (tmp_path / "store").resolve()
        [url] = session.urls
        models = _models(session)
        assert [t["name"] for t in models["targets"]] == ["planted:shapes"]
        assert [g["name"] for g in models["generators"]] == ["procedural:shapes"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_a_local_server_stops_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError, match="inside"):
        with server_session(None, *TOY, device="cpu", store=tmp_path) as session:
            url = session.urls[0]
            raise RuntimeError("inside")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.parametrize(
    ("layer", "units", "message"),
    [
        ("conv9", [0], "target 'planted:shapes' has no layer 'conv9'; valid layers: planted"),
        ("planted", [PLANTED_UNITS], f"unit {PLANTED_UNITS} is out of range: layer 'planted'"),
    ],
)
def test_layer_and_units_are_checked_before_the_generator_loads(tmp_path, layer, units, message):
    # the generator spec is wrong too: its error would show if it were loaded first
    with pytest.raises(RunSetupError, match=message):
        with server_session(None, "planted:shapes", layer, units, "no-such/generator"):
            pass


def test_a_local_server_needs_a_generator():
    with pytest.raises(RunSetupError, match="without --server, pass --generator SPEC"):
        with server_session(None, "planted:shapes", "planted", [0], None):
            pass


def test_given_servers_are_used_as_they_are(toy_world_server):
    with server_session(toy_world_server, *TOY) as session:
        assert session.urls == [toy_world_server] and session.local_store is None
        assert _models(session)["targets"][0]["name"] == "planted:shapes"
    with server_session([toy_world_server, toy_world_server], *TOY) as session:
        assert session.urls == [toy_world_server]  # repeats dropped
    assert httpx.get(f"{toy_world_server}/healthz", timeout=5).status_code == 200  # still up


@pytest.mark.parametrize(
    ("target", "layer", "units", "generator", "message"),
    [
        ("torchvision:resnet50", "fc", [0], None, "does not serve target 'torchvision:resnet50'"),
        ("planted:shapes", "planted", [0], "tiny-sd", "has no generator 'tiny-sd'; it has: "),
        ("planted:shapes", "nope", [0], None, "has no layer 'nope'"),
        ("planted:shapes", "planted", [999], None, "unit 999 is out of range"),
    ],
)
def test_given_servers_are_checked(toy_world_server, target, layer, units, generator, message):
    with pytest.raises(RunSetupError, match=message):
        with server_session(toy_world_server, target, layer, units, generator):
            pass


def test_a_server_that_does_not_answer_is_a_setup_error():
    with pytest.raises(RunSetupError):
        with server_session("http://127.0.0.1:9", *TOY):
            pass
