"""The HTTP face of the inference service: versioned JSON endpoints, token auth, metrics."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from inference.service import InferenceService, ServiceError
from inference.store import (
    InvalidImageIdError,
    StoreWriteError,
)
from inference.wire import (
    ActivationsRequest,
    ActivationsResponse,
    BasisEntry,
    BasisRequest,
    EditsRequest,
    EditsResponse,
    ErrorResponse,
    ImagesRequest,
    ImagesResponse,
    ProbeRequest,
    ProbeResponse,
    UploadRequest,
    UploadResponse,
)

API_VERSION = "v1"
MAX_UPLOAD_ASPECT = 128
"""How many times longer than wide an uploaded image may be (the server renders up to 16x2048).
Targets scale the short side to about 224 pixels, so a 1x100000 PNG of a few hundred bytes would
become gigabytes of pixels."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str) -> JSONResponse:
    # Messages quote request text, which may hold lone surrogates that UTF-8 cannot encode.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"detail": message}, status_code=status)


def _token_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (compared as bytes, in constant time)."""
    scheme, _, given = header.partition(" ")
    # Header values arrive decoded as latin-1; compare_digest refuses non-ASCII str.
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.encode("latin-1", "replace"), token.encode("utf-8")
    )


def _too_thin(images: list[bytes]) -> str | None:
    """Why the first overly elongated image is refused (from its header; nothing is decoded)."""
    for index, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Exception:  # not an image: the service says so
            continue
        if max(width, height) > MAX_UPLOAD_ASPECT * max(1, min(width, height)):
            return (
                f"image {index} is {width}x{height} pixels; an image's long side may be at most "
                f"{MAX_UPLOAD_ASPECT} times its short side (targets scale the short side to about "
                "224 pixels)"
            )
    return None


def _describe_validation(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        if item.get("type") == "json_invalid":
            return f"malformed JSON in the request body: {item.get('ctx', {}).get('error', '')}"
        parts.append(f"{where or 'body'}: {item.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def create_app(service: InferenceService, token: str | None = None) -> FastAPI:
    """The FastAPI application serving ``service``; every request needs ``token`` if one is set."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(
        title="LINE inference server",
        version="1",
        description="Batched text-to-image rendering and activation measurement for LINE.",
        lifespan=lifespan,
        responses={
            "4XX": {"model": ErrorResponse, "description": "A refused request."},
            "5XX": {"model": ErrorResponse, "description": "A backend or the store failed."},
        },
    )

    @app.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if token is not None:
            if not _token_matches(request.headers.get("authorization", ""), token):
                return _error(
                    401,
                    "missing or wrong token: send 'Authorization: Bearer <token>' with the "
                    "server's --token (LINE_SERVER_TOKEN)",
                )
        return await call_next(request)

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(StoreWriteError)
    async def store_error(_request: Request, error: StoreWriteError) -> JSONResponse:
        return _error(507, str(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, _describe_validation(error))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        """Liveness: the server is up and its models are loaded."""
        return {
            "status": "ok",
            "generators": list(service.generators),
            "targets": list(service.targets),
            "editors": list(service.editors),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(service.render_metrics(), media_type="text/plain; version=0.0.4")

    @app.get(f"/{API_VERSION}/models")
    async def models() -> dict[str, object]:
        """Generators and targets with their layers and unit counts."""
        return service.models()

    @app.post(f"/{API_VERSION}/images", response_model=ImagesResponse)
    async def images(body: ImagesRequest) -> ImagesResponse:
        """Render one image per prompt/seed pair; stored images are not rendered again."""
        records = await service.generate_images(body.prompts, body.seeds, body.render_options())
        return ImagesResponse(images=records)

    @app.post(f"/{API_VERSION}/edits", response_model=EditsResponse)
    async def edits(body: EditsRequest) -> EditsResponse:
        """Edit stored images with one instruction (one seed per image); the edited images are
        stored under new content-addressed ids and stored edits are not made again."""
        records = await service.edit_images(
            body.image_ids,
            body.instruction,
            body.seeds,
            editor=body.editor,
            steps=body.steps,
            guidance=body.guidance,
        )
        return EditsResponse(images=records)

    @app.post(f"/{API_VERSION}/images/upload", response_model=UploadResponse)
    async def upload(body: UploadRequest) -> UploadResponse:
        """Store image files; their ids work with /v1/activations like rendered ones."""
        decoded = []
        for index, text in enumerate(body.images):
            try:
                decoded.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as error:
                raise ServiceError(f"image {index} is not valid base64: {error}") from error
        refusal = await asyncio.to_thread(_too_thin, decoded)
        if refusal is not None:
            raise ServiceError(refusal)
        return UploadResponse(ids=await service.upload_images(decoded, body.names))

    @app.get(
        f"/{API_VERSION}/images/{{image_id}}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def image_png(image_id: str = Path(max_length=200)) -> Response:
        """The PNG of a stored image (one still being written by a probe is waited for)."""
        try:
            data = await service.read_png(image_id)
        except InvalidImageIdError as error:
            raise ServiceError(str(error)) from error
        except FileNotFoundError as error:
            raise ServiceError(f"no image {image_id} in the store", status=404) from error
        return Response(data, media_type="image/png")

    @app.post(f"/{API_VERSION}/probe", response_model=ProbeResponse)
    async def probe(body: ProbeRequest) -> ProbeResponse:
        """Render one image per prompt/seed pair and read a layer on them in one round trip:
        the images as POST /v1/images gives them, their activations as POST /v1/activations."""
        return await service.probe(
            body.prompts,
            body.seeds,
            body.target,
            body.layer,
            body.units,
            body.render_options(),
        )

    @app.post(f"/{API_VERSION}/activations", response_model=ActivationsResponse)
    async def activations(body: ActivationsRequest) -> ActivationsResponse:
        """A layer's activations on stored images (all units, or the listed ones)."""
        return await service.activations(body.target, body.layer, body.image_ids, body.units)

    @app.post(f"/{API_VERSION}/bases", response_model=BasisEntry)
    async def bases(body: BasisRequest) -> BasisEntry:
        """Load a unit basis (SAE, directions) from a path on this machine; read layer L in it
        as ``L@<key>``. Only servers on loopback load paths; others declare bases at start."""
        return await service.add_basis(body.spec)

    return app


@dataclass
class RunningServer:
    """A uvicorn server running on a background thread (for ``line run`` and tests)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_server_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve ``app`` with uvicorn on a background thread; returns once it accepts connections."""
    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="line-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the inference server did not start on {host}:{port}")
        time.sleep(0.02)
    return RunningServer(f"http://{host}:{port}", server, thread)
