"""Fault injection, error answers, request records and the rate limiter of the emulator. Pure.

Nothing here touches a socket or the event loop; the clock is passed in, so every rule can be
tested with plain calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

FaultKind = Literal[
    "status",
    "rate_limit",
    "slow_first_token",
    "hang",
    "hang_before_headers",
    "drop",
    "malformed",
    "error_chunk",
    "gap",
]
FAULT_KINDS: frozenset[str] = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]
WINDOW_S = 60.0  # the gateway's rate-limit window
DEFAULT_LIMIT = 30  # documented paid-plan limit, used by rate_limit faults when none is set


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour (see docs/gateway_emulator.md for each kind).

    ``model=None`` applies to any request and is the gateway's own answer. A ``status`` fault
    with a ``model`` is that model's (the provider's) failure: the gateway's server-side retry
    (5xx) and ``fallbacks`` then apply, as they would for a real provider outage.
    """

    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    rate_reset: float | None = None
    delay: float = 0.0
    after_chunks: int = 0
    model: str | None = None
    times: int = 1
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.times < 1:
            raise ValueError("times must be at least 1")

    @property
    def provider_failure(self) -> bool:
        """True when the gateway treats this fault as the model failing (retry, fallbacks)."""
        return self.kind == "status" and self.model is not None


_NUMERIC = {
    "status": int,
    "retry_after": float,
    "rate_reset": float,
    "delay": float,
    "after_chunks": int,
    "times": int,
}


def parse_fault_header(value: str) -> Fault:
    """Parse ``X-Emulator-Fault: kind;key=value;...``; raises ValueError on nonsense."""
    kind, *pairs = [p.strip() for p in value.split(";") if p.strip()] or [""]
    kwargs: dict[str, Any] = {}
    allowed = {f.name for f in fields(Fault)} - {"kind"}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(f"bad X-Emulator-Fault parameter {pair!r}")
        kwargs[key] = _NUMERIC[key](raw) if key in _NUMERIC else raw.strip()
    return Fault(kind, **kwargs)  # type: ignore[arg-type]


class FaultQueue:
    """FIFO over a caller-owned ``list[Fault]``; each fault is used ``times`` times, then removed.

    The list stays public (tests append to it); uses are counted beside it by identity.
    """

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults
        self._used: dict[int, int] = {}

    def take(self, model: str, *, any_model: bool) -> Fault | None:
        """Consume the first fault for ``model``; ``any_model`` also admits ``model=None``."""
        for i, fault in enumerate(self.faults):
            if fault.model == model or (any_model and fault.model is None):
                used = self._used.get(id(fault), 0) + 1
                if used >= fault.times:
                    del self.faults[i]
                    self._used.pop(id(fault), None)
                else:
                    self._used[id(fault)] = used
                return fault
        return None


@dataclass(slots=True)
class RecordedRequest:
    """One ``POST /v1/chat/completions`` as the emulator saw it. Headers are never stored."""

    request_id: str
    body: dict[str, Any]
    model: str
    arrived_at: float
    status: int = 0
    stream: bool = False
    chunks_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    disconnected_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    answered_by: str | None = None  # the model that produced the answer (after fallbacks)
    fault: str | None = None  # kind of the fault applied, if any


@dataclass(slots=True)
class RateDecision:
    allowed: bool
    headers: dict[str, str]


class RateLimiter:
    """Fixed 60-second windows of ``limit`` requests per model; ``limit=None`` is off."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[float, int]] = {}

    def check(self, model: str, now: float) -> RateDecision:
        """Count one request for ``model`` at ``now`` (seconds) unless it is over the limit.

        ``X-RateLimit-Reset`` is the whole seconds until the window resets (the docs leave
        the unit open; seconds is what clients can sleep on directly).
        """
        if self.limit is None:
            return RateDecision(True, {})
        start, count = self._windows.get(model, (now, 0))
        if now - start >= WINDOW_S:
            start, count = now, 0
        allowed = count < self.limit
        if allowed:
            count += 1
        self._windows[model] = (start, count)
        reset = max(1, math.ceil(start + WINDOW_S - now))
        headers = rate_headers(self.limit, self.limit - count, reset)
        if not allowed:
            headers["Retry-After"] = str(reset)
        return RateDecision(allowed, headers)


def rate_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, remaining)),
        "X-RateLimit-Reset": _seconds(reset),
    }


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(slots=True)
class Failure:
    """A gateway answer that is an error: status, JSON body, extra headers."""

    status: int
    message: str
    errors: list[str]
    headers: dict[str, str]


def error_body(status: int, message: str, errors: list[str], request_id: str) -> dict[str, Any]:
    """The flattened (Jun-2026) business-error body, which the assemblyai SDK 1.8.2 parses."""
    return {
        "code": status,
        "message": message,
        "request_id": request_id,
        "metadata": {"errors": errors},
    }


def invalid_request(errors: list[str], unknown: str | None, headers: dict[str, str]) -> Failure:
    """A 400: an unknown model alone is named in the message, field errors are summed up."""
    if unknown and not errors:
        return Failure(400, unknown, [unknown], headers)
    return Failure(400, "invalid request body", errors + ([unknown] if unknown else []), headers)


def fault_failure(fault: Fault, headers: Mapping[str, str], model: str) -> Failure:
    """The error answer a ``status`` or ``rate_limit`` fault produces."""
    out = dict(headers)
    if fault.kind == "rate_limit":
        reset = fault.rate_reset if fault.rate_reset is not None else fault.retry_after or 1
        limit = int(out.get("X-RateLimit-Limit", DEFAULT_LIMIT))
        out |= rate_headers(limit, 0, reset)
        status, message = 429, fault.message or f"rate limit exceeded for model {model}"
    else:
        status = fault.status
        message = fault.message or f"upstream error from model {model}"
        if fault.rate_reset is not None:
            out["X-RateLimit-Reset"] = _seconds(fault.rate_reset)
    if fault.retry_after is not None:
        out["Retry-After"] = _seconds(fault.retry_after)
    return Failure(status, message, [], out)
