"""One response's record on the service side, and the helpers that shape its messages.

`Response` holds what the session needs to keep exactly one terminal message per response:
its task, what was delivered (deltas published to clients), what a hidden speculation holds
back, and the instants that make up its `timings`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

now = time.perf_counter


@dataclass(slots=True, eq=False)
class Response:
    """The service's side of one response: its task, what was delivered, its one terminal."""

    id: str
    turn_order: int
    text_in: str  # the user turn text it answers
    model: str
    speculative: bool
    fired_at: float  # perf_counter when the firing event was read
    visible: bool = False
    task: asyncio.Task[None] | None = None
    start: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: list[str] = field(default_factory=list)  # deltas published to clients
    held: list[str] = field(default_factory=list)  # deltas of a hidden speculation
    finished: bool = False  # a terminal message was published (or it was discarded)
    outcome: tuple[str, Any] | None = None  # a hidden speculation's result, kept for promotion
    sent_at: float | None = None
    first_delta_at: float | None = None
    promoted_at: float | None = None
    request_id: str | None = None
    prompt_chars: int = 0

    def timings(self) -> dict[str, float]:
        """The `timings` of response.done, in milliseconds."""
        end = now()
        origin = self.promoted_at or self.fired_at
        head_start = (self.promoted_at - self.fired_at) * 1000 if self.promoted_at else 0.0
        return {
            "queued_ms": round(((self.sent_at or end) - self.fired_at) * 1000, 3),
            "ttft_ms": round(((self.first_delta_at or end) - origin) * 1000, 3),
            "total_ms": round((end - origin) * 1000, 3),
            "speculative_head_start_ms": round(head_start, 3),
        }


def tool_delta(tc: dict[str, Any]) -> dict[str, Any]:
    fn = tc.get("function") or {}
    return {
        "index": tc.get("index", 0),
        "id": tc.get("id") or fn.get("id"),
        "name": fn.get("name"),
        "arguments": fn.get("arguments"),
    }


def plain(value: Any) -> Any:
    """Turn a model object (pydantic or slotted) into JSON-able data."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    dump: Callable[..., Any] | None = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(exclude_none=True)
    raw = getattr(value, "raw", None)
    if isinstance(raw, dict):
        return raw
    return str(value)
