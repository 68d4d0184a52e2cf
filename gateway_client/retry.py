"""Retry classification and backoff. Pure: no I/O, no clock reads, no global randomness.

Policy (DESIGN.md principle 8, modelled on httpcore's connect retries):

* retryable: connection failures (refused, connect timeout, a connection lost before any
  chunk reached the caller) and HTTP 408, 429 and 5xx -- including the same statuses carried
  by an in-stream error object that arrived before the first chunk;
* everything else (4xx, local validation, first-token / idle / total timeouts) is final;
* retries only happen *before the first chunk reached the caller*; the adapter enforces that
  by construction (it never calls :func:`should_retry` after yielding a chunk);
* the wait is capped exponential backoff with full jitter
  (``uniform(0, min(cap, base * 2**attempt))``) unless the server gave a hint:
  ``Retry-After`` (delta-seconds or an HTTP date) or ``X-RateLimit-Reset`` (small values are
  seconds from now, large values an epoch timestamp in seconds or milliseconds);
  every wait is capped at ``max_wait``.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway_client.errors import (
    ConnectError,
    ConnectionLost,
    GatewayError,
    HTTPStatusError,
    StreamError,
)

__all__ = [
    "RetryPolicy",
    "backoff_delay",
    "is_retryable_error",
    "is_retryable_status",
    "parse_rate_reset",
    "parse_retry_after",
    "retry_delay",
    "server_wait_hint",
    "should_retry",
]

# X-RateLimit-Reset values above this are absolute epoch times, not a countdown
# (1e9 s is 2001-09-09; no window is 31 years long).
_EPOCH_THRESHOLD = 1_000_000_000.0
_EPOCH_MS_THRESHOLD = 1_000_000_000_000.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how long to wait. ``max_retries`` counts retries, not attempts."""

    max_retries: int = 2
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_wait < 0:
            raise ValueError("retry delays must be >= 0")


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx are transient; every other status is the caller's problem."""
    return status in (408, 429) or 500 <= status <= 599


def is_retryable_error(error: GatewayError) -> bool:
    """Classify a failure that happened before the first chunk reached the caller."""
    if isinstance(error, ConnectError | ConnectionLost):
        return True
    if isinstance(error, StreamError):
        return error.status is not None and is_retryable_status(error.status)
    if isinstance(error, HTTPStatusError) and error.status is not None:
        return is_retryable_status(error.status)
    return False


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None.

    ``now`` is the current wall-clock epoch time, used only for the date form.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def parse_rate_reset(value: str | None, now: float) -> float | None:
    """Seconds to wait from an ``X-RateLimit-Reset`` value, or None.

    The gateway does not document the unit, so: values below 1e9 are seconds from now,
    larger ones an epoch timestamp (seconds, or milliseconds above 1e12).
    """
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if math.isnan(number) or math.isinf(number):
        return None
    if number >= _EPOCH_MS_THRESHOLD:
        number = number / 1000.0 - now
    elif number >= _EPOCH_THRESHOLD:
        number = number - now
    return max(0.0, number)


def server_wait_hint(headers: Mapping[str, str] | None, now: float) -> float | None:
    """The wait the server asked for: ``Retry-After`` first, else ``X-RateLimit-Reset``.

    ``headers`` must be case-insensitive (aiohttp's CIMultiDictProxy is) or use the
    canonical spellings.
    """
    if not headers:
        return None
    hint = parse_retry_after(headers.get("Retry-After"), now)
    if hint is None:
        hint = parse_rate_reset(headers.get("X-RateLimit-Reset"), now)
    return hint


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Full-jitter backoff for retry number ``attempt`` (0 = first retry); ``rand()`` in [0, 1)."""
    ceiling = min(policy.max_delay, policy.base_delay * (2.0 ** min(attempt, 62)))
    return min(policy.max_wait, rand() * ceiling)


def retry_delay(
    attempt: int,
    policy: RetryPolicy,
    rand: Callable[[], float],
    hint: float | None = None,
) -> float:
    """The wait before retry ``attempt``: the server's hint if given, else jittered backoff.

    Capped at ``policy.max_wait`` either way.
    """
    if hint is not None:
        return min(policy.max_wait, max(0.0, hint))
    return backoff_delay(attempt, policy, rand)


def should_retry(error: GatewayError, attempt: int, policy: RetryPolicy) -> bool:
    """True when retry number ``attempt`` (0-based) is allowed for ``error``."""
    return attempt < policy.max_retries and is_retryable_error(error)
