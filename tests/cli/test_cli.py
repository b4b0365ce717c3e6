"""The ``line`` command as a user runs it, in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from inference.app import free_port

LINE = [sys.executable, "-m", "cli.app"]


def run_line(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*LINE, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_answers_the_api(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            *LINE,
            "serve",
            "--generator",
            "tiny-sd",
            "--target",
            "torchvision:resnet18:random",
            "--port",
            str(port),
            "--store",
            str(tmp_path / "store"),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        images = httpx.post(f"{url}/v1/images", json={"prompts": ["a cat"], "seeds": [0]}).json()
        image_id = images["images"][0]["id"]
        acts = httpx.post(
            f"{url}/v1/activations",
            json={
                "target": "torchvision:resnet18:random",
                "layer": "fc",
                "image_ids": [image_id],
                "units": [3],
            },
        ).json()
        assert len(acts["activations"]) == 1 and acts["units"] == [3]
        assert httpx.get(f"{url}/v1/images/{image_id}").headers["content-type"] == "image/png"
        assert "/v1/activations" in httpx.get(f"{url}/openapi.json").json()["paths"]
        assert (tmp_path / "store" / "images" / image_id[:2] / f"{image_id}.png").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_public_address_without_a_token():
    result = run_line("serve", "--generator", "tiny-sd", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr and "--token" in result.stderr


def test_serve_needs_something_to_serve():
    result = run_line("serve")
    assert result.returncode == 2 and "nothing to serve" in result.stderr


def test_serve_reports_an_unknown_target():
    result = run_line("serve", "--target", "torchvision:resnet19:random")
    assert result.returncode == 2 and "no classification model 'resnet19'" in result.stderr


def test_serve_ray_refuses_gpus_the_cluster_does_not_have():
    pytest.importorskip("ray")
    result = run_line(
        "serve", "--ray", "--replicas", "2", "--gpus-per-replica", "1", "--generator",
        "procedural:shapes", "--port", str(free_port()), timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "2 replica(s) x 1 GPU need 2 GPUs, but the Ray cluster has 0" in result.stderr
    assert "--gpus-per-replica 0" in result.stderr


def test_layers_lists_units():
    result = run_line("layers", "torchvision:resnet18:random", "--json")
    assert result.returncode == 0, result.stderr
    layers = {row["layer"]: row["units"] for row in json.loads(result.stdout)}
    assert layers["layer4.1.conv2"] == 512
