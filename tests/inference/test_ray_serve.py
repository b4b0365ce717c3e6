"""``line serve --ray``: the same HTTP API on Ray Serve, model work spread over replicas."""

from __future__ import annotations

import re
import sys

import httpx
import pytest

pytest.importorskip("ray")

# Ray Serve's own pydantic models warn on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*")

from inference.app import free_port  # noqa: E402
from inference.config import ServeConfig  # noqa: E402
from inference.ray_serve import RayServeError, check_resources, import_ray, start_ray_app  # noqa: E402
from inference.service import BatchingConfig  # noqa: E402

UNITS = [0, 3, 9, 12]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    """procedural:shapes + planted:shapes on two CPU replicas behind Ray Serve on 127.0.0.1."""
    config = ServeConfig(
        generators=["procedural:shapes"],
        targets=["planted:shapes"],
        host="127.0.0.1",
        port=free_port(),
        device="cpu",
        store=tmp_path_factory.mktemp("ray-store"),
        batching=BatchingConfig(max_batch=16, max_wait_ms=20),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        app = start_ray_app(
            config,
            replicas=2,
            gpus_per_replica=0,
            cpus_per_replica=0.5,
            num_cpus=2,
            ray_init_options={"log_to_driver": False},
        )
    yield app
    app.shutdown()


def metric(metrics: str, name: str, **labels: str) -> dict[str, float]:
    """Samples of ``name`` whose labels include ``labels``, keyed by their replica label."""
    found: dict[str, float] = {}
    for text, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)", metrics, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', text))
        if all(have.get(key) == wanted for key, wanted in labels.items()):
            replica = have.get("replica", "")
            found[replica] = found.get(replica, 0.0) + float(value)
    return found


def test_a_toy_world_run_is_served_by_both_replicas(
    ray_server, toy_world_server, explain, tmp_path
):
    rows, _ = explain(ray_server.url, tmp_path / "ray", UNITS, iterations=2, concurrency=4)
    assert [row["status"] for row in rows] == ["done"] * len(UNITS)
    # the toy world is deterministic: the plain server finds the same labels and scores
    plain, _ = explain(toy_world_server, tmp_path / "plain", UNITS, iterations=2, concurrency=4)
    assert [(r["label"], r["score"]) for r in rows] == [(r["label"], r["score"]) for r in plain]

    metrics = httpx.get(f"{ray_server.url}/metrics", timeout=30).text
    batches = metric(metrics, "line_ray_replica_batches_total")
    assert len(batches) == 2 and min(batches.values()) > 0, batches  # both replicas worked
    for backend, made in [
        ("procedural:shapes", 'line_images_generated_total{generator="procedural:shapes"}'),
        ("planted:shapes", 'line_activations_computed_total{target="planted:shapes"}'),
    ]:
        items = metric(metrics, "line_ray_replica_items_total", backend=backend)
        assert len(items) == 2 and min(items.values()) > 0, (backend, items)
        # every image rendered or measured went through exactly one replica batch ...
        assert sum(items.values()) == float(
            re.search(rf"^{re.escape(made)} (\S+)", metrics, re.M)[1]
        )
        # ... and the plain server's batch metrics count each replica batch once
        batch_count = metric(metrics, "line_batch_size_count", backend=backend)[""]
        per_replica = metric(metrics, "line_ray_replica_batches_total", backend=backend)
        assert batch_count == sum(per_replica.values())
        assert batch_count < sum(items.values())  # requests met in batches


def test_the_api_answers_like_the_plain_server(ray_server, toy_world_server):
    ray_url, plain_url = ray_server.url, toy_world_server
    ray_models = httpx.get(f"{ray_url}/v1/models").json()
    plain_models = httpx.get(f"{plain_url}/v1/models").json()
    assert ray_models.pop("editors") == []  # editors are served by plain servers only
    plain_models.pop("editors")
    assert ray_models == plain_models
    bad = {"target": "planted:shapes", "layer": "no-such-layer", "image_ids": ["x"]}
    ray_answer = httpx.post(f"{ray_url}/v1/activations", json=bad)
    plain_answer = httpx.post(f"{plain_url}/v1/activations", json=bad)
    assert ray_answer.status_code == plain_answer.status_code == 404
    assert ray_answer.json() == plain_answer.json()
    assert "valid layers" in ray_answer.json()["detail"]
    health = httpx.get(f"{ray_url}/healthz").json()
    assert health == {"status": "ok", "generators": ["procedural:shapes"],
                      "targets": ["planted:shapes"], "editors": []}  # fmt: skip


def test_more_gpus_than_the_cluster_has_is_refused_before_deploying(ray_server):
    config = ServeConfig(generators=["procedural:shapes"], port=free_port(), device="cpu")
    with pytest.raises(RayServeError, match=r"need 2 GPUs, but the Ray cluster has 0; lower"):
        start_ray_app(config, replicas=2, gpus_per_replica=1.0)
    assert httpx.get(f"{ray_server.url}/healthz").status_code == 200  # the running app is intact
    check_resources({"CPU": 16.0, "GPU": 2.0}, replicas=4, gpus_per_replica=0.5, cpus_per_replica=1)


def test_a_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayServeError, match=re.escape("pip install 'line-agent[ray]'")):
        import_ray()
