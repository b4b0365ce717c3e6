"""Several inference servers used as one: ``line run --server URL --server URL ...``.

For users with one ``line serve`` per GPU (or per machine). ``ServerPool`` is an
``InferenceClient`` like ``LineClient``, so the agent side does not change:

- a render request goes to the server with the fewest outstanding requests (ties in turn);
- images live in the store of the server that rendered them, so activations of an image go to
  that server (one request per server when a batch spans several, rows merged in order);
- uploads (control-set photos) go to every server: their ids hash the bytes, so they agree;
- a server that stops answering is set aside for a while and its work goes elsewhere. An image
  whose server is gone is rendered again on another one: image ids hash the generator, prompt,
  seed and settings, so the new copy has the same id and nothing already recorded changes;
- when none answers, the pool's :class:`~tools.availability.AvailabilityGate` makes every
  request wait together while one prober asks the servers' ``/healthz``, for ``patience_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

from inference.wire import (
    DEFAULT_RENDER,
    ActivationsResponse,
    EditEntry,
    ImageEntry,
    ProbeResponse,
    RenderOptions,
)
from tools.availability import AvailabilityGate, EndpointUnreachable, clock_time
from tools.client import (
    InferenceClient,
    LineClient,
    LineServerDown,
    LineServerError,
    LineServerUnavailable,
)

log = logging.getLogger("line.pool")

DOWN_FOR_S = 10.0  # how long a server that failed is passed over while others answer

ResultT = TypeVar("ResultT")
ClientCall = Callable[[LineClient], Awaitable[ResultT]]
"""One request, sent with whichever member's client the pool picks."""


@dataclass
class PoolMember:
    """One server of the pool and what the pool knows about it."""

    url: str
    client: LineClient
    outstanding: int = 0
    requests: int = 0
    images_rendered: int = 0
    failures: int = 0
    down_until: float = 0.0

    def is_up(self, now: float) -> bool:
        """Whether the server is not being passed over at time ``now``."""
        return now >= self.down_until


@dataclass(frozen=True)
class RenderRecipe:
    """How an image was asked for, so another server can render the same image (same id)."""

    prompt: str
    seed: int
    options: RenderOptions


@dataclass
class PoolStats:
    """Requests per server, for progress output and tests."""

    requests: dict[str, int] = field(default_factory=dict)
    images_rendered: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    rerendered: int = 0


class ServerPool:
    """Spread requests over several servers (least outstanding requests); see the module doc."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None = None,
        patience_s: float = 300.0,
        **client_options: Any,
    ) -> None:
        urls = list(dict.fromkeys(url.rstrip("/") for url in urls))
        if not urls:
            raise ValueError("a server pool needs at least one server URL")
        client_options.setdefault("retries", 2)
        client_options["patience_s"] = 0.0  # a member that is down fails over at once
        self.members = [
            PoolMember(url, LineClient(url, token=token, **client_options)) for url in urls
        ]
        self.base_url = ",".join(urls)
        self.patience_s = patience_s
        self.gate = AvailabilityGate(
            f"inference servers {', '.join(urls)}", self._any_answers, patience_s=patience_s
        )
        self._owner: dict[str, PoolMember] = {}
        self._recipes: dict[str, RenderRecipe] = {}
        self._turn = itertools.count()
        self._rerendered = 0

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
        """The pool's gate: down when no server answers (one server down is failed over)."""
        return [self.gate]

    async def aclose(self) -> None:
        """Stop probing and close every member's connections."""
        await self.gate.close()
        await asyncio.gather(*(member.client.aclose() for member in self.members))

    async def _any_answers(self) -> bool:
        """Whether any server answers ``/healthz`` now."""
        answers = await asyncio.gather(*(member.client.answers() for member in self.members))
        now = time.monotonic()
        for member, answered in zip(self.members, answers, strict=True):
            if answered and not member.is_up(now):
                member.down_until = 0.0  # back: the next request may go there
        return any(answers)

    async def _wait_for_a_server(self, error: BaseException, sent_at: float | None = None) -> None:
        """No server could take a request (first sent at ``sent_at``): wait (with every other
        request) until one answers; :class:`LineServerDown` once none has for ``patience_s``."""
        self.gate.report(error, sent_at)
        try:
            await self.gate.wait_until_up()
        except EndpointUnreachable as gave_up:
            outage = gave_up.outage
            raise LineServerDown.of(
                outage,
                gave_up.patience_s,
                f"none of the inference servers answered for {outage.seconds:.0f} s (since "
                f"{clock_time(outage.started)}; the outage patience is {self.patience_s:.0f} "
                f"s): {self.base_url}; is `line serve` running there?",
            ) from gave_up

    # ----- choosing a server ---------------------------------------------------------------
    def _least_outstanding(self, exclude: Sequence[PoolMember] = ()) -> PoolMember | None:
        now = time.monotonic()
        candidates = [m for m in self.members if m not in exclude and m.is_up(now)]
        if not candidates:
            candidates = [m for m in self.members if m not in exclude]
        if not candidates:
            return None
        fewest = min(member.outstanding for member in candidates)
        tied = [member for member in candidates if member.outstanding == fewest]
        return tied[next(self._turn) % len(tied)]

    async def _on(self, member: PoolMember, call: ClientCall[ResultT]) -> ResultT:
        member.outstanding += 1
        member.requests += 1
        try:
            result = await call(member.client)
        except LineServerUnavailable as error:
            member.failures += 1
            member.down_until = time.monotonic() + DOWN_FOR_S
            log.warning("inference server %s is not answering; using the others", member.url)
            if isinstance(error, LineServerDown):  # one member's outage does not stop a run
                raise LineServerUnavailable(str(error)) from error
            raise
        finally:
            member.outstanding -= 1
        member.down_until = 0.0
        return result

    async def _with_failover(self, call: ClientCall[ResultT]) -> tuple[PoolMember, ResultT]:
        """Send ``call`` to the least busy server; on a server that is down, to the next one,
        and when all are down, again once one answers (up to ``patience_s``)."""
        tried: list[PoolMember] = []
        last: BaseException = LineServerUnavailable("no server answers")
        sent_at = time.monotonic()
        while True:
            await self._gate_open()
            member = self._least_outstanding(exclude=tried)
            if member is None:
                await self._wait_for_a_server(last, sent_at)
                tried, sent_at = [], time.monotonic()
                continue
            try:
                return member, await self._on(member, call)
            except LineServerUnavailable as error:
                tried.append(member)
                last = error

    async def _gate_open(self) -> None:
        """Wait while no server answers (see :meth:`_wait_for_a_server`)."""
        if not self.gate.is_up:
            await self._wait_for_a_server(LineServerUnavailable("no server answers"))

    # ----- the InferenceClient interface ---------------------------------------------------
    async def health(self) -> dict[str, Any]:
        """``/healthz`` of the first server that answers."""
        return (await self._with_failover(lambda client: client.health()))[1]

    async def models(self) -> dict[str, Any]:
        """``/v1/models`` of the first server that answers (all should serve the same)."""
        return (await self._with_failover(lambda client: client.models()))[1]

    async def generate_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        options: RenderOptions = DEFAULT_RENDER,
    ) -> list[ImageEntry]:
        """Render on the least busy server; remembers where each image lives."""
        member, images = await self._with_failover(_render(prompts, seeds, options))
        for image in images:
            self._owner[image.id] = member
            self._recipes[image.id] = RenderRecipe(image.prompt, image.seed, options)
        member.images_rendered += sum(not image.cached for image in images)
        return images

    async def probe(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        target: str,
        layer: str,
        units: Sequence[int] | None = None,
        options: RenderOptions = DEFAULT_RENDER,
    ) -> ProbeResponse:
        """Render and measure on the least busy server; remembers where each image lives."""

        def probe(client: LineClient) -> Awaitable[ProbeResponse]:
            return client.probe(prompts, seeds, target, layer, units, options)

        member, answer = await self._with_failover(probe)
        for image in answer.images:
            self._owner[image.id] = member
            self._recipes[image.id] = RenderRecipe(image.prompt, image.seed, options)
        member.images_rendered += sum(not image.cached for image in answer.images)
        return answer

    async def activations(
        self,
        target: str,
        layer: str,
        image_ids: Sequence[str],
        units: Sequence[int] | None = None,
    ) -> ActivationsResponse:
        """Measure each image on the server that holds it; rows come back in request order."""
        groups: dict[int, list[str]] = {}
        members: dict[int, PoolMember | None] = {}
        for image_id in dict.fromkeys(image_ids):
            owner = self._owner.get(image_id)
            groups.setdefault(id(owner), []).append(image_id)
            members[id(owner)] = owner
        results = await asyncio.gather(
            *(
                self._measure_group(members[key], target, layer, ids, units)
                for key, ids in groups.items()
            )
        )
        rows: dict[str, np.ndarray] = {}
        measured_units: list[int] = []
        for ids, result in zip(groups.values(), results, strict=True):
            measured_units = result.units
            rows.update(zip(ids, result.values, strict=True))
        values = np.stack([rows[image_id] for image_id in image_ids])
        return ActivationsResponse(
            target=target, layer=layer, units=measured_units, activations=values
        )

    async def _measure_group(
        self,
        owner: PoolMember | None,
        target: str,
        layer: str,
        ids: list[str],
        units: Sequence[int] | None,
    ) -> ActivationsResponse:
        def measure(client: LineClient) -> Awaitable[ActivationsResponse]:
            return client.activations(target, layer, ids, units)

        if owner is None:  # not rendered through this pool: any server (a shared store)
            return (await self._with_failover(measure))[1]
        try:
            return await self._on(owner, measure)
        except LineServerUnavailable:
            if not all(image_id in self._recipes for image_id in ids):
                raise
        except LineServerError as error:
            if error.status != 404 or not all(image_id in self._recipes for image_id in ids):
                raise
        return await self._rerender_and_measure(owner, ids, measure)

    async def _rerender_and_measure(
        self,
        lost_on: PoolMember,
        ids: list[str],
        measure: ClientCall[ActivationsResponse],
    ) -> ActivationsResponse:
        """The images' server is gone: render them again elsewhere (same ids) and measure."""
        by_options: dict[RenderOptions, list[str]] = {}
        for image_id in ids:
            by_options.setdefault(self._recipes[image_id].options, []).append(image_id)
        while True:
            await self._gate_open()
            member = self._least_outstanding(exclude=[lost_on]) or lost_on
            try:
                for options, group in by_options.items():
                    recipes = [self._recipes[image_id] for image_id in group]
                    images = await self._on(
                        member,
                        _render(
                            [recipe.prompt for recipe in recipes],
                            [recipe.seed for recipe in recipes],
                            options,
                        ),
                    )
                    if [image.id for image in images] != group:
                        raise LineServerError(
                            409,
                            f"{member.url} renders different images for the same requests than "
                            f"{lost_on.url}: the servers of a pool must serve the same generator",
                            "POST /v1/images",
                        )
                    for image in images:
                        self._owner[image.id] = member
                self._rerendered += len(ids)
                log.warning(
                    "rendered %d images of %s again on %s", len(ids), lost_on.url, member.url
                )
                return await self._on(member, measure)
            except LineServerUnavailable as error:
                await self._wait_for_a_server(error)

    async def edit_images(
        self,
        image_ids: Sequence[str],
        instruction: str,
        seeds: Sequence[int],
        editor: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> list[EditEntry]:
        """Edit each image on the server that holds it (any server for images this pool did not
        render: a shared store or uploads); the edits live there too. Results in request order."""

        async def edit_group(
            owner: PoolMember | None, ids: Sequence[str], group_seeds: Sequence[int]
        ) -> list[EditEntry]:
            def edit(client: LineClient) -> Awaitable[list[EditEntry]]:
                return client.edit_images(
                    ids, instruction, group_seeds, editor=editor, steps=steps, guidance=guidance
                )

            if owner is None:
                member, edited = await self._with_failover(edit)
            else:
                member, edited = owner, await self._on(owner, edit)
            for entry in edited:
                self._owner[entry.id] = member
            return edited

        if len(image_ids) != len(seeds):  # the server words the refusal
            return await edit_group(None, image_ids, seeds)
        groups: dict[int, list[int]] = {}
        members: dict[int, PoolMember | None] = {}
        for index, image_id in enumerate(image_ids):
            owner = self._owner.get(image_id)
            groups.setdefault(id(owner), []).append(index)
            members[id(owner)] = owner
        answers = await asyncio.gather(
            *(
                edit_group(members[key], [image_ids[i] for i in group], [seeds[i] for i in group])
                for key, group in groups.items()
            )
        )
        entries: dict[int, EditEntry] = {}
        for indices, answer in zip(groups.values(), answers, strict=True):
            entries.update(zip(indices, answer, strict=True))
        return [entries[index] for index in range(len(image_ids))]

    async def upload_images(self, files: Sequence[bytes], names: Sequence[str] = ()) -> list[str]:
        """Store the files on every server that answers (same ids everywhere)."""
        now = time.monotonic()
        live = [member for member in self.members if member.is_up(now)] or self.members
        answers = await asyncio.gather(
            *(
                self._on(member, lambda client: client.upload_images(files, names))
                for member in live
            ),
            return_exceptions=True,
        )
        ids = None
        for member, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, LineServerUnavailable):
                    raise answer
                continue
            if ids is not None and answer != ids:
                raise LineServerError(
                    409, f"{member.url} stores uploads under other ids", "POST /v1/images/upload"
                )
            ids = answer
        if ids is None:
            raise next(a for a in answers if isinstance(a, BaseException))
        return ids

    async def image_png(self, image_id: str) -> bytes:
        """The PNG of an image, from the server that holds it."""
        owner = self._owner.get(image_id)
        if owner is not None:
            return await self._on(owner, lambda client: client.image_png(image_id))
        return (await self._with_failover(lambda client: client.image_png(image_id)))[1]

    async def metrics_text(self) -> str:
        """Every server's metrics page, each under a ``# server URL`` line."""
        pages = await asyncio.gather(*(m.client.metrics_text() for m in self.members))
        return "\n".join(
            f"# server {m.url}\n{page}" for m, page in zip(self.members, pages, strict=True)
        )

    def stats(self) -> PoolStats:
        """Requests, rendered images and failures per server."""
        return PoolStats(
            requests={m.url: m.requests for m in self.members},
            images_rendered={m.url: m.images_rendered for m in self.members},
            failures={m.url: m.failures for m in self.members},
            rerendered=self._rerendered,
        )


def _render(
    prompts: Sequence[str], seeds: Sequence[int], options: RenderOptions
) -> ClientCall[list[ImageEntry]]:
    """A render request for whichever server the pool picks."""

    def render(client: LineClient) -> Awaitable[list[ImageEntry]]:
        return client.generate_images(prompts, seeds, options)

    return render


def connect(urls: str | Sequence[str], token: str | None = None, **options: Any) -> InferenceClient:
    """A ``LineClient`` for one server URL, a ``ServerPool`` for several."""
    if isinstance(urls, str):
        urls = [urls]
    urls = list(dict.fromkeys(urls))
    if len(urls) == 1:
        return LineClient(urls[0], token=token, **options)
    return ServerPool(urls, token=token, **options)
