"""Service -> client messages (PROTOCOL.md "Responses", "Errors"), typed until the edge. Pure.

A message is an `Outbound`: its `type` and its fields, or, for a speech-to-text message
relayed from upstream, the upstream's bytes unchanged. Connections decide by `type` what they
take (the AssemblyAI-compatible endpoint hides the service's own types from clients that did
not ask for them); `encode` serialises a message once, however many connections take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "SERVICE_TYPES",
    "Outbound",
    "error",
    "relayed",
    "response_cancelled",
    "response_created",
    "response_delta",
    "response_done",
    "response_failed",
    "response_queued",
    "response_truncated",
    "session_created",
    "session_resumed",
    "session_updated",
    "tool_call_delta",
]


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message for clients: `fields` (without `type`), or `raw` bytes relayed verbatim."""

    type: str
    fields: Mapping[str, Any] | None = None
    raw: bytes | None = None

    @property
    def from_service(self) -> bool:
        """True for the service's own messages, False for relayed speech-to-text ones."""
        return self.raw is None

    def encode(self, seq: int | None = None) -> bytes:
        """The message's bytes; with `seq`, carrying it (PROTOCOL.md: every message on
        /v1/realtime does). A relayed message gets `"seq"` spliced in as its first member,
        the rest of its bytes unchanged."""
        raw = self.raw
        if raw is not None:
            if seq is None or raw[:1] != b"{":
                return raw
            rest = raw[1:].lstrip()
            sep = b"" if rest[:1] == b"}" else b","
            return b'{"seq":%d%s%s' % (seq, sep, rest)
        if seq is None:
            return orjson.dumps({"type": self.type, **(self.fields or {})})
        return orjson.dumps({"type": self.type, "seq": seq, **(self.fields or {})})


# The service's own message types (everything else a client sees is relayed speech-to-text).
SERVICE_TYPES = frozenset(
    {
        "error",
        "session.created",
        "session.resumed",
        "session.updated",
        "response.created",
        "response.queued",
        "response.delta",
        "response.tool_call.delta",
        "response.done",
        "response.cancelled",
        "response.failed",
        "response.truncated",
    }
)


def relayed(kind: str, raw: bytes, fields: Mapping[str, Any] | None = None) -> Outbound:
    """An upstream speech-to-text message, passed on byte for byte (`fields`: its parsed
    form, for edges that read it)."""
    return Outbound(kind, fields=fields, raw=raw)


def error(code: str, message: str, **extra: Any) -> Outbound:
    return Outbound("error", {"error": {"code": code, "message": message, **extra}})


def session_created(
    session_id: str,
    role: str,
    config: Mapping[str, Any],
    history: list[dict[str, Any]] | None,
    summary: str | None = None,
    resume_token: str | None = None,
) -> Outbound:
    fields: dict[str, Any] = {"session_id": session_id, "role": role, "session": config}
    if history is not None:
        fields["history"] = history
    fields["summary"] = summary  # the latest completed summary (PROTOCOL.md "Long conversations")
    if resume_token is not None:  # participants only (PROTOCOL.md "Resuming a session")
        fields["resume_token"] = resume_token
    return Outbound("session.created", fields)


def session_resumed(
    session_id: str,
    replayed_from: int,
    config: Mapping[str, Any],
    history: list[dict[str, Any]],
    summary: str | None = None,
) -> Outbound:
    return Outbound(
        "session.resumed",
        {
            "session_id": session_id,
            "replayed_from": replayed_from,
            "session": config,
            "history": history,
            "summary": summary,
        },
    )


def session_updated(
    session_id: str, config: Mapping[str, Any], ignored: list[str] | None = None
) -> Outbound:
    fields: dict[str, Any] = {"session_id": session_id, "session": config}
    if ignored:
        fields["ignored"] = ignored
    return Outbound("session.updated", fields)


def response_created(response_id: str, turn_order: int, model: str) -> Outbound:
    return Outbound(
        "response.created", {"response_id": response_id, "turn_order": turn_order, "model": model}
    )


def response_queued(response_id: str, turn_order: int, wait_ms: int) -> Outbound:
    return Outbound(
        "response.queued",
        {"response_id": response_id, "turn_order": turn_order, "wait_ms": wait_ms},
    )


def response_delta(response_id: str, turn_order: int, delta: str) -> Outbound:
    return Outbound(
        "response.delta", {"response_id": response_id, "turn_order": turn_order, "delta": delta}
    )


def tool_call_delta(response_id: str, turn_order: int, delta: Mapping[str, Any]) -> Outbound:
    return Outbound(
        "response.tool_call.delta",
        {"response_id": response_id, "turn_order": turn_order, **delta},
    )


def response_done(
    response_id: str,
    turn_order: int,
    *,
    text: str,
    finish_reason: str | None,
    usage: Mapping[str, Any] | None,
    request_id: str | None,
    timings: Mapping[str, float],
    tool_calls: list[dict[str, Any]] | None,
    model: str | None,
) -> Outbound:
    fields: dict[str, Any] = {
        "response_id": response_id,
        "turn_order": turn_order,
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage,
        "request_id": request_id,
        "timings": timings,
    }
    if tool_calls:
        fields["tool_calls"] = tool_calls
    if model:
        fields["model"] = model
    return Outbound("response.done", fields)


def response_cancelled(response_id: str, turn_order: int, reason: str, delivered: str) -> Outbound:
    return Outbound(
        "response.cancelled",
        {
            "response_id": response_id,
            "turn_order": turn_order,
            "reason": reason,
            "delivered_text": delivered,
        },
    )


def response_failed(
    response_id: str, turn_order: int, code: str, status: int | None, message: str, delivered: str
) -> Outbound:
    return Outbound(
        "response.failed",
        {
            "response_id": response_id,
            "turn_order": turn_order,
            "error": {"code": code, "status": status, "message": message},
            "delivered_text": delivered,
        },
    )


def response_truncated(response_id: str, text: str) -> Outbound:
    return Outbound("response.truncated", {"response_id": response_id, "text": text})
