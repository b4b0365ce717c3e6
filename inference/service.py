"""The inference service behind the HTTP server: validation, de-duplication, store, activation
cache and metrics, with model work handed to a dispatcher (local micro-batchers or Ray Serve).

It knows nothing of HTTP: it answers in the wire types of ``inference.wire``, and its errors are
``ServiceError`` with a status code and a message that says what is wrong and what is valid;
``inference.app`` turns them into responses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from inference.bases import BasisError, BasisRegistry, load_basis, width_mismatch
from inference.batching import (
    ActivationJob,
    BackendError,
    Dispatcher,
    LocalDispatcher,
    MicroBatcher,
    PixelJob,
    RenderedPixels,
    edit_backend,
)
from inference.metrics import ServerMetrics
from inference.pixels import image_of
from inference.positions import (
    LayerReading,
    PositionsError,
    default_rule,
    rule_problem,
    split_positions,
)
from inference.protocols import (
    EditJob,
    EditSettings,
    ImageEditor,
    ImageGenerator,
    RenderJob,
    RenderSettings,
    TargetModel,
)
from inference.settings import MIN_SIDE, BatchingConfig, ServiceLimits
from inference.store import (
    ActivationCache,
    ImageStore,
    InvalidImageIdError,
    StoreWriteError,
    check_image_id,
    decode_image,
    edit_id,
    image_id,
    upload_id,
)
from inference.wire import (
    DEFAULT_RENDER,
    ActivationsResponse,
    BasisEntry,
    EditEntry,
    ImageEntry,
    ProbeResponse,
    RenderOptions,
)

log = logging.getLogger("line.server")

MAX_SEED = 2**63 - 1
CACHE_WRITE_BATCH = 4096
"""The most measured vectors one activation-cache write commits."""
PNG_WRITERS = 2
"""Threads that encode and write the PNGs of probed images in the background."""

ResultT = TypeVar("ResultT")
KeyT = TypeVar("KeyT")
TaskT = TypeVar("TaskT")
BackendT = TypeVar("BackendT")


class ServiceError(Exception):
    """A request the service refuses or cannot serve; ``status`` is the HTTP status to send."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


@dataclass(frozen=True)
class CacheWrite:
    """A measured layer vector on its way into the activation cache."""

    target_identity: str
    layer: str
    image_id: str
    vector: np.ndarray


class InferenceService:
    """Renders and measures for many concurrent callers, batching and caching all model work.

    Model work goes to ``dispatcher``: by default a ``LocalDispatcher`` on this process's devices
    (Ray Serve brings its own). Validation, de-duplication, the store, the activation cache and
    metrics stay here either way. Measured vectors reach the cache in one write per batch: writes
    that arrive while the store thread is busy are committed together.
    """

    def __init__(
        self,
        generators: Sequence[ImageGenerator],
        targets: Sequence[TargetModel],
        store: ImageStore,
        cache: ActivationCache,
        batching: BatchingConfig | None = None,
        limits: ServiceLimits | None = None,
        dispatcher: Dispatcher | None = None,
        metrics: ServerMetrics | None = None,
        editors: Sequence[ImageEditor] = (),
        bases: BasisRegistry | None = None,
    ) -> None:
        if not generators and not targets and not editors:
            raise ValueError("an inference service needs at least one generator, target or editor")
        self.generators = {generator.name: generator for generator in generators}
        self.editors = {editor.name: editor for editor in editors}
        self.default_editor = editors[0].name if editors else None
        self.targets = {target.name: target for target in targets}
        self.default_generator = generators[0].name if generators else None
        self.store = store
        self.cache = cache
        self.batching = batching or BatchingConfig()
        self.limits = limits or ServiceLimits()
        self.metrics = metrics or ServerMetrics()
        self.dispatcher: Dispatcher = dispatcher or LocalDispatcher(
            self.batching.max_batch, self.batching.max_wait_ms, self.metrics.record_batch
        )
        # One thread for store and cache I/O: PNG coding on many threads at once would compete
        # with the model's own threads for the cores.
        self._io = ThreadPoolExecutor(1, thread_name_prefix="line-store")
        self._cache_writer: MicroBatcher[CacheWrite, None] = MicroBatcher(
            "activation-cache", self._write_vectors, self._io, CACHE_WRITE_BATCH, max_wait_ms=0
        )
        # PNG encoding and writes of probed images, off the device threads and the cache thread
        self._png_writers = ThreadPoolExecutor(PNG_WRITERS, thread_name_prefix="line-png")
        self._rendering: dict[str, asyncio.Task] = {}
        self._measuring: dict[tuple[str, str, str], asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self.bases = bases or BasisRegistry()
        self._layer_units = {
            target.name: {layer.name: layer.units for layer in target.layers()}
            for target in targets
        }
        self._layer_positions = {
            target.name: {layer.name: layer.positions for layer in target.layers()}
            for target in targets
        }

    # ----- lookups -------------------------------------------------------------------------
    def models(self) -> dict[str, object]:
        """Generators and targets with their layers (unit spaces of bases too) and unit counts,
        editors, and the bases the server applies."""
        return {
            "generators": [
                _backend_entry(generator, self.default_generator)
                for generator in self.generators.values()
            ],
            "targets": [
                {
                    "name": name,
                    "device": self.targets[name].device,
                    "layers": [
                        {"name": layer, "units": units, "positions": positions[layer]}
                        for layer, units in layers.items()
                    ]
                    + self.bases.unit_spaces(layers),
                }
                for name, layers in self._layer_units.items()
                for positions in [self._layer_positions[name]]
            ],
            "editors": [
                _backend_entry(editor, self.default_editor) for editor in self.editors.values()
            ],
            "bases": self.bases.describe(),
        }

    def _generator(self, name: str | None) -> ImageGenerator:
        return _named_backend("generator", self.generators, self.default_generator, name, "")

    def _reading(self, target: str, layer: str) -> LayerReading:
        """How a request's layer name (``LAYER[@BASIS][#RULE]``) is measured on ``target``."""
        if target not in self.targets:
            raise ServiceError(
                f"unknown target {target!r}; this server has: "
                + (", ".join(self.targets) or "none (start it with --target)"),
                status=404,
            )
        layers = self._layer_units[target]
        try:
            rest, rule = split_positions(layer)
        except PositionsError as error:
            raise ServiceError(str(error)) from error
        try:
            layer_read, basis = self.bases.split(rest)
        except BasisError as error:
            raise ServiceError(str(error), status=404) from error
        if layer_read not in layers:
            raise ServiceError(
                f"target {target!r} has no layer {layer_read!r}; valid layers: "
                + ", ".join(layers),
                status=404,
            )
        if basis is not None and basis.d_in != layers[layer_read]:
            raise ServiceError(width_mismatch(basis, target, layer_read, layers[layer_read]))
        kind = self._layer_positions[target][layer_read]
        problem = rule_problem(rule, kind, layer_read, target)
        if problem is not None:
            raise ServiceError(problem)
        rule = rule or default_rule(kind, None if basis is None else basis.kind)
        return LayerReading(layer_read, kind, rule, basis)

    def _target_layer(self, target: str, layer: str) -> int:
        """How many units a request's layer name has on ``target``."""
        reading = self._reading(target, layer)
        if reading.basis is not None:
            return reading.basis.size
        return self._layer_units[target][reading.layer]

    async def add_basis(self, spec: str) -> BasisEntry:
        """Load a unit basis from a path on this machine (``sae:PATH``, ``directions:PATH``) and
        apply it from now on; servers not on loopback refuse (declare it at start instead)."""
        if not self.bases.allow_paths:
            raise ServiceError(
                "this server loads bases by path only when it serves on loopback; declare the "
                "basis when starting it: line serve --basis NAME=SPEC",
                status=403,
            )
        try:
            basis = await asyncio.to_thread(load_basis, spec)
        except BasisError as error:
            raise ServiceError(str(error)) from error
        self.bases.add(basis)
        return BasisEntry(
            key=basis.key,
            kind=basis.kind,
            architecture=basis.architecture,
            d_in=basis.d_in,
            units=basis.size,
            hash=basis.hash,
            source=basis.source,
        )

    def queue_depths(self) -> dict[str, int]:
        """Waiting requests per backend (summed over compatibility keys)."""
        return self.dispatcher.queue_depths()

    async def _in_io_thread(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    # ----- images --------------------------------------------------------------------------
    def resolve_settings(self, generator: ImageGenerator, options: RenderOptions) -> RenderSettings:
        """Fill a request's missing settings from the generator's defaults and check them."""
        settings = generator.default_settings()
        settings = replace(
            settings,
            width=settings.width if options.width is None else options.width,
            height=settings.height if options.height is None else options.height,
            steps=settings.steps if options.steps is None else options.steps,
            guidance=float(settings.guidance if options.guidance is None else options.guidance),
        )
        limit = self.limits.max_side
        for side in ("width", "height"):
            value = getattr(settings, side)
            if not MIN_SIDE <= value <= limit or value % 8:
                raise ServiceError(
                    f"{side} must be a multiple of 8 from {MIN_SIDE} to {limit}, got {value}"
                )
        self._check_steps_and_guidance(settings.steps, settings.guidance)
        return settings

    def _check_steps_and_guidance(self, steps: int, guidance: float) -> None:
        """Steps within the server's limit, guidance from 0 to 100 (renders and edits alike)."""
        if not 1 <= steps <= self.limits.max_steps:
            raise ServiceError(f"steps must be from 1 to {self.limits.max_steps}, got {steps}")
        if not 0.0 <= guidance <= 100.0:
            raise ServiceError(f"guidance must be from 0 to 100, got {guidance}")

    def _check_prompts(self, prompts: Sequence[str], seeds: Sequence[int]) -> None:
        if len(prompts) != len(seeds):
            raise ServiceError(
                f"prompts and seeds must have the same length (one seed per image), got "
                f"{len(prompts)} prompts and {len(seeds)} seeds"
            )
        cap = self.limits.max_images_per_request
        if len(prompts) > cap:
            raise ServiceError(
                f"{len(prompts)} images in one request; this server takes at most {cap} "
                "(split the request, or start the server with a larger --max-images-per-request)",
                status=413,
            )
        for index, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ServiceError(f"prompt {index} is empty; give each image a non-empty prompt")
            if len(prompt) > self.limits.max_prompt_chars:
                raise ServiceError(
                    f"prompt {index} has {len(prompt)} characters; the limit is "
                    f"{self.limits.max_prompt_chars}"
                )
        _check_seeds(seeds)

    async def generate_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        options: RenderOptions = DEFAULT_RENDER,
    ) -> list[ImageEntry]:
        """Render one image per (prompt, seed) unless the store already has it."""
        backend = self._generator(options.generator)
        settings = self.resolve_settings(backend, options)
        self._check_prompts(prompts, seeds)
        keys = [
            image_id(backend.identity, prompt, seed, settings)
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        cached = await self._ensure_stored(
            backend.name,
            keys,
            lambda index: self._render_and_store(
                backend, keys[index], RenderJob(prompts[index], seeds[index], settings)
            ),
        )
        return [
            ImageEntry(id=key, prompt=prompt, seed=seed, cached=hit)
            for key, prompt, seed, hit in zip(keys, prompts, seeds, cached, strict=True)
        ]

    async def _ensure_stored(
        self,
        backend: str,
        keys: Sequence[str],
        make: Callable[[int], Coroutine[Any, Any, None]],
    ) -> list[bool]:
        """Make every image of ``keys`` the store lacks (``make(index)`` renders or edits key
        ``index``), sharing work in flight with concurrent requests; whether each was cached."""
        waits: list[asyncio.Task] = []
        cached: list[bool] = []
        for index, key in enumerate(keys):
            task = self._rendering.get(key)
            hit = task is not None or self.store.has(key)
            if hit:
                self.metrics.image_cache_hits.labels(backend).inc()
            else:
                task = asyncio.create_task(make(index))
                _track_until_done(self._rendering, key, task)
            if task is not None:
                waits.append(task)
            cached.append(hit)
        if waits:
            results = await asyncio.gather(
                *(asyncio.shield(w) for w in waits), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise _as_service_error(result)
        return cached

    async def _render_and_store(self, generator: ImageGenerator, key: str, job: RenderJob) -> None:
        rendered = await self.dispatcher.render(generator, job)
        metadata = _render_metadata(generator, job, rendered.understood)
        await self._in_io_thread(self.store.put, key, rendered.image, metadata)
        self.metrics.images_generated.labels(generator.name).inc()

    def _put_pixels(self, key: str, pixels: Any, metadata: dict[str, object]) -> None:
        """Encode and store a rendered image from its pixels (on a PNG writer thread)."""
        self.store.put(key, image_of(pixels), metadata)

    async def read_png(self, image_id_: str) -> bytes:
        """A stored image's PNG bytes; an image still being rendered or written is waited for."""
        check_image_id(image_id_)
        pending = self._rendering.get(image_id_)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except Exception as error:
                raise _as_service_error(error) from error
        return await asyncio.to_thread(self.store.read_bytes, image_id_)

    async def upload_images(self, images: Sequence[bytes], names: Sequence[str]) -> list[str]:
        """Store user images (a control set's photos); ids hash their bytes."""
        if not images:
            raise ServiceError("images is empty; send base64-encoded image files")
        cap = self.limits.max_images_per_request
        if len(images) > cap:
            raise ServiceError(
                f"{len(images)} images in one request; this server takes at most {cap}", status=413
            )
        if names and len(names) != len(images):
            raise ServiceError(f"{len(names)} names for {len(images)} images; give one per image")
        ids = []
        for index, data in enumerate(images):
            if len(data) > self.limits.max_upload_bytes:
                raise ServiceError(
                    f"image {index} has {len(data)} bytes; the limit is "
                    f"{self.limits.max_upload_bytes}",
                    status=413,
                )
            key = upload_id(data)
            ids.append(key)
            if self.store.has(key):
                continue
            try:
                image = await self._in_io_thread(decode_image, data)
            except ValueError as error:
                raise ServiceError(f"image {index}: {error}") from error
            metadata = {"uploaded": True, "name": names[index] if names else ""}
            await self._in_io_thread(self.store.put, key, image, metadata)
        return ids

    # ----- edits ---------------------------------------------------------------------------
    def _editor(self, name: str | None) -> ImageEditor:
        example = " (a registered editor family, e.g. tiny-pix2pix, or a diffusers pipeline)"
        return _named_backend("editor", self.editors, self.default_editor, name, example)

    def resolve_edit_settings(
        self, editor: ImageEditor, steps: int | None, guidance: float | None
    ) -> EditSettings:
        """Fill an edit request's missing settings from the editor's defaults and check them."""
        settings = editor.default_settings()
        settings = EditSettings(
            steps=settings.steps if steps is None else steps,
            guidance=float(settings.guidance if guidance is None else guidance),
        )
        self._check_steps_and_guidance(settings.steps, settings.guidance)
        return settings

    async def edit_images(
        self,
        image_ids: Sequence[str],
        instruction: str,
        seeds: Sequence[int],
        editor: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[EditEntry]:
        """Apply ``instruction`` to each stored image (one seed each) unless the store already
        has that edit; edited images are stored like rendered ones."""
        backend = self._editor(editor)
        settings = self.resolve_edit_settings(backend, steps, guidance)
        if not instruction.strip():
            raise ServiceError(
                "instruction is empty; say what to change, e.g. 'remove the red circle'"
            )
        if len(instruction) > self.limits.max_prompt_chars:
            raise ServiceError(
                f"instruction has {len(instruction)} characters; the limit is "
                f"{self.limits.max_prompt_chars}"
            )
        if len(image_ids) != len(seeds):
            raise ServiceError(
                f"image_ids and seeds must have the same length (one seed per image), got "
                f"{len(image_ids)} image ids and {len(seeds)} seeds"
            )
        _check_seeds(seeds)
        self._check_image_ids(image_ids)
        sources = {
            value: await self._in_io_thread(self.store.metadata, value)
            for value in dict.fromkeys(image_ids)
        }
        for value, source in sources.items():
            refusal = backend.refusal(source, instruction)
            if refusal is not None:
                raise ServiceError(f"{backend.name} cannot edit image {value}: {refusal}")
        keys = [
            edit_id(backend.identity, value, instruction, seed, settings)
            for value, seed in zip(image_ids, seeds, strict=True)
        ]

        async def edit_one(index: int) -> None:
            source_id = image_ids[index]
            image = await self._in_io_thread(self.store.load, source_id)
            job = EditJob(source_id, image, sources[source_id], instruction, seeds[index], settings)
            await self._edit_and_store(backend, keys[index], job)

        cached = await self._ensure_stored(edit_backend(backend), keys, edit_one)
        return [
            EditEntry(id=key, source=source, seed=seed, cached=hit)
            for key, source, seed, hit in zip(keys, image_ids, seeds, cached, strict=True)
        ]

    async def _edit_and_store(self, editor: ImageEditor, key: str, job: EditJob) -> None:
        edited = await self.dispatcher.edit(editor, job)
        metadata = {
            "editor": editor.identity,
            "source": job.source_id,
            "instruction": job.instruction,
            "seed": job.seed,
            **asdict(job.settings),
            **edited.extra,
        }
        await self._in_io_thread(self.store.put, key, edited.image, metadata)
        self.metrics.images_generated.labels(edit_backend(editor)).inc()

    # ----- activations ---------------------------------------------------------------------
    def _check_image_ids(self, image_ids: Sequence[str]) -> None:
        if not image_ids:
            raise ServiceError("image_ids is empty; pass ids returned by POST /v1/images")
        cap = self.limits.max_images_per_request
        if len(image_ids) > cap:
            raise ServiceError(
                f"{len(image_ids)} images in one request; this server takes at most {cap}",
                status=413,
            )
        try:
            for value in image_ids:
                check_image_id(value)
        except InvalidImageIdError as error:
            raise ServiceError(str(error)) from error
        missing = [value for value in image_ids if not self.store.has(value)]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ServiceError(
                f"{len(missing)} image id(s) are not in the store: {shown}; render them first "
                "with POST /v1/images",
                status=404,
            )

    def _check_units(self, target: str, layer: str, units: Sequence[int] | None) -> list[int]:
        """The units asked for (all of the layer's when ``None``), each checked against it."""
        unit_count = self._target_layer(target, layer)
        if units is None:
            return list(range(unit_count))
        bad = [unit for unit in units if not 0 <= unit < unit_count]
        if bad:
            raise ServiceError(
                f"unit {bad[0]} is out of range: layer {layer!r} of {target!r} has "
                f"{unit_count} units, indices 0 to {unit_count - 1}"
            )
        return list(units)

    async def activations(
        self,
        target: str,
        layer: str,
        image_ids: Sequence[str],
        units: Sequence[int] | None = None,
    ) -> ActivationsResponse:
        """The layer's activations on stored images, for all units or the given ones."""
        units = self._check_units(target, layer, units)
        self._check_image_ids(image_ids)
        values = await self._unit_values(target, layer, image_ids, units, {})
        return ActivationsResponse(target=target, layer=layer, units=units, activations=values)

    async def probe(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        target: str,
        layer: str,
        units: Sequence[int] | None = None,
        options: RenderOptions = DEFAULT_RENDER,
    ) -> ProbeResponse:
        """Render one image per (prompt, seed) and read the layer on them, in one round trip.

        An image the store lacks goes from the generator to the target as pixels on the device;
        its PNG is encoded and written in the background (its id is known up front, and a GET
        of it waits for the write). Images already stored are measured like /v1/activations.
        """
        backend = self._generator(options.generator)
        settings = self.resolve_settings(backend, options)
        self._check_prompts(prompts, seeds)
        units = self._check_units(target, layer, units)
        keys = [
            image_id(backend.identity, prompt, seed, settings)
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        stored = {key: key in self._rendering or self.store.has(key) for key in keys}
        renders = {
            key: (backend, RenderJob(prompt, seed, settings))
            for key, prompt, seed in zip(keys, prompts, seeds, strict=True)
            if not stored[key]
        }
        for key in keys:
            if stored[key]:
                self.metrics.image_cache_hits.labels(backend.name).inc()
        values = await self._unit_values(target, layer, keys, units, renders)
        images = [
            ImageEntry(id=key, prompt=prompt, seed=seed, cached=stored[key])
            for key, prompt, seed in zip(keys, prompts, seeds, strict=True)
        ]
        return ProbeResponse(
            images=images, target=target, layer=layer, units=units, activations=values
        )

    async def _unit_values(
        self,
        target: str,
        layer: str,
        keys: Sequence[str],
        units: list[int],
        renders: dict[str, tuple[ImageGenerator, RenderJob]],
    ) -> np.ndarray:
        """The units' values on images ``keys``: whole layer vectors from the cache, else
        measured (rendered first, on the probe path, for the keys in ``renders``); a basis's
        latents are computed from the vectors."""
        cache_key = target_identity(self.targets[target])
        reading = self._reading(target, layer)
        measured = reading.key  # a basis on a plain vector layer reads the cached vectors
        cached = await self._in_io_thread(self.cache.get_many, cache_key, measured, set(keys))
        waits = {}
        for value in dict.fromkeys(keys):
            if value in cached and value not in renders:
                self.metrics.activation_cache_hits.labels(target).inc()
                continue
            key = (value, target, measured)
            task = self._measuring.get(key)
            if task is None:
                # rendered here unless a concurrent request stored it or began to meanwhile
                if value in renders and value not in self._rendering and not self.store.has(value):
                    generator, job = renders[value]
                    measuring = self._probe_and_cache(generator, job, target, reading, value)
                else:
                    measuring = self._measure_and_cache(target, reading, value)
                task = asyncio.create_task(measuring)
                _track_until_done(self._measuring, key, task)
            waits[value] = task
        if waits:
            results = await asyncio.gather(
                *(asyncio.shield(task) for task in waits.values()), return_exceptions=True
            )
            for value, result in zip(waits, results, strict=True):
                if isinstance(result, BaseException):
                    raise _as_service_error(result)
                cached[value] = result
        matrix = np.stack([cached[value] for value in keys])
        if reading.basis is None or reading.per_position:  # per position: done by the target
            return matrix[:, units]
        # latents or directions of plain vectors: one batched product on the target's device
        device = self.targets[target].device
        return await asyncio.to_thread(reading.basis.encode, matrix, units, device)

    async def _probe_and_cache(
        self,
        generator: ImageGenerator,
        job: RenderJob,
        target: str,
        reading: LayerReading,
        key: str,
    ) -> np.ndarray:
        """Render an image to pixels and measure it from them; its PNG and then its cached
        vector are written in the background (the vector only once the PNG is stored, so a
        crash in between leaves neither and the image is rendered again under the same id)."""
        model = self.targets[target]
        ready: asyncio.Future[RenderedPixels] = asyncio.get_running_loop().create_future()

        async def render_then_store() -> None:
            try:
                rendered = await self.dispatcher.render_pixels(generator, job)
            except BaseException as error:
                ready.set_exception(error)
                raise
            ready.set_result(rendered)
            metadata = _render_metadata(generator, job, rendered.understood)
            await asyncio.get_running_loop().run_in_executor(
                self._png_writers, self._put_pixels, key, rendered.pixels, metadata
            )
            self.metrics.images_generated.labels(generator.name).inc()

        stored = asyncio.create_task(render_then_store())
        stored.add_done_callback(_retrieve_exception)  # a failed render fails ``ready`` too
        _track_until_done(self._rendering, key, stored)
        rendered = await ready
        per_position = reading if reading.per_position else None
        pixel_job = PixelJob(key, rendered.pixels, reading.key, per_position)
        vector = await self.dispatcher.measure_pixels(model, pixel_job)
        self.metrics.activations_computed.labels(target).inc()
        write = CacheWrite(target_identity(model), reading.key, key, vector)
        self._in_background(self._cache_once_stored(stored, write))
        return vector

    async def _cache_once_stored(self, stored: asyncio.Task, write: CacheWrite) -> None:
        try:
            await stored
        except Exception:  # the PNG could not be written: cache nothing, render it again later
            return
        await self._cache_writer.submit(write)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the request returns; ``aclose`` waits for it."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _measure_and_cache(self, target: str, reading: LayerReading, key: str) -> np.ndarray:
        model = self.targets[target]
        pending = self._rendering.get(key)
        if pending is not None:  # rendered by a concurrent request right now
            await asyncio.shield(pending)
        image = await self._in_io_thread(self.store.load, key)
        per_position = reading if reading.per_position else None
        job = ActivationJob(key, image, reading.key, per_position)
        vector = await self.dispatcher.measure(model, job)
        await self._cache_writer.submit(
            CacheWrite(target_identity(model), reading.key, key, vector)
        )
        self.metrics.activations_computed.labels(target).inc()
        return vector

    def _write_vectors(self, writes: list[CacheWrite]) -> list[None]:
        """Commit a batch of cache writes, one write per (target, layer); on the store thread."""
        groups: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for write in writes:
            groups.setdefault((write.target_identity, write.layer), {})[write.image_id] = (
                write.vector
            )
        for (identity, layer), vectors in groups.items():
            try:
                self.cache.put_many(identity, layer, vectors)
            except StoreWriteError as error:  # measuring still works; only caching is lost
                log.warning("%s", error)
        return [None] * len(writes)

    # ----- lifecycle -----------------------------------------------------------------------
    def render_metrics(self) -> bytes:
        """Prometheus text with fresh queue depths."""
        for backend, depth in self.queue_depths().items():
            self.metrics.queue_depth.labels(backend).set(depth)
        return self.metrics.render()

    async def aclose(self) -> None:
        """Stop the dispatcher, the cache writer and the store thread, and close the cache."""
        if self._rendering or self._background:  # probed images' PNGs and vectors
            await asyncio.gather(
                *self._rendering.values(), *self._background, return_exceptions=True
            )
        await self.dispatcher.aclose()
        await self._cache_writer.aclose()
        self._png_writers.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self.cache.close()


def open_service(
    generators: Sequence[ImageGenerator],
    targets: Sequence[TargetModel],
    folder: str | Path,
    **options: Any,
) -> InferenceService:
    """A service whose image store and activation cache live in ``folder`` (PNGs under
    ``images/``, vectors in ``activations.sqlite``): the layout of every LINE server.
    ``options`` are the other ``InferenceService`` arguments (batching, limits, ...)."""
    folder = Path(folder)
    store = ImageStore(folder)
    return InferenceService(
        generators, targets, store, ActivationCache(folder / "activations.sqlite"), **options
    )


def _track_until_done(
    tasks: dict[KeyT, asyncio.Task[TaskT]], key: KeyT, task: asyncio.Task[TaskT]
) -> None:
    """Keep ``task`` under ``key`` while it runs, so concurrent requests share it."""
    tasks[key] = task
    task.add_done_callback(lambda _done: tasks.pop(key, None))


def _check_seeds(seeds: Sequence[int]) -> None:
    """Every seed from 0 to ``MAX_SEED``."""
    for index, seed in enumerate(seeds):
        if not 0 <= seed <= MAX_SEED:
            raise ServiceError(f"seed {index} is {seed}; seeds go from 0 to {MAX_SEED}")


def _named_backend(
    kind: str, backends: dict[str, BackendT], default: str | None, name: str | None, example: str
) -> BackendT:
    """The ``kind`` a request names, or the server's default one; errors say what it has."""
    if name is None:
        if default is None:
            raise ServiceError(f"this server has no {kind}; start it with --{kind}{example}")
        return backends[default]
    if name not in backends:
        raise ServiceError(
            f"unknown {kind} {name!r}; this server has: "
            + (", ".join(backends) or f"none (start it with --{kind})"),
            status=404,
        )
    return backends[name]


def _backend_entry(backend: ImageGenerator | ImageEditor, default: str | None) -> dict[str, object]:
    """How /v1/models lists a generator or an editor."""
    return {
        "name": backend.name,
        "device": backend.device,
        "default": backend.name == default,
        "defaults": asdict(backend.default_settings()),
    }


def _render_metadata(
    generator: ImageGenerator, job: RenderJob, understood: list[str] | None
) -> dict[str, object]:
    """The provenance a rendered image is stored with."""
    metadata: dict[str, object] = {
        "generator": generator.identity,
        "prompt": job.prompt,
        "seed": job.seed,
        **asdict(job.settings),
    }
    if understood is not None:
        metadata["understood"] = understood
        log.debug("%s understood %s in %r", generator.name, understood, job.prompt)
    return metadata


def _retrieve_exception(task: asyncio.Task) -> None:
    """Mark a background task's exception as seen (its waiters report it)."""
    if not task.cancelled():
        task.exception()


def target_identity(target: TargetModel) -> str:
    """What the activation cache is keyed by: the target's weights, not only its name."""
    return getattr(target, "identity", None) or target.name


def _as_service_error(error: BaseException) -> ServiceError:
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, StoreWriteError):
        return ServiceError(str(error), status=507)
    if isinstance(error, BackendError):
        return ServiceError(str(error), status=500)
    return ServiceError(f"internal error: {type(error).__name__}: {error}", status=500)
