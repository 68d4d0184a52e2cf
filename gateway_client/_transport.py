"""One HTTP exchange with the gateway: the response, the deadlines that govern reading it, and
the translation of aiohttp errors into :class:`~gateway_client.errors.GatewayError`.

Contract:

* :class:`Attempt` wraps one ``aiohttp.ClientResponse``. Every read is bounded by the phase
  deadline it belongs to -- ``first_token`` until the first chunk, then ``idle`` between
  reads, never past ``total`` -- through ``asyncio.timeout_at`` around our own reads (aiohttp's
  read timeout is not used), and raises that phase's
  :class:`~gateway_client.errors.GatewayTimeout` subclass.
* The first-token clock starts in :func:`on_headers_sent`, an aiohttp trace hook, so a slow
  connect is not charged to the model.
* No aiohttp or OS exception leaves this module untranslated (:func:`translate`, DESIGN
  principle 7), and every message is scrubbed of the secrets passed in.
* Bodies read whole (errors, JSON answers) are bounded (:data:`MAX_ERROR_BODY`,
  :data:`MAX_JSON_BODY`) so a misbehaving server cannot exhaust memory.

Nothing here retries, falls back or decides: :mod:`gateway_client.client` does that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson

from gateway_client.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    FirstTokenTimeout,
    GatewayError,
    GatewayTimeout,
    IdleTimeout,
    InvalidRequestError,
    ProtocolError,
    StreamError,
    TotalTimeout,
    TransportError,
    error_for_status,
    parse_error_body,
    scrub,
)
from gateway_client.retry import server_wait_hint

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_JSON_BODY",
    "TRANSPORT_ERRORS",
    "Attempt",
    "Marks",
    "json_body",
    "on_headers_sent",
    "status_error",
    "timeout_error",
    "translate",
]

# Error and JSON bodies are read whole; bound them so a misbehaving server cannot exhaust memory.
MAX_ERROR_BODY = 1 << 20
MAX_JSON_BODY = 16 << 20


class Marks:
    """Per-attempt scratchpad filled by the aiohttp trace hook (when headers were sent)."""

    __slots__ = ("first_deadline", "first_token", "scope", "sent", "total_deadline")

    def __init__(self, first_token: float, total_deadline: float) -> None:
        self.first_token = first_token
        self.total_deadline = total_deadline
        self.first_deadline = total_deadline
        self.sent = False
        self.scope: asyncio.Timeout | None = None


async def on_headers_sent(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any
) -> None:
    # The connection exists and our request is on the wire: the first-token clock starts now.
    marks = ctx.trace_request_ctx
    if isinstance(marks, Marks):
        marks.sent = True
        marks.first_deadline = min(
            asyncio.get_running_loop().time() + marks.first_token, marks.total_deadline
        )
        if marks.scope is not None:
            marks.scope.reschedule(marks.first_deadline)


def translate(exc: BaseException, secrets: Sequence[str | None]) -> GatewayError:
    """Map an aiohttp/OS exception to our family (the boundary of DESIGN principle 7)."""
    text = scrub(str(exc) or type(exc).__name__, secrets)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(f"connect timed out: {text}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect: {text}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ConnectionLost(f"connection lost: {text}")
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return ConnectionLost(f"connection error: {text}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"bad HTTP response: {text}")
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return InvalidRequestError(f"invalid request: {text}")
    return TransportError(f"transport error: {text}")


TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


class Attempt:
    """One HTTP exchange in flight: the response and the deadlines that govern reading it."""

    __slots__ = (
        "attempt_no",
        "first_deadline",
        "idle",
        "model",
        "response",
        "started",
        "total_deadline",
    )

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        model: str,
        first_deadline: float,
        total_deadline: float,
        idle: float,
        started: float,
        attempt_no: int,
    ) -> None:
        self.attempt_no = attempt_no
        self.response = response
        self.model = model
        self.first_deadline = first_deadline
        self.total_deadline = total_deadline
        self.idle = idle
        self.started = started

    def request_id(self) -> str | None:
        headers = self.response.headers
        return headers.get("x-request-id") or headers.get("request-id")

    async def read(self, first: bool, secrets: Sequence[str | None]) -> bytes:
        """Read whatever bytes are available, under the phase deadline; b"" at end of body."""
        content = self.response.content
        try:
            # Bytes already buffered need no deadline (and no timer object per read).
            data = content.read_nowait()
        except TRANSPORT_ERRORS as exc:
            raise self._lost(exc, secrets) from None
        if data or content.at_eof():
            return data
        loop = asyncio.get_running_loop()
        deadline = self.first_deadline if first else loop.time() + self.idle
        phase: type[GatewayTimeout] = FirstTokenTimeout if first else IdleTimeout
        if deadline >= self.total_deadline:
            deadline, phase = self.total_deadline, TotalTimeout
        try:
            async with asyncio.timeout_at(deadline):
                return await content.readany()
        except TimeoutError:
            raise timeout_error(phase, self) from None
        except TRANSPORT_ERRORS as exc:
            raise self._lost(exc, secrets) from None

    def _lost(self, exc: BaseException, secrets: Sequence[str | None]) -> GatewayError:
        err = translate(exc, secrets)
        err.request_id = self.request_id()
        err.model = self.model
        return err

    async def read_all(self, limit: int, secrets: Sequence[str | None]) -> bytes:
        """Read the whole body (bounded by ``limit``), each read under the idle deadline."""
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self.read(False, secrets)
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > limit:
                raise ProtocolError(f"response body larger than {limit} bytes")
            parts.append(data)


async def status_error(attempt: Attempt, secrets: Sequence[str | None]) -> GatewayError:
    """The error for a non-2xx answer, from its (bounded) body and its wait-hint headers."""
    response = attempt.response
    try:
        body = await attempt.read_all(MAX_ERROR_BODY, secrets)
    except GatewayError:
        body = b""
    return error_for_status(
        response.status,
        body,
        request_id=attempt.request_id(),
        retry_after=server_wait_hint(response.headers, time.time()),
        model=attempt.model,
        secrets=secrets,
    )


def timeout_error(phase: type[GatewayTimeout], attempt: Attempt | None) -> GatewayTimeout:
    words = {
        ConnectTimeout: "connecting took too long",
        FirstTokenTimeout: "no first token within the first_token deadline",
        IdleTimeout: "no data within the idle deadline",
        TotalTimeout: "the call exceeded its total deadline",
    }
    err = phase(words.get(phase, "timed out"))
    if attempt is not None:
        err.request_id = attempt.request_id()
        err.model = attempt.model
    return err


def json_body(
    body: bytes, secrets: Sequence[str | None], request_id: str | None
) -> dict[str, Any]:
    """Decode a 2xx JSON body; an error object inside it (a 200 that failed) raises."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("response body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("response body is not a JSON object")
    if data.get("error") is not None:
        parsed = parse_error_body(data)
        raise StreamError(
            scrub(parsed["message"] or "error", secrets),
            status=parsed["status"],
            code=parsed["code"],
            request_id=parsed["request_id"] or request_id,
        )
    return data

