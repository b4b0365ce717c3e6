"""Retrying transient faults, shared by the LLM client and the inference-server client.

Both retry with tenacity: a wait that honours the server's ``Retry-After`` (or
``retry-after-ms``) and otherwise backs off exponentially with jitter. :class:`FaultKind` names
the transient faults once; the LLM client counts them per kind, and the counts travel through the
graph's counters to their own ``results.csv`` columns.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime
from enum import StrEnum

from tenacity import RetryCallState
from tenacity.wait import wait_base


class FaultKind(StrEnum):
    """A transient fault worth retrying; the value is its counter and ``results.csv`` column."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERRORS = "server_errors"
    TIMEOUTS = "timeouts"
    CONNECTION_ERRORS = "connection_errors"


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


class wait_retry_after(wait_base):
    """Wait what the failed attempt's ``Retry-After`` says (plus up to 10% jitter), else what
    ``fallback`` says."""

    def __init__(self, fallback: wait_base, rng: random.Random | None = None) -> None:
        self.fallback = fallback
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        hint = retry_after_s(error)
        if hint is not None:
            return max(0.0, hint) * (1 + 0.1 * self.rng.random())
        return self.fallback(retry_state)
