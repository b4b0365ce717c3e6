"""Async client of the inference server, used by everything else in LINE.

Requests and answers are the server's own wire models (``inference.wire``). ``InferenceClient``
is what the agent, the runner, control sets and evaluations need of a client; ``LineClient`` (one
server) and ``tools.pool.ServerPool`` (several) both are one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol, Self, runtime_checkable

import httpx
from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay

from inference.wire import (
    ActivationsRequest,
    ActivationsResponse,
    BasisEntry,
    BasisRequest,
    EditEntry,
    EditsRequest,
    EditsResponse,
    ImageEntry,
    ImagesRequest,
    ImagesResponse,
    ProbeRequest,
    ProbeResponse,
    UploadRequest,
    UploadResponse,
)
from tools.retry import RetryPolicy

RETRY_STATUSES = (502, 503, 504)
MAX_BACKOFF_S = 5.0
CONNECTION_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
"""A server that is down or restarting: refused, dropped or garbled connections."""


class LineServerError(RuntimeError):
    """The server refused a request (4xx) or failed (5xx); ``message`` is the server's own words."""

    def __init__(
        self, status: int, message: str, url: str, response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"inference server answered {status} for {url}: {message}")
        self.status = status
        self.message = message
        self.url = url
        self.response = response  # its headers may say when to retry (Retry-After)


class LineServerUnavailable(ConnectionError):
    """The server could not be reached after all retries."""


@runtime_checkable
class InferenceClient(Protocol):
    """What LINE asks of the inference server: one server (``LineClient``) or a pool of them
    (``ServerPool``)."""

    base_url: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Close connections."""
        ...

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        ...

    async def models(self) -> dict[str, Any]:
        """Generators and targets with layers and unit counts."""
        ...

    async def generate_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        generator: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[ImageEntry]:
        """Render one image per (prompt, seed); their ids in order."""
        ...

    async def activations(
        self,
        target: str,
        layer: str,
        image_ids: Sequence[str],
        units: Sequence[int] | None = None,
    ) -> ActivationsResponse:
        """A layer of a target on stored images: a row per image, a column per unit."""
        ...

    async def probe(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        target: str,
        layer: str,
        units: Sequence[int] | None = None,
        generator: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> ProbeResponse:
        """Render one image per (prompt, seed) and read a layer on them in one round trip."""
        ...

    async def edit_images(
        self,
        image_ids: Sequence[str],
        instruction: str,
        seeds: Sequence[int],
        editor: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[EditEntry]:
        """Apply one instruction to stored images (one seed each); the edited images' ids."""
        ...

    async def upload_images(self, files: Sequence[bytes], names: Sequence[str] = ()) -> list[str]:
        """Store image files on the server (a control set); their ids."""
        ...

    async def image_png(self, image_id: str) -> bytes:
        """The PNG bytes of a stored image."""
        ...

    async def metrics_text(self) -> str:
        """The Prometheus metrics page."""
        ...


def _is_transient(error: BaseException) -> bool:
    """A server that is down, restarting or overloaded: worth another try."""
    if isinstance(error, LineServerError):
        return error.status in RETRY_STATUSES
    return isinstance(error, CONNECTION_ERRORS)


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
        self.patience_s = patience_s
        self.retry_policy = RetryPolicy(
            max_attempts=retries + 1, base_delay_s=backoff_s, max_delay_s=MAX_BACKOFF_S
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries: ``retries`` times with backoff, and for a server that is down
        (refused or dropped connections, 502/503/504) also until ``patience_s`` has passed,
        so a run survives a server restart. Every request is idempotent (content-addressed)."""
        retrying = AsyncRetrying(
            stop=self.retry_policy.stop() & stop_after_delay(self.patience_s),
            wait=self.retry_policy.wait(),
            retry=retry_if_exception(_is_transient),
            retry_error_callback=self._give_up,
        )
        return await retrying(self._send_once, method, path, **kwargs)

    async def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise LineServerError(
                response.status_code, _message(response), f"{method} {path}", response
            )
        return response

    def _give_up(self, retry_state: RetryCallState) -> NoReturn:
        """Out of tries: a server error as it came, an unreachable server in plain words."""
        assert retry_state.outcome is not None  # tenacity gives up only after an attempt
        error = retry_state.outcome.exception()
        assert error is not None  # only failed attempts are retried
        if isinstance(error, CONNECTION_ERRORS):
            raise LineServerUnavailable(
                f"cannot reach the inference server at {self.base_url} after "
                f"{retry_state.attempt_number} tries in {retry_state.seconds_since_start:.0f} s "
                f"({error}); is `line serve` running there?"
            ) from error
        raise error

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return (await self._request("GET", "/healthz")).json()

    async def models(self) -> dict[str, Any]:
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
    ) -> list[ImageEntry]:
        """Render one image per (prompt, seed); returns their ids in order."""
        body = _body(
            ImagesRequest,
            prompts=list(prompts),
            seeds=list(seeds),
            generator=generator,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
        )
        response = await self._request("POST", "/v1/images", json=body)
        return ImagesResponse.model_validate_json(response.content).images

    async def activations(
        self,
        target: str,
        layer: str,
        image_ids: Sequence[str],
        units: Sequence[int] | None = None,
    ) -> ActivationsResponse:
        """Read a layer of a target on stored images."""
        body = _body(
            ActivationsRequest,
            target=target,
            layer=layer,
            image_ids=list(image_ids),
            units=None if units is None else list(units),
        )
        response = await self._request("POST", "/v1/activations", json=body)
        return ActivationsResponse.model_validate_json(response.content)

    async def probe(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        target: str,
        layer: str,
        units: Sequence[int] | None = None,
        generator: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> ProbeResponse:
        """Render one image per (prompt, seed) and read a layer on them in one round trip."""
        body = _body(
            ProbeRequest,
            prompts=list(prompts),
            seeds=list(seeds),
            target=target,
            layer=layer,
            units=None if units is None else list(units),
            generator=generator,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
        )
        response = await self._request("POST", "/v1/probe", json=body)
        return ProbeResponse.model_validate_json(response.content)

    async def edit_images(
        self,
        image_ids: Sequence[str],
        instruction: str,
        seeds: Sequence[int],
        editor: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[EditEntry]:
        """Apply one instruction to stored images (one seed each); returns the edited ids."""
        body = _body(
            EditsRequest,
            image_ids=list(image_ids),
            instruction=instruction,
            seeds=list(seeds),
            editor=editor,
            steps=steps,
            guidance=guidance,
        )
        response = await self._request("POST", "/v1/edits", json=body)
        return EditsResponse.model_validate_json(response.content).images

    async def upload_images(self, files: Sequence[bytes], names: Sequence[str] = ()) -> list[str]:
        """Store image files on the server (a control set); returns their ids."""
        body = _body(
            UploadRequest,
            images=[base64.b64encode(data).decode("ascii") for data in files],
            names=list(names),
        )
        response = await self._request("POST", "/v1/images/upload", json=body)
        return UploadResponse.model_validate_json(response.content).ids

    async def image_png(self, image_id: str) -> bytes:
        """The PNG bytes of a stored image."""
        return (await self._request("GET", f"/v1/images/{image_id}")).content

    async def add_basis(self, spec: str) -> BasisEntry:
        """Have a server on this machine load a unit basis by path (``sae:PATH``, ...)."""
        body = _body(BasisRequest, spec=spec)
        response = await self._request("POST", "/v1/bases", json=body)
        return BasisEntry.model_validate_json(response.content)

    async def metrics_text(self) -> str:
        """The Prometheus metrics page."""
        return (await self._request("GET", "/metrics")).text


def _body(request: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """A request body shaped by its wire model, unset options left out. Not validated here: the
    server checks it against its own limits and answers a bad one in its own words."""
    return request.model_construct(**fields).model_dump(exclude_none=True)


def _message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else response.text[:500]
