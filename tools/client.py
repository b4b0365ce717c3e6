"""Async client of the inference server, used by everything else in LINE."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import numpy as np

RETRY_STATUSES = (502, 503, 504)
MAX_BACKOFF_S = 5.0


class LineServerError(RuntimeError):
    """The server refused a request (4xx) or failed (5xx); ``message`` is the server's own words."""

    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(f"inference server answered {status} for {url}: {message}")
        self.status = status
        self.message = message
        self.url = url


class LineServerUnavailable(ConnectionError):
    """The server could not be reached after all retries."""


@dataclass(frozen=True)
class ImageInfo:
    """An image the server rendered or found in its store."""

    id: str
    prompt: str
    seed: int
    cached: bool


@dataclass(frozen=True)
class Activations:
    """A layer's activations: a row per image, a column per unit."""

    target: str
    layer: str
    units: list[int]
    values: np.ndarray


class LineClient:
    """Pooled async HTTP client with timeouts, retries (backoff + jitter) and readable errors."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 5,
        backoff_s: float = 0.25,
        max_connections: int = 64,
        patience_s: float = 0.0,
    ) -> None:
        token = token or os.environ.get("LINE_SERVER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.patience_s = patience_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def __aenter__(self) -> LineClient:
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send with retries: ``retries`` times with backoff, and for a server that is down
        (refused or dropped connections, 502/503/504) also until ``patience_s`` has passed,
        so a run survives a server restart. Every request is idempotent (content-addressed)."""
        attempt = 0
        started = time.monotonic()

        def out_of_tries() -> bool:
            return attempt >= self.retries and time.monotonic() - started >= self.patience_s

        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as error:
                if out_of_tries():
                    raise LineServerUnavailable(
                        f"cannot reach the inference server at {self.base_url} after "
                        f"{attempt + 1} tries in {time.monotonic() - started:.0f} s ({error}); "
                        "is `line serve` running there?"
                    ) from error
            else:
                if response.status_code not in RETRY_STATUSES or out_of_tries():
                    if response.status_code >= 400:
                        raise LineServerError(
                            response.status_code, _message(response), f"{method} {path}"
                        )
                    return response
            delay = min(self.backoff_s * (2**attempt), MAX_BACKOFF_S)
            await asyncio.sleep(delay * (0.5 + random.random()))
            attempt += 1

    async def health(self) -> dict:
        """``GET /healthz``."""
        return (await self._request("GET", "/healthz")).json()

    async def models(self) -> dict:
        """Generators and targets with layers and unit counts."""
        return (await self._request("GET", "/v1/models")).json()

    async def generate_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        generator: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[ImageInfo]:
        """Render one image per (prompt, seed); returns their ids in order."""
        body = {"prompts": list(prompts), "seeds": list(seeds)}
        optional = {
            "generator": generator,
            "width": width,
            "height": height,
            "steps": steps,
            "guidance": guidance,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        answer = (await self._request("POST", "/v1/images", json=body)).json()
        return [ImageInfo(**image) for image in answer["images"]]

    async def activations(
        self,
        target: str,
        layer: str,
        image_ids: Sequence[str],
        units: Sequence[int] | None = None,
    ) -> Activations:
        """Read a layer of a target on stored images."""
        body: dict[str, object] = {"target": target, "layer": layer, "image_ids": list(image_ids)}
        if units is not None:
            body["units"] = list(units)
        answer = (await self._request("POST", "/v1/activations", json=body)).json()
        values = np.asarray(answer["activations"], dtype=np.float32).reshape(
            len(image_ids), len(answer["units"])
        )
        return Activations(answer["target"], answer["layer"], answer["units"], values)

    async def upload_images(self, files: Sequence[bytes], names: Sequence[str] = ()) -> list[str]:
        """Store image files on the server (a control set); returns their ids."""
        body = {
            "images": [base64.b64encode(data).decode("ascii") for data in files],
            "names": list(names),
        }
        return (await self._request("POST", "/v1/images/upload", json=body)).json()["ids"]

    async def image_png(self, image_id: str) -> bytes:
        """The PNG bytes of a stored image."""
        return (await self._request("GET", f"/v1/images/{image_id}")).content

    async def metrics_text(self) -> str:
        """The Prometheus metrics page."""
        return (await self._request("GET", "/metrics")).text


def _message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else response.text[:500]
