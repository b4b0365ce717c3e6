"""Async client of the inference server, used by everything else in LINE.

Requests and answers are the server's own wire models (``inference.wire``). ``InferenceClient``
is what the agent, the runner, control sets and evaluations need of a client; ``LineClient`` (one
server) and ``tools.pool.ServerPool`` (several) both are one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import httpx
from pydantic import BaseModel
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay

from inference.wire import (
    DEFAULT_RENDER,
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
    RenderOptions,
    UploadRequest,
    UploadResponse,
)
from tools.availability import AvailabilityGate, EndpointUnreachable, clock_time
from tools.retry import RetryPolicy

RETRY_STATUSES = (502, 503, 504)
MAX_BACKOFF_S = 5.0
HEALTH_PROBE_TIMEOUT_S = 5.0
"""How long a probe of ``/healthz`` waits for the answer."""
STALL_CHECK_S = 30.0
"""A request unanswered this long has the client ask ``/healthz`` whether the server is alive."""


class ServerStalled(ConnectionError):
    """A request got no answer and neither did ``/healthz``: the server accepts connections but
    has stopped answering (frozen, not dead)."""


CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ConnectTimeout,
    ServerStalled,
)
"""A server that is down, restarting or frozen: refused, dropped, garbled, unanswered or stalled
connections (left to the client's :class:`~tools.availability.AvailabilityGate`)."""


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


class LineServerDown(LineServerUnavailable, EndpointUnreachable):
    """The server stayed unreachable for the client's whole patience (an outage it gave up
    on): a run stops, and ``line run --resume`` continues it."""


@runtime_checkable
class InferenceClient(Protocol):
    """What LINE asks of the inference server: one server (``LineClient``) or a pool of them
    (``ServerPool``)."""

    base_url: str

    @property
    def gates(self) -> list[AvailabilityGate]:
        """The availability gates of the server(s): their outages, for progress and results."""
        ...

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
        options: RenderOptions = DEFAULT_RENDER,
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
        options: RenderOptions = DEFAULT_RENDER,
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
    """A server that is restarting or overloaded (502, 503, 504): worth another try."""
    return isinstance(error, LineServerError) and error.status in RETRY_STATUSES


class LineClient:
    """Pooled async HTTP client with timeouts, retries (backoff + jitter), readable errors and
    one wait per outage (:class:`~tools.availability.AvailabilityGate`): when the server stops
    answering, every request of this client waits for it together, for ``patience_s``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 5,
        backoff_s: float = 0.25,
        max_connections: int = 64,
        patience_s: float = 0.0,
        stall_s: float = STALL_CHECK_S,
        probe_timeout_s: float = HEALTH_PROBE_TIMEOUT_S,
    ) -> None:
        token = token or os.environ.get("LINE_SERVER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.patience_s = patience_s
        self.retries = retries
        self.stall_s = stall_s
        self.probe_timeout_s = probe_timeout_s
        self.retry_policy = RetryPolicy(
            max_attempts=retries + 1, base_delay_s=backoff_s, max_delay_s=MAX_BACKOFF_S
        )
        self.gate = AvailabilityGate(
            f"inference server {self.base_url}", self.answers, patience_s=patience_s
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

    @property
    def gates(self) -> list[AvailabilityGate]:
        """This server's availability gate."""
        return [self.gate]

    async def aclose(self) -> None:
        """Stop probing and close pooled connections."""
        await self.gate.close()
        await self._http.aclose()

    async def answers(self) -> bool:
        """Whether ``GET /healthz`` answers 200 now (one try, never raises)."""
        try:
            response = await self._http.get("/healthz", timeout=self.probe_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send once the server answers. A server that cannot be reached (refused, dropped or
        unanswered connections; a request unanswered for ``stall_s`` while ``/healthz`` does not
        answer either) is left to the gate: this request and every other wait for it together,
        up to ``patience_s`` (:class:`LineServerDown` after that), and are sent again when it
        is back, at most ``retries`` times when it fails again and again;
        502/503/504 are retried ``retries`` times with backoff, and until ``patience_s`` has
        passed. Every request is idempotent (content-addressed)."""
        started = time.monotonic()
        tries = 0
        while True:
            try:
                await self.gate.wait_until_up()
            except EndpointUnreachable as error:
                raise self._down(error) from error
            tries += 1
            retrying = AsyncRetrying(
                stop=self.retry_policy.stop() & stop_after_delay(self.patience_s),
                wait=self.retry_policy.wait(),
                retry=retry_if_exception(_is_transient),
                reraise=True,
            )
            sent_at = time.monotonic()
            try:
                return await self._send_watched(retrying, method, path, **kwargs)
            except CONNECTION_ERRORS as error:
                if tries > self.retries:
                    raise LineServerUnavailable(
                        f"cannot reach the inference server at {self.base_url} after {tries} "
                        f"tries in {time.monotonic() - started:.0f} s ({error}); is `line "
                        "serve` running there?"
                    ) from error
                self.gate.report(error, sent_at)

    async def _send_watched(
        self, retrying: AsyncRetrying, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        """Send (with its 5xx retries); every ``stall_s`` without an answer, ask ``/healthz``:
        a server that answers it is slow and is waited for, one that does not has stalled
        (:class:`ServerStalled`, the request is dropped and sent again after the outage)."""
        sending: asyncio.Future[httpx.Response] = asyncio.ensure_future(
            retrying(self._send_once, method, path, **kwargs)
        )
        try:
            while True:
                done, _ = await asyncio.wait({sending}, timeout=self.stall_s)
                if done:
                    return sending.result()
                if self.gate.is_up and await self.answers():
                    continue  # slow, not stuck
                if self.gate.is_up or self.gate.down is not None:
                    raise ServerStalled(
                        f"no answer to {method} {path} in {self.stall_s:g} s, nor to GET /healthz"
                    )
        finally:
            sending.cancel()  # a no-op once it is done

    def _down(self, error: EndpointUnreachable) -> LineServerDown:
        """The gate gave up: the server's outage in plain words."""
        outage = error.outage
        since = ""
        if error.patience_s > 0:
            since = (
                f" since {clock_time(outage.started)} ({outage.seconds:.0f} s, the outage patience)"
            )
        return LineServerDown.of(
            outage,
            error.patience_s,
            f"cannot reach the inference server at {self.base_url}{since}: {outage.error}; is "
            "`line serve` running there?",
        )

    async def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise LineServerError(
                response.status_code, _message(response), f"{method} {path}", response
            )
        return response

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
        options: RenderOptions = DEFAULT_RENDER,
    ) -> list[ImageEntry]:
        """Render one image per (prompt, seed); returns their ids in order."""
        body = _body(
            ImagesRequest,
            prompts=list(prompts),
            seeds=list(seeds),
            **dict(options),
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
        options: RenderOptions = DEFAULT_RENDER,
    ) -> ProbeResponse:
        """Render one image per (prompt, seed) and read a layer on them in one round trip."""
        body = _body(
            ProbeRequest,
            prompts=list(prompts),
            seeds=list(seeds),
            target=target,
            layer=layer,
            units=None if units is None else list(units),
            **dict(options),
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
