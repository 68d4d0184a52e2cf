"""The one exception family of gateway_client, and the pure translation of error bodies.

Every failure that leaves the public API is a :class:`GatewayError`; no aiohttp exception
escapes. Subclasses say *whose fault* it is and *when* it happened:

    GatewayError
    ├── InvalidRequestError          the request failed local validation (no network call made)
    ├── HTTPStatusError              the server answered with a non-2xx status
    │   ├── BadRequestError          400 / 422
    │   ├── AuthenticationError      401 / 403
    │   ├── NotFoundError            404
    │   ├── RateLimitError           429
    │   └── ServerError              5xx
    ├── StreamError                  an error object inside a 200 SSE stream
    ├── TransportError               the connection failed or the bytes made no sense
    │   ├── ConnectError             could not open a connection
    │   ├── ConnectionLost           the connection broke mid-response
    │   └── ProtocolError            malformed SSE / JSON, a size limit exceeded
    ├── GatewayTimeout               a phase deadline expired
    │   ├── ConnectTimeout           (also a ConnectError: retried like one)
    │   ├── FirstTokenTimeout
    │   ├── IdleTimeout
    │   └── TotalTimeout
    └── RunFailedError               an async run finished with status "failed"

The body parser understands the three documented gateway error generations (reference 3.7):
nested ``{"error": {"code", "message", "metadata"}}``, flattened ``{"code", "message",
"request_id", "metadata": {"errors": [...]}}`` and the auth-middleware
``{"error": "<text>", "status": "error", "request_id"}``. Secrets are scrubbed from every
message built here, because servers sometimes echo request headers back in error bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "FirstTokenTimeout",
    "GatewayError",
    "GatewayTimeout",
    "HTTPStatusError",
    "IdleTimeout",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "RunFailedError",
    "ServerError",
    "StreamError",
    "TotalTimeout",
    "TransportError",
    "error_for_status",
    "parse_error_body",
    "scrub",
    "stream_error",
]

# Error bodies are read for their message only; anything longer is truncated in messages.
_MAX_MESSAGE_CHARS = 1000


class GatewayError(Exception):
    """Base class of every error raised by gateway_client.

    Attributes (all optional, ``None`` when unknown):
    ``status`` HTTP status (or the status carried by an in-stream error object),
    ``message`` human-readable text (already scrubbed of secrets), ``code`` a provider
    error code (int or string such as ``"tool_use_failed"``), ``request_id`` the gateway's
    request id, ``retry_after`` seconds the server asked us to wait, ``model`` the model
    the failing attempt used, ``attempts`` how many HTTP attempts were made in total.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        model: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.model = model
        self.details = details
        self.attempts = 0

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.insert(0, f"[{self.status}]")
        if self.request_id:
            parts.append(f"(request_id={self.request_id})")
        return " ".join(parts)


class InvalidRequestError(GatewayError):
    """The request body failed local validation; nothing was sent."""


class HTTPStatusError(GatewayError):
    """The server answered with a non-success HTTP status."""


class BadRequestError(HTTPStatusError):
    """400/422: the server rejected the request (unknown model, bad field, ...)."""


class AuthenticationError(HTTPStatusError):
    """401/403: missing, invalid or unauthorised API key."""


class NotFoundError(HTTPStatusError):
    """404: unknown model, transcript id or run id."""


class RateLimitError(HTTPStatusError):
    """429: per-model rate limit hit; ``retry_after`` holds the server's hint if any."""


class ServerError(HTTPStatusError):
    """5xx: a transient gateway or provider failure."""


class StreamError(GatewayError):
    """An error object arrived inside an otherwise successful (200) SSE stream."""


class TransportError(GatewayError):
    """The connection could not be used: refused, broken, or carrying malformed bytes."""


class ConnectError(TransportError):
    """No connection could be opened (refused, DNS, TLS, connect timeout)."""


class ConnectionLost(TransportError):
    """The connection broke after the response started (no clean end of stream)."""


class ProtocolError(TransportError):
    """The response bytes broke the protocol: bad SSE framing, bad JSON, size limit."""


class GatewayTimeout(GatewayError):
    """A phase deadline (see :class:`gateway_client.Timeouts`) expired."""


class ConnectTimeout(GatewayTimeout, ConnectError):
    """Opening the TCP/TLS connection took longer than ``Timeouts.connect``."""


class FirstTokenTimeout(GatewayTimeout):
    """No response (stream: no first chunk) within ``Timeouts.first_token`` of connecting."""


class IdleTimeout(GatewayTimeout):
    """The gap between two reads exceeded ``Timeouts.idle``."""


class TotalTimeout(GatewayTimeout):
    """The whole call (all attempts and fallbacks) exceeded ``Timeouts.total``."""


class RunFailedError(GatewayError):
    """An async chat-completion run ended with a failed status."""


_STATUS_CLASSES: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_class_for_status(status: int) -> type[HTTPStatusError]:
    """The HTTPStatusError subclass that represents ``status``."""
    if status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status, HTTPStatusError)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each non-trivial secret in ``text`` with ``***``."""
    for secret in secrets:
        # Very short secrets would turn ordinary words into asterisks; keys are long.
        if secret and len(secret) >= 6 and secret in text:
            text = text.replace(secret, "***")
    return text


def _truncate(text: str) -> str:
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[:_MAX_MESSAGE_CHARS] + "..."


def _as_code(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return value
    return None


def parse_error_body(body: bytes | str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Extract ``message``, ``code``, ``request_id``, ``errors`` and ``status`` from an error body.

    Pure and total: never raises; unknown shapes give the raw text as the message. ``status``
    is set only when the body itself states a numeric status (``status_code`` or an int
    ``code``), which is how in-stream error objects carry one.
    """
    out: dict[str, Any] = {
        "message": None,
        "code": None,
        "request_id": None,
        "errors": [],
        "status": None,
    }
    data: Any
    if body is None:
        return out
    if isinstance(body, Mapping):
        data = body
    else:
        raw = body if isinstance(body, bytes) else body.encode()
        try:
            data = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            out["message"] = _truncate(raw.decode("utf-8", "replace").strip()) or None
            return out
    if not isinstance(data, Mapping):
        if data is not None:
            out["message"] = _truncate(str(data))
        return out

    err = data.get("error")
    if isinstance(err, Mapping):
        # Generation 1 (nested) and OpenAI-style / in-stream error objects.
        source: Mapping[str, Any] = err
    else:
        # Generation 2 (flattened) and 3 (auth middleware: "error" is the text).
        source = data
        if isinstance(err, str) and err:
            out["message"] = err
    if out["message"] is None:
        msg = source.get("message") or source.get("detail") or source.get("error_description")
        if isinstance(msg, str):
            out["message"] = msg
    out["code"] = _as_code(source.get("code", source.get("type")))
    status = source.get("status_code", source.get("http_status_code"))
    if isinstance(status, int) and not isinstance(status, bool):
        out["status"] = status
    elif isinstance(out["code"], int) and 100 <= out["code"] <= 599:
        out["status"] = out["code"]
    for holder in (source, data):
        rid = holder.get("request_id")
        if isinstance(rid, str) and rid:
            out["request_id"] = rid
            break
    metadata = source.get("metadata") or data.get("metadata")
    if isinstance(metadata, Mapping):
        errors = metadata.get("errors")
        if isinstance(errors, list):
            out["errors"] = [str(e) for e in errors]
    if out["message"] is None:
        out["message"] = _truncate(orjson.dumps(data).decode())
    else:
        out["message"] = _truncate(str(out["message"]))
    return out


def error_for_status(
    status: int,
    body: bytes | str | None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    model: str | None = None,
    secrets: Iterable[str | None] = (),
) -> HTTPStatusError:
    """Build the HTTPStatusError for an HTTP answer ``status`` with error ``body``."""
    parsed = parse_error_body(body)
    message = parsed["message"] or f"HTTP {status}"
    if parsed["errors"]:
        listed = "; ".join(parsed["errors"])
        if listed not in message:
            message = f"{message}: {listed}"
    cls = error_class_for_status(status)
    return cls(
        scrub(message, secrets),
        status=status,
        code=parsed["code"],
        request_id=parsed["request_id"] or request_id,
        retry_after=retry_after,
        model=model,
        details=[scrub(e, secrets) for e in parsed["errors"]] or None,
    )


def stream_error(payload: Mapping[str, Any], *, event: str | None = None) -> StreamError:
    """Build the StreamError for an in-stream error object (``{"error": ...}`` or ``event: error``)."""
    parsed = parse_error_body(payload)
    label = f"stream error event '{event}'" if event else "stream error"
    return StreamError(
        f"{label}: {parsed['message'] or 'unknown error'}",
        status=parsed["status"],
        code=parsed["code"],
        request_id=parsed["request_id"],
    )
