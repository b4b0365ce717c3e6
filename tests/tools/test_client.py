"""The async client: retries with backoff on 503, one wait per outage for lost connections, no
retry on 4xx."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from inference.app import free_port, start_server_thread
from testing.cuttable_proxy import start_cuttable_proxy
from tools.client import LineClient, LineServerDown, LineServerError, LineServerUnavailable


@pytest.fixture(scope="module")
def flaky_server():
    calls = {"healthz": 0, "models": 0, "metrics": 0}
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        calls["healthz"] += 1
        if calls["healthz"] <= 2:
            return JSONResponse({"detail": "warming up"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        calls["models"] += 1
        return JSONResponse({"detail": "bad layer, valid: a, b"}, status_code=400)

    @app.get("/metrics")
    async def metrics():
        calls["metrics"] += 1
        if calls["metrics"] == 1:
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse("line_up 1")

    running = start_server_thread(app)
    yield running.url, calls
    running.stop()


async def test_503_is_retried_until_the_server_answers(flaky_server):
    url, calls = flaky_server
    async with LineClient(url, retries=3, backoff_s=0.01) as client:
        assert await client.health() == {"status": "ok"}
    assert calls["healthz"] == 3


async def test_4xx_is_not_retried_and_carries_the_message(flaky_server):
    url, calls = flaky_server
    async with LineClient(url, retries=3, backoff_s=0.01) as client:
        with pytest.raises(LineServerError, match="bad layer, valid: a, b") as raised:
            await client.models()
    assert raised.value.status == 400 and calls["models"] == 1


async def test_an_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    async with LineClient(url, retries=2, backoff_s=0.01) as client:
        with pytest.raises(
            LineServerDown, match=r"cannot reach .*is `line serve` running"
        ) as error:
            await client.health()
    assert error.value.outage.outcome == "gave up"  # a client without patience does not wait
    assert isinstance(error.value, LineServerUnavailable)


async def test_a_retry_after_is_honoured(flaky_server):
    url, calls = flaky_server
    async with LineClient(url, retries=3, backoff_s=0.01) as client:
        started = time.monotonic()
        await client.metrics_text()
    assert calls["metrics"] == 2 and time.monotonic() - started >= 1.0


async def test_a_server_that_is_down_is_waited_for_until_the_patience_has_passed():
    url = f"http://127.0.0.1:{free_port()}"
    async with LineClient(url, retries=1, backoff_s=0.01, patience_s=1.0) as client:
        with pytest.raises(
            LineServerDown, match=r"since \d\d:\d\d:\d\d \(1 s, the outage patience\)"
        ) as raised:
            await asyncio.gather(*(client.health() for _ in range(20)))
    [outage] = client.gate.outages
    assert raised.value.outage is outage and outage.outcome == "gave up"
    assert outage.seconds >= 1.0 and outage.endpoint == f"inference server {url}"
    assert 1 < outage.probes < 20  # one prober for twenty requests


async def test_requests_during_an_outage_wait_together_and_go_on_when_it_ends(toy_world_server):
    with start_cuttable_proxy(toy_world_server) as proxy:
        async with LineClient(proxy.url, patience_s=60) as client:
            await client.health()
            proxy.cut()
            first = asyncio.create_task(client.health())
            while client.gate.down is None:  # the first failure and probe: the server is down
                await asyncio.sleep(0.01)
            waiting = [asyncio.create_task(client.health()) for _ in range(30)]
            while client.gate.waiting < 31:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(proxy.restore)
            answers = await asyncio.gather(first, *waiting)
    assert all(answer["status"] == "ok" for answer in answers)
    [outage] = client.gate.outages
    assert outage.outcome == "recovered" and outage.probes >= 2
    # the requests that waited never tried: the failed attempts are the first request's and
    # the prober's, not one per request
    assert proxy.stats.while_cut <= 1 + outage.probes < 31


async def test_a_server_that_stops_answering_without_dropping_connections_is_an_outage_too(
    toy_world_server,
):
    with start_cuttable_proxy(toy_world_server) as proxy:
        async with LineClient(proxy.url, patience_s=60, stall_s=0.3, probe_timeout_s=0.3) as client:
            await client.models()
            await asyncio.to_thread(proxy.freeze)  # connections stay open, nothing comes back
            asking = [asyncio.create_task(client.models()) for _ in range(10)]
            while client.gate.down is None:  # unanswered, and /healthz unanswered too
                await asyncio.sleep(0.01)
            await asyncio.to_thread(proxy.restore)
            answers = await asyncio.gather(*asking)
    assert all(answer["targets"] for answer in answers)
    [outage] = client.gate.outages
    assert outage.outcome == "recovered" and outage.error.startswith("ServerStalled")


async def test_a_slow_answer_is_waited_for_while_the_server_answers_healthz(toy_world_server):
    async with LineClient(toy_world_server, patience_s=60, stall_s=0.01) as client:
        images = await client.generate_images(["a red circle"] * 4, [1, 2, 3, 4])
    assert len(images) == 4 and not client.gate.outages
