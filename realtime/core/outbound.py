"""Server -> client messages (PROTOCOL.md "Responses", "Errors"), serialised once with orjson."""

from __future__ import annotations

from typing import Any

import orjson

dumps = orjson.dumps


def error(code: str, message: str) -> bytes:
    return dumps({"type": "error", "error": {"code": code, "message": message}})


def session_created(
    session_id: str, role: str, config: dict[str, Any], history: list[dict[str, Any]] | None
) -> bytes:
    msg: dict[str, Any] = {
        "type": "session.created",
        "session_id": session_id,
        "role": role,
        "session": config,
    }
    if history is not None:
        msg["history"] = history
    return dumps(msg)


def session_updated(session_id: str, config: dict[str, Any]) -> bytes:
    return dumps({"type": "session.updated", "session_id": session_id, "session": config})


def response_created(response_id: str, turn_order: int, model: str) -> bytes:
    return dumps(
        {
            "type": "response.created",
            "response_id": response_id,
            "turn_order": turn_order,
            "model": model,
        }
    )


def response_delta(response_id: str, turn_order: int, delta: str) -> bytes:
    return dumps(
        {
            "type": "response.delta",
            "response_id": response_id,
            "turn_order": turn_order,
            "delta": delta,
        }
    )


def tool_call_delta(response_id: str, turn_order: int, delta: dict[str, Any]) -> bytes:
    return dumps(
        {
            "type": "response.tool_call.delta",
            "response_id": response_id,
            "turn_order": turn_order,
            **delta,
        }
    )


def response_done(
    response_id: str,
    turn_order: int,
    *,
    text: str,
    finish_reason: str | None,
    usage: dict[str, Any] | None,
    request_id: str | None,
    timings: dict[str, float],
    tool_calls: list[dict[str, Any]] | None,
    model: str | None,
) -> bytes:
    msg: dict[str, Any] = {
        "type": "response.done",
        "response_id": response_id,
        "turn_order": turn_order,
        "text": text,
        "finish_reason": finish_reason,
        "usage": usage,
        "request_id": request_id,
        "timings": timings,
    }
    if tool_calls:
        msg["tool_calls"] = tool_calls
    if model:
        msg["model"] = model
    return dumps(msg)


def response_cancelled(response_id: str, turn_order: int, reason: str, delivered: str) -> bytes:
    return dumps(
        {
            "type": "response.cancelled",
            "response_id": response_id,
            "turn_order": turn_order,
            "reason": reason,
            "delivered_text": delivered,
        }
    )


def response_failed(
    response_id: str, turn_order: int, code: str, status: int | None, message: str, delivered: str
) -> bytes:
    return dumps(
        {
            "type": "response.failed",
            "response_id": response_id,
            "turn_order": turn_order,
            "error": {"code": code, "status": status, "message": message},
            "delivered_text": delivered,
        }
    )


def response_truncated(response_id: str, text: str) -> bytes:
    return dumps({"type": "response.truncated", "response_id": response_id, "text": text})
