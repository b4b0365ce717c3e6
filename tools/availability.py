"""One outage, one wait: when an endpoint stops answering, every request waits for it together.

An :class:`AvailabilityGate` stands for one endpoint of a process (an inference server, a pool
of them, an LLM endpoint). The first request that cannot reach it reports the failure; from then
on every request awaits the same event instead of retrying on its own, and one prober asks the
endpoint whether it answers (``/healthz``, the LLM's model list) with backoff. The first probe
goes out at once: when it answers, the failure was a blip and no outage is recorded. Otherwise
the endpoint is down (an :class:`Outage`, timed from the first failure) until a probe answers,
and then everyone continues; after ``patience_s`` every waiting request raises
:class:`EndpointUnreachable`, which stops a run (its folder resumes with ``line run --resume``).

A neuron's task may set :data:`NEURON_WAITS` to an :class:`OutageWaits`: the gates add each
outage the task waited for, and how long, so a run can count them per neuron.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

log = logging.getLogger("line.availability")

DEFAULT_PATIENCE_S = 300.0
"""How long a run waits for an endpoint that stopped answering (``line run --outage-patience``)."""
FIRST_PROBE_DELAY_S = 0.1
"""The wait before the second probe; it doubles after each probe that finds the endpoint down..."""
MAX_PROBE_DELAY_S = 1.0
"""...up to this, so an outage costs at most this much more than it lasts."""

Probe = Callable[[], Awaitable[bool]]
"""Asks the endpoint once: True when it answers (it never raises)."""


def describe_error(error: BaseException) -> str:
    """``Type: message`` (just the type when the message is empty), at most 300 characters."""
    text = str(error).strip()
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:300]


def clock_time(moment: datetime) -> str:
    """``HH:MM:SS`` of a moment in local time."""
    return moment.astimezone().strftime("%H:%M:%S")


@dataclass
class Outage:
    """One time an endpoint stopped answering: since when, for how long, how it ended."""

    endpoint: str
    started: datetime
    """When the first request failed (UTC)."""
    seconds: float = 0.0
    """How long it lasted (so far, while ``outcome`` is ``ongoing``)."""
    probes: int = 0
    """Probes sent while it was down (the one that found it back included)."""
    outcome: str = "ongoing"
    """``recovered``, ``gave up`` (the patience ran out) or ``ongoing``."""
    error: str = ""
    """The failure that started it."""
    check: int = field(default=0, repr=False)
    """The gate's check this outage belongs to (waits of that check count for it)."""


class EndpointUnreachable(ConnectionError):
    """An endpoint stayed unreachable for the whole patience: the run stops (and resumes).

    Not a transient fault: nothing retries it (``tools.retry.classify_fault``)."""

    outage: Outage
    patience_s: float

    @classmethod
    def of(cls, outage: Outage, patience_s: float, message: str = "") -> Self:
        """The error for an outage the gate gave up on (``message``: the default wording)."""
        error = cls(message or unreachable_message(outage, patience_s))
        error.outage, error.patience_s = outage, patience_s
        return error

    @property
    def endpoint(self) -> str:
        """Which endpoint (``inference server http://...``, ``LLM endpoint http://...``)."""
        return self.outage.endpoint


def unreachable_message(outage: Outage, patience_s: float) -> str:
    """Which endpoint, since when, how long it was waited for, and the failure."""
    waited = f"{outage.seconds:.0f} s, the outage patience; " if patience_s > 0 else ""
    return (
        f"the {outage.endpoint} has not answered since {clock_time(outage.started)} "
        f"({waited}{outage.error})"
    )


@dataclass
class OutageWaits:
    """The outages one task (a neuron) waited for, and the seconds it waited for each."""

    waited_s: dict[tuple[int, int], float] = field(default_factory=dict)

    def add(self, key: tuple[int, int], seconds: float) -> None:
        """A wait for outage ``key``; concurrent waits for the same outage count once."""
        self.waited_s[key] = max(seconds, self.waited_s.get(key, 0.0))

    @property
    def count(self) -> int:
        """Outages waited for."""
        return len(self.waited_s)

    @property
    def seconds(self) -> float:
        """Seconds waited in all."""
        return sum(self.waited_s.values())


NEURON_WAITS: ContextVar[OutageWaits | None] = ContextVar("line_neuron_waits", default=None)
"""The waits of the task running now (set by the runner in each neuron's task)."""


class AvailabilityGate:
    """Whether one endpoint answers, shared by all requests to it; see the module doc.

    Use: ``await gate.wait_until_up()`` before a request, ``gate.report(error)`` when it could
    not reach the endpoint (then wait again and resend). Waiting raises
    :class:`EndpointUnreachable` once the endpoint has been down for ``patience_s``; the gate
    is then ready to be tried afresh (a later request starts a new check).
    """

    def __init__(
        self,
        endpoint: str,
        probe: Probe,
        *,
        patience_s: float = DEFAULT_PATIENCE_S,
        first_delay_s: float = FIRST_PROBE_DELAY_S,
        max_delay_s: float = MAX_PROBE_DELAY_S,
    ) -> None:
        self.endpoint = endpoint
        self.probe = probe
        self.patience_s = patience_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.outages: list[Outage] = []
        self.waiting = 0
        """Requests waiting for the endpoint now."""
        self._up = asyncio.Event()
        self._up.set()
        self._check = 0  # counts checks (a failure reported while up starts one)
        self._up_since = -math.inf
        """When the last check ended (monotonic): a request sent before it failed because of
        that check's outage, which is over, so its failure starts no new check."""
        self._down: Outage | None = None
        self._gave_up: EndpointUnreachable | None = None
        self._gave_up_check = -1
        self._prober: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[AvailabilityGate], None]] = []

    # ----- state -----------------------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        """Whether requests go through now (no check or outage under way)."""
        return self._up.is_set()

    @property
    def down(self) -> Outage | None:
        """The outage under way, if any."""
        return self._down

    def describe(self) -> str:
        """``waiting for <endpoint> (down since HH:MM:SS)`` while down, else ``""``."""
        if self._down is None:
            return ""
        return f"waiting for {self.endpoint} (down since {clock_time(self._down.started)})"

    def watch(self, listener: Callable[[AvailabilityGate], None]) -> None:
        """Call ``listener(gate)`` whenever an outage starts or ends."""
        self._listeners.append(listener)

    def unwatch(self, listener: Callable[[AvailabilityGate], None]) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a progress bar must not break the requests
                log.exception("outage listener failed")

    # ----- requests ----------------------------------------------------------------------------
    async def wait_until_up(self) -> None:
        """Return at once while the endpoint answers; during a check or an outage, wait for it
        with every other request. Raises :class:`EndpointUnreachable` when the patience ran
        out during the wait."""
        if self._up.is_set():
            return
        check, started = self._check, time.monotonic()
        self.waiting += 1
        try:
            await self._up.wait()
        finally:  # a wait counts however it ended (back, given up, the task cancelled)
            self.waiting -= 1
            outage = self.outages[-1] if self.outages else None
            waits = NEURON_WAITS.get()
            if waits is not None and outage is not None and outage.check == check:
                waits.add((id(self), check), time.monotonic() - started)
        if self._gave_up is not None and self._gave_up_check == check:
            raise self._gave_up

    def report(self, error: BaseException, sent_at: float | None = None) -> None:
        """A request could not reach the endpoint: check it (one prober for all requests).

        ``sent_at`` (``time.monotonic()`` when the request was sent): a request sent before the
        last check ended belongs to that outage (its connection broke while the endpoint was
        away and the failure came late), so it is simply sent again; one outage is one wait."""
        if not self._up.is_set():  # a check is under way already
            return
        if sent_at is not None and sent_at < self._up_since:
            return
        self._check += 1
        self._up.clear()
        self._prober = asyncio.get_running_loop().create_task(
            self._watch(self._check, time.monotonic(), error),
            name=f"probe {self.endpoint}",
        )

    async def _watch(self, check: int, since: float, error: BaseException) -> None:
        """Probe until the endpoint answers or the patience runs out."""
        delay = self.first_delay_s
        outage: Outage | None = None
        try:
            while True:
                answered = await self.probe()
                if outage is not None:
                    outage.probes += 1
                    outage.seconds = time.monotonic() - since
                if answered:
                    if outage is not None:
                        outage.outcome = "recovered"
                        log.warning("%s answers again after %.0f s", self.endpoint, outage.seconds)
                    return
                if outage is None:
                    outage = self._start_outage(check, since, error)
                    outage.probes = 1
                remaining = since + self.patience_s - time.monotonic()
                if remaining <= 0:
                    outage.outcome = "gave up"
                    self._gave_up = EndpointUnreachable.of(outage, self.patience_s)
                    self._gave_up_check = check
                    return
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, self.max_delay_s)
        finally:
            self._down = None
            self._prober = None
            self._up_since = time.monotonic()
            self._up.set()
            if outage is not None:
                self._changed()

    def _start_outage(self, check: int, since: float, error: BaseException) -> Outage:
        seconds = time.monotonic() - since
        started = datetime.fromtimestamp(time.time() - seconds, UTC)
        outage = Outage(
            self.endpoint,
            started,
            seconds,
            error=describe_error(error),
            check=check,
        )
        self.outages.append(outage)
        self._down = outage
        if self.patience_s > 0:
            log.warning(
                "%s is not answering (%s); every request waits for it, up to %.0f s",
                self.endpoint,
                outage.error,
                self.patience_s,
            )
        self._changed()
        return outage

    async def close(self) -> None:
        """Stop probing (the outage under way stays ``ongoing``)."""
        prober = self._prober
        if prober is not None and not prober.done():
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
