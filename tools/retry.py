"""Retrying transient faults, shared by the LLM client and the inference-server client.

Both retry with tenacity: a wait that honours the server's ``Retry-After`` (or
``retry-after-ms``) and otherwise backs off exponentially with jitter. :class:`FaultKind` names
the transient faults once; the LLM client counts them per kind, and the counts travel through the
graph's counters to their own ``results.csv`` columns. :func:`classify_fault` tells which kind an
exception is from its type (builtin and httpx errors) or its HTTP status; :class:`RetryPolicy`
turns a classifier into a tenacity :class:`~tenacity.AsyncRetrying`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from tools.availability import EndpointUnreachable


class FaultKind(StrEnum):
    """A transient fault worth retrying; the value is its counter and ``results.csv`` column."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERRORS = "server_errors"
    TIMEOUTS = "timeouts"
    CONNECTION_ERRORS = "connection_errors"


# network failures worth another try (not: a malformed URL, a request we built wrong)
TRANSIENT_HTTPX_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


def status_code_of(error: BaseException) -> int | None:
    """The HTTP status an exception carries (``status_code``, or its ``response``'s), if any."""
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def fault_of_status(status: int) -> FaultKind | None:
    """The transient fault an HTTP status means (429, 408, 5xx), or None."""
    if status == 429:
        return FaultKind.RATE_LIMITED
    if status == 408:
        return FaultKind.TIMEOUTS
    if status >= 500:
        return FaultKind.SERVER_ERRORS
    return None


def classify_fault(error: BaseException) -> FaultKind | None:
    """The transient fault an exception is, or None when retrying cannot help.

    An HTTP status decides when the exception (any SDK's) carries one; else builtin and httpx
    timeouts and connection errors count; else the exception it was raised from decides (SDKs
    wrap the httpx error they met).
    """
    if isinstance(error, EndpointUnreachable):  # an outage waited out already: stop
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = status_code_of(current)
        if status is not None:
            return fault_of_status(status)
        if isinstance(current, (TimeoutError, httpx.TimeoutException)):
            return FaultKind.TIMEOUTS
        if isinstance(current, (ConnectionError, *TRANSIENT_HTTPX_ERRORS)):
            return FaultKind.CONNECTION_ERRORS
        current = current.__cause__
    return None


def retry_after_s(error: BaseException | None) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``Retry-After``), if it said."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return float(milliseconds) / 1000
        value = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _failed_with(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


class wait_retry_after(wait_base):
    """Wait what the failed attempt's ``Retry-After`` says (plus up to 10% jitter), else what
    ``fallback`` says."""

    def __init__(self, fallback: wait_base, rng: random.Random | None = None) -> None:
        self.fallback = fallback
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        hint = retry_after_s(_failed_with(retry_state))
        if hint is not None:
            return max(0.0, hint) * (1 + 0.1 * self.rng.random())
        return self.fallback(retry_state)


class wait_unless(wait_base):
    """No wait after a failure ``skip`` accepts, else what ``wait`` says."""

    def __init__(self, wait: wait_base, skip: Callable[[BaseException], bool]) -> None:
        self.wait = wait
        self.skip = skip

    def __call__(self, retry_state: RetryCallState) -> float:
        error = _failed_with(retry_state)
        if error is not None and self.skip(error):
            return 0.0
        return self.wait(retry_state)


class stop_when_retry_after_exceeds(stop_base):
    """Stop when the server asks to wait longer than ``limit_s`` (a quota, not a hiccup)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        hint = retry_after_s(_failed_with(retry_state))
        return hint is not None and hint > self.limit_s


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter; ``Retry-After`` wins when the server sends it."""

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    """A server asking to wait longer than this is treated as out of quota: give up at once."""

    def out_of_quota(self, error: BaseException) -> float | None:
        """The wait the server asked for when it is over ``max_retry_after_s``, else None."""
        hint = retry_after_s(error)
        return hint if hint is not None and hint > self.max_retry_after_s else None

    def wait(self) -> wait_base:
        """``Retry-After`` when sent, else "equal jitter": after failed attempt n, between half
        and all of ``min(max_delay_s, base_delay_s * 2 ** (n - 1))``."""
        half = {"multiplier": self.base_delay_s / 2, "max": self.max_delay_s / 2}
        return wait_retry_after(wait_exponential(**half) + wait_random_exponential(**half))

    def stop(self) -> stop_base:
        """Out of attempts, or out of quota."""
        return stop_after_attempt(self.max_attempts) | stop_when_retry_after_exceeds(
            self.max_retry_after_s
        )

    def retrying(
        self,
        classify: Callable[[BaseException], FaultKind | None] = classify_fault,
        *,
        on_fault: Callable[[FaultKind], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        waited_elsewhere: Callable[[BaseException], bool] | None = None,
    ) -> AsyncRetrying:
        """A tenacity retrier for one call: retries the faults ``classify`` names, calls
        ``on_fault`` with each one, and re-raises the last error when it gives up. A fault
        ``waited_elsewhere`` accepts is retried without backoff (an availability gate waits
        for the endpoint before the next attempt)."""

        def count(retry_state: RetryCallState) -> None:
            error = _failed_with(retry_state)
            kind = classify(error) if error is not None else None
            if on_fault is not None and kind is not None:
                on_fault(kind)

        wait = self.wait()
        if waited_elsewhere is not None:
            wait = wait_unless(wait, waited_elsewhere)
        return AsyncRetrying(
            stop=self.stop(),
            wait=wait,
            retry=retry_if_exception(lambda error: classify(error) is not None),
            after=count,
            sleep=sleep,
            reraise=True,
        )
