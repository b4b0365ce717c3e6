"""The async client: retries with backoff on 503 and lost connections, no retry on 4xx."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from inference.app import free_port, start_server_thread
from tools.client import LineClient, LineServerError, LineServerUnavailable


@pytest.fixture(scope="module")
def flaky_server():
    calls = {"healthz": 0, "models": 0}
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
