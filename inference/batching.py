"""Dynamic micro-batching: requests from many concurrent callers meet in full model batches.

The batching core is a plain function ``run_batch(list[request]) -> list[result]``; the
``MicroBatcher`` only decides when a batch closes (``max_batch`` items or ``max_wait_ms`` after its
first item) and runs the function on the device's worker thread, never on the event loop. The same
function can sit behind Ray Serve's ``@serve.batch`` instead.

The service hands single jobs to a :class:`Dispatcher`: :class:`LocalDispatcher` batches them on
this process's devices, ``inference.ray_serve.RayDispatcher`` on Ray Serve replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np
from PIL import Image

from inference.pixels import image_of, pixels_of
from inference.protocols import (
    EditJob,
    ImageEditor,
    ImageGenerator,
    PixelGenerator,
    PixelTarget,
    PositionTarget,
    RenderedImage,
    RenderJob,
    TargetModel,
)

if TYPE_CHECKING:  # torch is imported where pixels are made (see inference.pixels)
    import torch

    from inference.positions import LayerReading

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


class BackendError(RuntimeError):
    """A batch failed inside a backend; carries the backend's own message."""


def run_render_batch(generator: ImageGenerator, jobs: Sequence[RenderJob]) -> list[RenderedImage]:
    """Batching core for images: render jobs that share one ``RenderSettings``."""
    images = generator.render(jobs)
    if len(images) != len(jobs):
        raise BackendError(f"generator {generator.name!r} returned {len(images)} for {len(jobs)}")
    return images


def edit_backend(editor: ImageEditor) -> str:
    """How an editor is named in queues and metrics: ``edit:<name>`` (``procedural:shapes`` is
    both a generator and an editor)."""
    return f"edit:{editor.name}"


def run_edit_batch(editor: ImageEditor, jobs: Sequence[EditJob]) -> list[RenderedImage]:
    """Batching core for edits: edit jobs that share one ``EditSettings`` and image size."""
    images = editor.edit(jobs)
    if len(images) != len(jobs):
        raise BackendError(f"editor {editor.name!r} returned {len(images)} for {len(jobs)}")
    return images


@dataclass(frozen=True)
class ActivationJob:
    """One stored image whose layer vector is wanted. ``layer`` is what is measured (a layer,
    or a reading's key); ``reading`` says how, when the target computes it per position."""

    image_id: str
    image: Image.Image
    layer: str
    reading: LayerReading | None = None


def _position_target(target: TargetModel, reading: LayerReading) -> PositionTarget:
    if not isinstance(target, PositionTarget):
        raise BackendError(
            f"target {target.name!r} cannot read layer {reading.layer!r} per position "
            f"({reading.key})"
        )
    return target


def run_activation_batch(target: TargetModel, jobs: Sequence[ActivationJob]) -> list[np.ndarray]:
    """Batching core for activations: one forward pass over jobs of the same layer (and
    reading); a float32 layer vector per job."""
    layer, reading = jobs[0].layer, jobs[0].reading
    images = [job.image for job in jobs]
    if reading is not None:
        rows = _position_target(target, reading).read(images, reading)
    else:
        rows = target.activations(images, layer)
    return [np.asarray(row, dtype=np.float32) for row in rows]


@dataclass
class RenderedPixels:
    """A rendered image as a uint8 ``[3, H, W]`` tensor (on the generator's device when it
    renders to pixels) plus what the backend understood of the prompt."""

    pixels: torch.Tensor
    understood: list[str] | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PixelJob:
    """One rendered image whose layer vector is wanted, as pixels (see ``RenderedPixels``);
    ``layer`` and ``reading`` as in :class:`ActivationJob`."""

    image_id: str
    pixels: torch.Tensor
    layer: str
    reading: LayerReading | None = None


def run_render_pixels_batch(
    generator: ImageGenerator, jobs: Sequence[RenderJob]
) -> list[RenderedPixels]:
    """Batching core of the probe path: render jobs of one ``RenderSettings`` to pixels, on the
    device for a ``PixelGenerator`` (finished before they are handed on), else from its images."""
    if isinstance(generator, PixelGenerator):
        batch = generator.render_pixels(jobs)
        if batch.is_cuda:  # the target reads them from another worker thread's stream
            import torch  # here, not at the top: see inference.pixels

            torch.cuda.current_stream(batch.device).synchronize()
        if len(batch) != len(jobs):
            raise BackendError(
                f"generator {generator.name!r} returned {len(batch)} for {len(jobs)}"
            )
        return [RenderedPixels(pixels) for pixels in batch]
    return [
        RenderedPixels(pixels_of(rendered.image), rendered.understood, rendered.extra)
        for rendered in run_render_batch(generator, jobs)
    ]


def run_measure_pixels_batch(target: TargetModel, jobs: Sequence[PixelJob]) -> list[np.ndarray]:
    """Batching core of the probe path: one forward pass over pixel jobs of one layer and image
    size, as tensors for a ``PixelTarget``, else through PIL images."""
    layer, reading = jobs[0].layer, jobs[0].reading
    if reading is not None:
        reader = _position_target(target, reading)
        if isinstance(target, PixelTarget):
            import torch  # here, not at the top: see inference.pixels

            rows = reader.read_pixels(torch.stack([job.pixels for job in jobs]), reading)
        else:
            rows = reader.read([image_of(job.pixels) for job in jobs], reading)
    elif isinstance(target, PixelTarget):
        import torch  # here, not at the top: see inference.pixels

        rows = target.activations_from_pixels(torch.stack([job.pixels for job in jobs]), layer)
    else:
        rows = target.activations([image_of(job.pixels) for job in jobs], layer)
    return [np.asarray(row, dtype=np.float32) for row in rows]


def worker_lane(device: str, kind: str) -> str:
    """Which worker thread runs a backend: on a CUDA device each kind (``generator``,
    ``target``, ``editor``) has its own, on its own stream, so the target measures one batch
    while the generator renders the next; elsewhere (the CPU's cores are shared anyway) one."""
    return f"{device}/{kind}" if device.startswith("cuda") else device


def _use_own_stream(device: str) -> None:
    """Thread initialiser: give a CUDA worker thread a stream of its own."""
    import torch  # here, not at the top: see inference.pixels

    torch.cuda.set_stream(torch.cuda.Stream(torch.device(device)))


class DeviceWorkers:
    """Worker threads per device lane (``worker_lane``): model work of a lane runs in order, off
    the event loop."""

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def for_device(self, device: str, kind: str = "model") -> ThreadPoolExecutor:
        """The worker of ``kind``'s lane on ``device`` (created on first use)."""
        lane = worker_lane(device, kind)
        if lane not in self._executors:
            if lane == device:
                worker = ThreadPoolExecutor(1, thread_name_prefix=f"line-{lane}")
            else:
                worker = ThreadPoolExecutor(
                    1,
                    thread_name_prefix=f"line-{lane}",
                    initializer=_use_own_stream,
                    initargs=(device,),
                )
            self._executors[lane] = worker
        return self._executors[lane]

    def shutdown(self) -> None:
        """Stop every worker thread after its current batch."""
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class BatchRecord:
    """What the batcher reports after each batch (for metrics)."""

    backend: str
    size: int
    seconds: float
    failed: bool


class MicroBatcher(Generic[RequestT, ResultT]):
    """Queues requests for one (backend, compatibility key) and runs them in batches."""

    def __init__(
        self,
        backend: str,
        run_batch: Callable[[list[RequestT]], list[ResultT]],
        executor: ThreadPoolExecutor,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.backend = backend
        self._run_batch = run_batch
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[RequestT, asyncio.Future]] = asyncio.Queue()
        self._collector: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    async def submit(self, request: RequestT) -> ResultT:
        """Queue one request and wait for its result (or its batch's error)."""
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect_forever())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _next_batch(self) -> list[tuple[RequestT, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item[1].cancelled()]

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            requests = [request for request, _ in batch]
            timing: dict[str, float] = {}
            results: list[ResultT] = []
            error: Exception | None = None
            try:
                results = await loop.run_in_executor(
                    self._executor, self._timed_batch, requests, timing
                )
                if len(results) != len(requests):
                    raise BackendError(
                        f"{self.backend}: batch returned {len(results)} results for "
                        f"{len(requests)} requests"
                    )
            except Exception as raised:
                error = raised
            seconds = timing.get("seconds", 0.0)
            if self._on_batch:
                self._on_batch(BatchRecord(self.backend, len(batch), seconds, error is not None))
            for index, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    message = f"{self.backend} failed on a batch of {len(batch)}: {error}"
                    future.set_exception(BackendError(message))
                else:
                    future.set_result(results[index])

    def _timed_batch(self, requests: list[RequestT], timing: dict[str, float]) -> list[ResultT]:
        """Run a batch on the worker thread, timing only the model work (not the queue for a
        device shared with other backends)."""
        started = time.perf_counter()
        try:
            return self._run_batch(requests)
        finally:
            timing["seconds"] = time.perf_counter() - started

    async def aclose(self) -> None:
        """Stop collecting; requests still queued fail."""
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except (asyncio.CancelledError, Exception):
                pass
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BackendError(f"{self.backend}: server is shutting down"))


class Dispatcher(Protocol):
    """Where the service sends single model jobs to be batched with others. Errors are
    ``BackendError`` with the backend's message."""

    async def render(self, generator: ImageGenerator, job: RenderJob) -> RenderedImage:
        """Render one job."""
        ...

    async def measure(self, target: TargetModel, job: ActivationJob) -> np.ndarray:
        """One image's float32 layer vector."""
        ...

    async def edit(self, editor: ImageEditor, job: EditJob) -> RenderedImage:
        """Edit one image."""
        ...

    async def render_pixels(self, generator: ImageGenerator, job: RenderJob) -> RenderedPixels:
        """Render one job to pixels (the probe path)."""
        ...

    async def measure_pixels(self, target: TargetModel, job: PixelJob) -> np.ndarray:
        """One rendered image's float32 layer vector from its pixels (the probe path)."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting or not yet answered, per backend name."""
        ...

    async def aclose(self) -> None:
        """Stop; jobs still waiting fail. Called when the service closes."""
        ...


class LocalDispatcher:
    """Batches jobs on this process's devices: one ``MicroBatcher`` per backend and
    compatibility key (generator and settings, or target and layer), one worker thread per
    device."""

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._max_batch = max_batch
        self._max_wait_ms = max_wait_ms
        self._on_batch = on_batch
        self._workers = DeviceWorkers()
        self._batchers: dict[tuple[object, ...], MicroBatcher] = {}

    def _batcher(
        self, key: tuple[object, ...], backend: str, device: str, run_batch: Callable
    ) -> MicroBatcher:
        if key not in self._batchers:
            self._batchers[key] = MicroBatcher(
                backend,
                run_batch,
                self._workers.for_device(device, str(key[0]).removesuffix("-pixels")),
                self._max_batch,
                self._max_wait_ms,
                on_batch=self._on_batch,
            )
        return self._batchers[key]

    async def render(self, generator: ImageGenerator, job: RenderJob) -> RenderedImage:
        """Render one job in a batch of jobs with the same generator and settings."""
        batcher = self._batcher(
            ("generator", generator.name, job.settings),
            generator.name,
            generator.device,
            partial(run_render_batch, generator),
        )
        return await batcher.submit(job)

    async def render_pixels(self, generator: ImageGenerator, job: RenderJob) -> RenderedPixels:
        """Render one job to pixels in a batch of jobs with the same generator and settings."""
        batcher = self._batcher(
            ("generator-pixels", generator.name, job.settings),
            generator.name,
            generator.device,
            partial(run_render_pixels_batch, generator),
        )
        return await batcher.submit(job)

    async def measure_pixels(self, target: TargetModel, job: PixelJob) -> np.ndarray:
        """One image's layer vector from its pixels, in a batch of the same target, layer and
        image size."""
        batcher = self._batcher(
            ("target-pixels", target.name, job.layer, tuple(job.pixels.shape)),
            target.name,
            target.device,
            partial(run_measure_pixels_batch, target),
        )
        return await batcher.submit(job)

    async def edit(self, editor: ImageEditor, job: EditJob) -> RenderedImage:
        """Edit one image in a batch of jobs with the same editor, settings and image size."""
        batcher = self._batcher(
            ("editor", editor.name, job.settings, job.image.size),
            edit_backend(editor),
            editor.device,
            partial(run_edit_batch, editor),
        )
        return await batcher.submit(job)

    async def measure(self, target: TargetModel, job: ActivationJob) -> np.ndarray:
        """One image's layer vector, in a batch of images of the same target and layer."""
        batcher = self._batcher(
            ("target", target.name, job.layer),
            target.name,
            target.device,
            partial(run_activation_batch, target),
        )
        return await batcher.submit(job)

    def queue_depths(self) -> dict[str, int]:
        """Waiting jobs per backend (summed over compatibility keys)."""
        depths: dict[str, int] = {}
        for batcher in self._batchers.values():
            depths[batcher.backend] = depths.get(batcher.backend, 0) + batcher.queue_depth
        return depths

    async def aclose(self) -> None:
        """Stop every batcher, then the device threads after their current batch."""
        for batcher in self._batchers.values():
            await batcher.aclose()
        await asyncio.to_thread(self._workers.shutdown)
