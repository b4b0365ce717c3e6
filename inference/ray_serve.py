"""``line serve --ray``: the inference server as a Ray Serve application.

Two deployments make one application:

* ``line-models`` — ``ModelReplica``, one per GPU (or CPU slot). Each loads every generator and
  target of the ``ServeConfig`` and batches single jobs with ``@serve.batch``, running the same
  ``run_render_batch`` / ``run_activation_batch`` cores as the plain server on one worker thread.
* ``line-ingress`` — ``LineIngress``, one replica serving the same FastAPI app around the same
  ``InferenceService`` (validation, dedupe, image store, activation cache, metrics); its model
  work goes to the replicas through a deployment handle (``RayDispatcher``) instead of the
  service's ``LocalDispatcher``. The agent side cannot tell the difference.

The image store is shared by path (one machine, or a shared filesystem on a cluster); images
travel between ingress and replicas as PIL images through Ray's object store. Ray is an optional
extra: ``pip install 'line-agent[ray]'``; this module imports it only when used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter as PromCounter

from inference.app import create_app
from inference.bases import UnitBasis, load_basis
from inference.batching import (
    ActivationJob,
    BackendError,
    BatchRecord,
    PixelJob,
    RenderedPixels,
    run_activation_batch,
    run_render_batch,
)
from inference.config import ServeConfig, ServeConfigError, load_backends, load_bases
from inference.metrics import ServerMetrics
from inference.pixels import image_of, pixels_of
from inference.protocols import (
    EditJob,
    ImageEditor,
    ImageGenerator,
    LayerInfo,
    RenderedImage,
    RenderJob,
    RenderSettings,
    TargetModel,
)
from inference.service import open_service, target_identity

if TYPE_CHECKING:
    from fastapi import FastAPI
    from PIL import Image
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

log = logging.getLogger("line.server")

RAY_INSTALL_HINT = "pip install 'line-agent[ray]'"
APP_NAME = "line"
MODELS_DEPLOYMENT = "line-models"
INGRESS_DEPLOYMENT = "line-ingress"


class RayServeError(ServeConfigError):
    """Ray is missing, or the cluster cannot host the requested replicas."""


def import_ray() -> tuple[ModuleType, ModuleType]:
    """``(ray, ray.serve)``, or a ``RayServeError`` that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise RayServeError(
            f"line serve --ray needs Ray Serve, which is not installed ({error}); install it "
            f"with: {RAY_INSTALL_HINT}"
        ) from error
    return ray, serve


# ----- messages between ingress and replicas --------------------------------------------------
@dataclass(frozen=True)
class RenderRequest:
    """One image for a replica to render with generator ``generator``."""

    generator: str
    job: RenderJob


@dataclass(frozen=True)
class MeasureRequest:
    """One image for a replica to measure with target ``target``. A per-position reading's
    basis travels as its spec (``basis``), which the replica loads once, not with every job."""

    target: str
    job: ActivationJob
    basis: str | None = None


def measure_request(target: str, job: ActivationJob) -> MeasureRequest:
    """The request for ``job``, its reading's basis (if any) replaced by the basis's spec."""
    reading = job.reading
    if reading is None or reading.basis is None:
        return MeasureRequest(target, job)
    light = replace(job, reading=replace(reading, basis=None))
    return MeasureRequest(target, light, reading.basis.source)


class ReplicaBases:
    """The bases a replica has loaded from the specs of the readings it was sent."""

    def __init__(self) -> None:
        self._loaded: dict[str, UnitBasis] = {}

    def job(self, request: MeasureRequest) -> ActivationJob:
        """``request``'s job with its reading's basis restored; a basis whose file changed
        since the ingress loaded it (another key) fails the job."""
        if request.basis is None or request.job.reading is None:
            return request.job
        if request.basis not in self._loaded:
            self._loaded[request.basis] = load_basis(request.basis)
        reading = replace(request.job.reading, basis=self._loaded[request.basis])
        if reading.key != request.job.layer:
            raise BackendError(
                f"basis {request.basis} on this replica is not the one the server loaded "
                f"(it reads {reading.key}, the request {request.job.layer}); the file changed: "
                "restart the server"
            )
        return replace(request.job, reading=reading)


@dataclass(frozen=True)
class ReplicaBatch:
    """One model batch on one replica; every reply of the batch carries it."""

    replica: str
    sequence: int
    backend: str
    size: int
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class ReplicaReply:
    """A replica's answer to one request: the result, or ``None`` when its batch failed."""

    value: Any
    batch: ReplicaBatch


# ----- the model replica ----------------------------------------------------------------------
class ModelReplica:
    """Holds every backend on one device and runs batches of single jobs from the ingress."""

    def __init__(self, config: ServeConfig) -> None:
        _ray, serve = import_ray()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a Serve replica (never in production)
            self.replica = f"pid{os.getpid()}"
        generators, targets = load_backends(config)
        self.generators = {generator.name: generator for generator in generators}
        self.targets = {target.name: target for target in targets}
        # One worker thread: batches on this replica's device run in order, off the event loop.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="line-replica")
        self._sequence = 0
        batching = serve.batch(
            max_batch_size=config.batching.max_batch,
            batch_wait_timeout_s=config.batching.max_wait_ms / 1000.0,
        )
        self._render_batched = batching(self._render_batch)
        self._measure_batched = batching(self._measure_batch)
        self._bases = ReplicaBases()
        log.info(
            "replica %s: generators %s, targets %s",
            self.replica,
            list(self.generators),
            list(self.targets),
        )

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to validate requests and answer /v1/models."""
        return {
            "replica": self.replica,
            "generators": [
                {
                    "name": generator.name,
                    "identity": generator.identity,
                    "device": generator.device,
                    "defaults": asdict(generator.default_settings()),
                }
                for generator in self.generators.values()
            ],
            "targets": [
                {
                    "name": target.name,
                    "identity": target_identity(target),
                    "device": target.device,
                    "layers": [
                        [layer.name, layer.units, layer.positions] for layer in target.layers()
                    ],
                }
                for target in self.targets.values()
            ],
        }

    async def render(self, request: RenderRequest) -> ReplicaReply:
        """Render one image, batched with concurrent requests on this replica."""
        return await self._render_batched(request)

    async def measure(self, request: MeasureRequest) -> ReplicaReply:
        """One image's layer vector, batched with concurrent requests on this replica."""
        return await self._measure_batched(request)

    async def _render_batch(self, requests: list[RenderRequest]) -> list[ReplicaReply]:
        # Only jobs of one generator and one RenderSettings share a model batch.
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.generator, request.job.settings), []).append(index)
        replies: dict[int, ReplicaReply] = {}
        for (name, _settings), indices in groups.items():
            generator = self.generators.get(name)
            jobs = [requests[index].job for index in indices]
            run = partial(run_render_batch, generator, jobs) if generator else None
            replies.update(zip(indices, await self._run(name, run, len(jobs)), strict=True))
        return [replies[index] for index in range(len(requests))]

    async def _measure_batch(self, requests: list[MeasureRequest]) -> list[ReplicaReply]:
        groups: dict[tuple[str, str], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.target, request.job.layer), []).append(index)
        replies: dict[int, ReplicaReply] = {}
        for (name, _layer), indices in groups.items():
            target = self.targets.get(name)
            group = [requests[index] for index in indices]
            run = partial(self._measure_jobs, target, group) if target else None
            replies.update(zip(indices, await self._run(name, run, len(group)), strict=True))
        return [replies[index] for index in range(len(requests))]

    def _measure_jobs(
        self, target: TargetModel, requests: list[MeasureRequest]
    ) -> list[np.ndarray]:
        """On the worker thread: the jobs' bases restored, then one batch."""
        return run_activation_batch(target, [self._bases.job(request) for request in requests])

    async def _run(
        self, backend: str, run: Callable[[], Sequence[object]] | None, size: int
    ) -> list[ReplicaReply]:
        """Run one model batch on the worker thread; a failure fails only its own replies."""
        self._sequence += 1
        sequence = self._sequence  # render and measure batches interleave at the await below
        started = time.perf_counter()
        try:
            if run is None:
                raise BackendError(f"replica {self.replica} has no backend {backend!r}")
            results = await asyncio.get_running_loop().run_in_executor(self._worker, run)
            if len(results) != size:
                raise BackendError(f"batch returned {len(results)} results for {size} requests")
            error = None
        except Exception as raised:
            results, error = [None] * size, str(raised)
            log.warning(
                "replica %s: %s failed on a batch of %d: %s", self.replica, backend, size, error
            )
        batch = ReplicaBatch(
            self.replica, sequence, backend, size, time.perf_counter() - started, error
        )
        return [ReplicaReply(result, batch) for result in results]


# ----- the ingress ----------------------------------------------------------------------------
@dataclass
class RemoteGenerator:
    """A generator that lives on the replicas: enough of it for validation and /v1/models."""

    name: str
    identity: str
    device: str
    defaults: RenderSettings

    def default_settings(self) -> RenderSettings:
        return self.defaults

    def render(self, jobs: Sequence[RenderJob]) -> list[RenderedImage]:
        raise BackendError(f"{self.name} renders on the Ray replicas, not in the ingress")


@dataclass
class RemoteTarget:
    """A target that lives on the replicas: enough of it for validation and /v1/models."""

    name: str
    identity: str
    device: str
    layer_infos: list[LayerInfo]

    def layers(self) -> list[LayerInfo]:
        return list(self.layer_infos)

    def activations(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        raise BackendError(f"{self.name} measures on the Ray replicas, not in the ingress")


def remote_backends(description: dict) -> tuple[list[RemoteGenerator], list[RemoteTarget]]:
    """Proxy backends from a replica's ``describe()``."""
    generators = [
        RemoteGenerator(
            item["name"], item["identity"], item["device"], RenderSettings(**item["defaults"])
        )
        for item in description["generators"]
    ]
    targets = [
        RemoteTarget(
            item["name"],
            item["identity"],
            item["device"],
            [LayerInfo(*layer) for layer in item["layers"]],
        )
        for item in description["targets"]
    ]
    return generators, targets


class RayDispatcher:
    """Sends the service's single jobs to the model replicas and accounts for their batches.

    Exports ``line_ray_replica_batches_total`` and ``line_ray_replica_items_total`` by replica and
    backend, and feeds the plain server's batch metrics (``line_batch_size`` ...) once per batch.
    """

    def __init__(
        self,
        models: DeploymentHandle[Any],
        metrics: ServerMetrics,
        remembered_batches: int = 10_000,
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._in_flight: Counter[str] = Counter()
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._remembered = remembered_batches
        self._closed = False
        self.replica_batches = PromCounter(
            "line_ray_replica_batches",
            "Model batches run by each Ray Serve replica.",
            ["replica", "backend"],
            registry=metrics.registry,
        )
        self.replica_items = PromCounter(
            "line_ray_replica_items",
            "Images rendered or measured by each Ray Serve replica.",
            ["replica", "backend"],
            registry=metrics.registry,
        )

    async def render(self, generator: ImageGenerator, job: RenderJob) -> RenderedImage:
        """Render one job on a replica (batched there with others)."""
        return await self._call(generator.name, "render", RenderRequest(generator.name, job))

    async def measure(self, target: TargetModel, job: ActivationJob) -> np.ndarray:
        """One image's float32 layer vector from a replica (batched there with others)."""
        return await self._call(target.name, "measure", measure_request(target.name, job))

    async def render_pixels(self, generator: ImageGenerator, job: RenderJob) -> RenderedPixels:
        """Render one job on a replica; its image travels back as a PIL image (Ray's object
        store), so the probe path here is the two-request path in one round trip."""
        rendered = await self.render(generator, job)
        return RenderedPixels(pixels_of(rendered.image), rendered.understood, rendered.extra)

    async def measure_pixels(self, target: TargetModel, job: PixelJob) -> np.ndarray:
        """One image's layer vector from a replica, sent as a PIL image of the pixels."""
        return await self.measure(
            target, ActivationJob(job.image_id, image_of(job.pixels), job.layer, job.reading)
        )

    async def edit(self, editor: ImageEditor, job: EditJob) -> RenderedImage:
        """Editors are not deployed on Ray replicas (``ServeConfig.check`` refuses them)."""
        raise BackendError(
            f"{editor.name}: editing is not served with --ray; run a plain `line serve --editor`"
        )

    def queue_depths(self) -> dict[str, int]:
        """Jobs sent to the replicas and not yet answered, per backend."""
        return dict(self._in_flight)

    async def aclose(self) -> None:
        """Send nothing more; later jobs fail."""
        self._closed = True

    async def _call(
        self, backend: str, method: str, request: RenderRequest | MeasureRequest
    ) -> Any:
        if self._closed:
            raise BackendError(f"{backend}: server is shutting down")
        self._in_flight[backend] += 1
        try:
            reply: ReplicaReply = await getattr(self._models, method).remote(request)
        except Exception as error:
            raise BackendError(f"{backend}: the Ray replica call failed: {error}") from error
        finally:
            self._in_flight[backend] -= 1
        batch = reply.batch
        self._account(batch)
        if batch.error is not None:
            raise BackendError(f"{backend} failed on a batch of {batch.size}: {batch.error}")
        return reply.value

    def _account(self, batch: ReplicaBatch) -> None:
        """Count each replica batch once, although each of its replies carries it."""
        key = (batch.replica, batch.sequence)
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        self._metrics.record_batch(
            BatchRecord(batch.backend, batch.size, batch.seconds, batch.error is not None)
        )
        self.replica_batches.labels(batch.replica, batch.backend).inc()
        self.replica_items.labels(batch.replica, batch.backend).inc(batch.size)


class LineIngress:
    """The HTTP face: the plain server's FastAPI app and service, model work on the replicas."""

    # Ray Serve awaits an async constructor; Python's type checkers do not know that.
    async def __init__(self, models: Any, config: ServeConfig) -> None:  # type: ignore[misc]
        description = await models.describe.remote()
        generators, targets = remote_backends(description)
        metrics = ServerMetrics()
        self.token = config.token
        self.service = open_service(
            generators,
            targets,
            config.store,
            batching=config.batching,
            limits=config.limits,
            dispatcher=RayDispatcher(models, metrics),
            metrics=metrics,
            bases=load_bases(config, targets),  # applied here, to the cached vectors
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.service, self.token)


# ----- building, starting, stopping ---------------------------------------------------------
def build_application(
    config: ServeConfig,
    replicas: int = 1,
    gpus_per_replica: float = 1.0,
    cpus_per_replica: float = 1.0,
) -> Application:
    """The Ray Serve application (``ingress.bind(models.bind(...))``) for ``serve.run``."""
    _ray, serve = import_ray()
    replica_config = replica_serve_config(config, gpus_per_replica)
    actor_options: dict[str, float] = {"num_cpus": cpus_per_replica}
    if gpus_per_replica:
        actor_options["num_gpus"] = gpus_per_replica
    models = serve.deployment(
        ModelReplica,
        name=MODELS_DEPLOYMENT,
        num_replicas=replicas,
        ray_actor_options=actor_options,
        # enough requests on each replica for full batches of both kinds
        max_ongoing_requests=max(4 * config.batching.max_batch, 16),
        max_constructor_retry_count=1,
    )
    ingress = serve.deployment(
        serve.ingress()(LineIngress),
        name=INGRESS_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1024,
        max_constructor_retry_count=1,
    )
    return ingress.bind(models.bind(replica_config), config)


def replica_serve_config(config: ServeConfig, gpus_per_replica: float) -> ServeConfig:
    """The config replicas load backends with: CPU without GPUs; else the GPU Ray assigns."""
    if not gpus_per_replica:
        if config.device not in ("auto", "cpu"):
            log.warning("--gpus-per-replica 0: replicas run on the CPU, not %s", config.device)
        return replace(config, device="cpu")
    if config.device.startswith("cuda:"):
        raise RayServeError(
            f"--device {config.device}: with --ray each replica sees only the GPU(s) Ray gives "
            "it; use --device auto or cuda"
        )
    return config


def check_resources(
    resources: dict[str, float], replicas: int, gpus_per_replica: float, cpus_per_replica: float
) -> None:
    """Refuse replicas the cluster cannot place (Serve would wait for them forever)."""
    if replicas < 1:
        raise RayServeError(f"--replicas must be at least 1, got {replicas}")
    if gpus_per_replica < 0 or cpus_per_replica < 0:
        raise RayServeError("--gpus-per-replica and CPUs per replica cannot be negative")
    gpus = resources.get("GPU", 0.0)
    wanted = replicas * gpus_per_replica
    if wanted > gpus + 1e-9:
        raise RayServeError(
            f"{replicas} replica(s) x {gpus_per_replica:g} GPU need {wanted:g} GPUs, but the Ray "
            f"cluster has {gpus:g}; lower --replicas or --gpus-per-replica, or pass "
            "--gpus-per-replica 0 to run the replicas on the CPU"
        )
    cpus = resources.get("CPU", 0.0)
    wanted = replicas * cpus_per_replica
    if wanted > cpus + 1e-9:
        raise RayServeError(
            f"{replicas} replica(s) x {cpus_per_replica:g} CPU need {wanted:g} CPUs, but the Ray "
            f"cluster has {cpus:g}; lower --replicas"
        )


@dataclass
class RayApp:
    """A running Ray Serve deployment of the inference server."""

    url: str
    replicas: int
    description: dict
    _stop: Any

    def shutdown(self) -> None:
        """Delete the application, and stop Serve and Ray where this process started them."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def __enter__(self) -> RayApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()


def start_ray_app(
    config: ServeConfig,
    replicas: int = 1,
    gpus_per_replica: float = 1.0,
    cpus_per_replica: float = 1.0,
    address: str | None = None,
    num_cpus: int | None = None,
    ray_init_options: dict | None = None,
) -> RayApp:
    """Deploy the inference server on Ray Serve and return once it answers on ``config.host``.

    Joins the cluster at ``address`` (or ``RAY_ADDRESS``), else starts a local Ray with
    ``num_cpus`` CPUs (all when ``None``). Replicas get ``gpus_per_replica`` GPUs each (0: they
    run on the CPU) and ``cpus_per_replica`` CPUs.
    """
    config.check()
    if config.editors:
        raise RayServeError(
            "editors are not deployed on Ray replicas yet; serve --editor from a plain "
            "`line serve` (its store can be the same folder)"
        )
    ray, serve = import_ray()
    config = replace(config, store=Path(config.store).expanduser().resolve())
    address = address or os.environ.get("RAY_ADDRESS") or None
    started_ray = not ray.is_initialized()
    if started_ray:
        options = {"include_dashboard": False, **(ray_init_options or {})}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    serve_was_running = _serve_is_running(serve)
    state = {"deployed": False, "stopped": False}

    def stop() -> None:
        if state["stopped"]:
            return
        state["stopped"] = True
        try:
            if state["deployed"]:
                if serve_was_running:
                    serve.delete(APP_NAME)
                else:
                    serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()

    try:
        check_resources(ray.cluster_resources(), replicas, gpus_per_replica, cpus_per_replica)
        application = build_application(config, replicas, gpus_per_replica, cpus_per_replica)
        state["deployed"] = True
        serve.start(http_options={"host": config.host, "port": config.port})
        try:
            serve.run(application, name=APP_NAME, route_prefix="/")
        except Exception as error:
            raise RayServeError(
                f"the Ray Serve deployment failed: {error}{_deployment_messages(serve)}"
            ) from error
        models = serve.get_deployment_handle(MODELS_DEPLOYMENT, app_name=APP_NAME)
        description = models.describe.remote().result()
    except BaseException:
        stop()
        raise
    url = f"http://{config.host}:{config.port}"
    return RayApp(url, replicas, description, stop)


def _deployment_messages(serve: ModuleType) -> str:
    """What Serve says about our deployments (a replica constructor's traceback, say)."""
    try:
        application = serve.status().applications.get(APP_NAME)
    except Exception:
        return ""
    if application is None:
        return ""
    lines = []
    for name, status in application.deployments.items():
        message = [line for line in (status.message or "").splitlines() if line.strip()]
        if message:  # a traceback's last line names the error
            lines.append(f"\n{name}: {message[-1].strip()}")
    return "".join(lines)


def _serve_is_running(serve: ModuleType) -> bool:
    """Whether Serve already runs on the cluster (then only our application is removed)."""
    status = serve.status()
    return bool(status.proxies or status.applications)


def serve_with_ray(
    config: ServeConfig,
    replicas: int = 1,
    gpus_per_replica: float = 1.0,
    cpus_per_replica: float = 1.0,
    address: str | None = None,
) -> None:
    """``line serve --ray``: deploy, announce the URL, and serve until Ctrl-C."""
    app = start_ray_app(config, replicas, gpus_per_replica, cpus_per_replica, address)
    try:
        names = app.description
        message = (
            f"LINE server (Ray Serve, {replicas} replica(s) x {gpus_per_replica:g} GPU) on "
            f"{app.url} (store {config.store}); "
            f"generators: {', '.join(g['name'] for g in names['generators']) or '-'}; "
            f"targets: {', '.join(t['name'] for t in names['targets']) or '-'}"
        )
        log.info("%s", message)
        print(message, file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        app.shutdown()
