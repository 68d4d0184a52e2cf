"""The reply lifecycle: one table of states, walked in one place. Pure.

A reply is the service's side of one response. A speculation starts HIDDEN (its upstream
request runs, clients know nothing of it); the end of turn either promotes it to VISIBLE or
discards it. A visible reply ends in exactly one of DONE, CANCELLED, FAILED; a hidden one whose
upstream stream ended before promotion waits in HIDDEN_ENDED with its outcome kept. Every
change goes through `Reply.move`, which raises `IllegalTransition` on a pair that is not in
`TRANSITIONS`. Terminal states absorb every late event (a stream task may report after its
reply was cancelled): nothing of a reply can follow its terminal message. Model: h11's
`_state.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "RE",
    "RS",
    "TERMINAL",
    "TRANSITIONS",
    "Completion",
    "Failure",
    "IllegalTransition",
    "Reply",
]


class RS(StrEnum):
    HIDDEN = "hidden"  # a speculation: streaming upstream, deltas held back
    HIDDEN_ENDED = "hidden_ended"  # a speculation whose stream ended; outcome kept
    VISIBLE = "visible"  # response.created was sent (queued or streaming)
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DISCARDED = "discarded"  # a speculation dropped without a word to clients


class RE(StrEnum):
    PROMOTE = "promote"  # the end of turn confirmed the speculation
    DELTA = "delta"  # text arrived from upstream
    FINISH = "finish"  # the upstream stream completed
    FAIL = "fail"  # the upstream stream failed
    CANCEL = "cancel"  # the policy, the client or the session ends it
    DISCARD = "discard"  # the policy drops the speculation


TERMINAL = frozenset({RS.DONE, RS.CANCELLED, RS.FAILED, RS.DISCARDED})

TRANSITIONS: dict[tuple[RS, RE], RS] = {
    (RS.HIDDEN, RE.DELTA): RS.HIDDEN,
    (RS.HIDDEN, RE.FINISH): RS.HIDDEN_ENDED,
    (RS.HIDDEN, RE.FAIL): RS.HIDDEN_ENDED,
    (RS.HIDDEN, RE.PROMOTE): RS.VISIBLE,
    (RS.HIDDEN, RE.CANCEL): RS.DISCARDED,
    (RS.HIDDEN, RE.DISCARD): RS.DISCARDED,
    (RS.HIDDEN_ENDED, RE.PROMOTE): RS.VISIBLE,
    (RS.HIDDEN_ENDED, RE.CANCEL): RS.DISCARDED,
    (RS.HIDDEN_ENDED, RE.DISCARD): RS.DISCARDED,
    (RS.VISIBLE, RE.DELTA): RS.VISIBLE,
    (RS.VISIBLE, RE.FINISH): RS.DONE,
    (RS.VISIBLE, RE.FAIL): RS.FAILED,
    (RS.VISIBLE, RE.CANCEL): RS.CANCELLED,
}


class IllegalTransition(RuntimeError):
    """A (state, event) pair outside `TRANSITIONS` on a live reply: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Completion:
    """What a finished upstream stream reports, as plain data."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    model: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed upstream stream, already classified: `code` is the wire code."""

    code: str  # gateway_error | gateway_timeout | internal_error
    message: str
    status: int | None = None


@dataclass(slots=True, eq=False)
class Reply:
    """One reply's record: its state, what was delivered, its request and its instants."""

    id: str
    turn_order: int
    text_in: str  # the user turn text it answers
    model: str
    fired_at: float
    state: RS
    body: dict[str, Any] = field(default_factory=dict)  # the request, built when it fired
    streaming: bool = False  # its upstream stream was started
    delivered: list[str] = field(default_factory=list)  # deltas published to clients
    held: list[str] = field(default_factory=list)  # a hidden speculation's deltas
    held_tools: list[dict[str, Any]] = field(default_factory=list)  # and its tool-call deltas
    outcome: Completion | Failure | None = None  # kept while HIDDEN_ENDED
    sent_at: float | None = None
    first_delta_at: float | None = None
    promoted_at: float | None = None
    request_id: str | None = None
    prompt_chars: int = 0
    # A summary step (its prompt renders {{summary}}): the newest turn its request folds in,
    # and the summary version it refines (a stale step's text does not become the summary).
    summary_upto: int | None = None
    summary_base: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def visible(self) -> bool:
        return self.state is RS.VISIBLE or self.state in (RS.DONE, RS.CANCELLED, RS.FAILED)

    def move(self, event: RE) -> bool:
        """Apply `event`. False when the reply is already terminal (the event is absorbed)."""
        if self.state in TERMINAL:
            return False
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(
                f"reply {self.id} cannot {event.value} while {self.state.value}"
            ) from None
        return True

    def delivered_text(self) -> str:
        return "".join(self.delivered)

    def timings(self, end: float) -> dict[str, float]:
        """The `timings` of response.done, in milliseconds."""
        promoted = self.promoted_at is not None
        origin = self.promoted_at if self.promoted_at is not None else self.fired_at
        head_start = (origin - self.fired_at) * 1000 if promoted else 0.0
        sent = self.sent_at if self.sent_at is not None else end
        first = self.first_delta_at if self.first_delta_at is not None else end
        return {
            "queued_ms": round((sent - self.fired_at) * 1000, 3),
            "ttft_ms": round((first - origin) * 1000, 3),
            "total_ms": round((end - origin) * 1000, 3),
            "speculative_head_start_ms": round(head_start, 3),
        }
