"""The async client: retries with backoff on 503 and lost connections, no retry on 4xx."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from inference.app import free_port, start_server_thread
from tools.client import LineClient, LineServerError, LineServerUnavailable


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
    async with LineClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01) as client:
        with pytest.raises(LineServerUnavailable, match=r"after 3 tries.*is `line serve` running"):
            await client.health()


async def test_a_retry_after_is_honoured(flaky_server):
    url, calls = flaky_server
    async with LineClient(url, retries=3, backoff_s=0.01) as client:
        started = time.monotonic()
        await client.metrics_text()
    assert calls["metrics"] == 2 and time.monotonic() - started >= 1.0


async def test_a_server_that_is_down_is_retried_until_patience_has_passed():
    url = f"http://127.0.0.1:{free_port()}"
    async with LineClient(url, retries=1, backoff_s=0.01, patience_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(LineServerUnavailable, match=r"after \d+ tries in \d+ s") as raised:
            await client.health()
    assert time.monotonic() - started >= 1.0
    assert int(str(raised.value).split(" after ")[1].split()[0]) > 2  # more than retries + 1
