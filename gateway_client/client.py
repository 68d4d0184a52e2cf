"""The aiohttp adapter: one pooled session, phase deadlines, retries, fallbacks, cancellation.

Everything that decides (SSE framing, chunk assembly, retry policy, error parsing) lives in the
pure modules; this module only moves bytes and enforces time:

* **Deadlines by phase** (:class:`Timeouts`): ``connect`` (TCP/TLS, via aiohttp's
  ``sock_connect``), ``first_token`` (from the moment the request headers were written to the
  first chunk -- or, for ``complete()``, to the response headers), ``idle`` (longest gap between
  two reads), ``total`` (the whole call: every attempt, backoff sleep and fallback). Each is an
  ``asyncio.timeout_at`` around our own reads, never aiohttp's read timeout, and each raises its
  own :class:`~gateway_client.errors.GatewayTimeout` subclass.
* **Retries** only before the first chunk reached the caller: ``stream()`` opens the request
  *and* reads the first chunk inside ``__aenter__``; once ``__aenter__`` returned, a failure is
  raised, never replayed. ``fallback_models`` are tried in order, each with its own retries,
  when the primary fails before its first chunk (auth errors, local validation errors and the
  total deadline end the call instead).
* **Cancellation**: leaving ``async with gw.stream(...)`` early, or cancelling the task inside
  it, calls ``response.close()`` -- the socket is closed at once, so the gateway sees the
  client leave. ``CancelledError`` always propagates.
* **Errors** are translated at this boundary: no aiohttp exception escapes, and the API key is
  scrubbed from every message and never logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import orjson

from gateway_client.assemble import ChunkAssembler, StreamResult
from gateway_client.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    FirstTokenTimeout,
    GatewayError,
    GatewayTimeout,
    IdleTimeout,
    InvalidRequestError,
    ProtocolError,
    RunFailedError,
    StreamError,
    TotalTimeout,
    TransportError,
    error_for_status,
    parse_error_body,
    scrub,
)
from gateway_client.models import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    completion_to_chunk,
    request_dict,
    validate_request,
)
from gateway_client.repair import repair_completion, repair_stream_result
from gateway_client.retry import RetryPolicy, retry_delay, server_wait_hint, should_retry
from gateway_client.sse import DONE, SSEDecoder, parse_chunk

__all__ = ["REGION_URLS", "ChatStream", "GatewayClient", "Timeouts"]

log = logging.getLogger("gateway_client")

REGION_URLS = {
    "us": "https://llm-gateway.assemblyai.com/v1",
    "eu": "https://llm-gateway.eu.assemblyai.com/v1",
}

# Error and JSON bodies are read whole; bound them so a misbehaving server cannot exhaust memory.
_MAX_ERROR_BODY = 1 << 20
_MAX_JSON_BODY = 16 << 20
# After [DONE] the chunked-encoding terminator is normally already buffered; wait this long at
# most for it so the connection can go back to the pool, else just close it.
_DRAIN_WAIT = 0.25
_DONE_STATUSES = frozenset({"done", "completed", "complete", "succeeded", "success"})
_FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled", "expired"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines in seconds, by phase. See the module docstring for what each one covers."""

    connect: float = 5.0
    first_token: float = 30.0
    idle: float = 30.0
    total: float = 300.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_token", "idle", "total"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name} must be > 0")


class _Marks:
    """Per-attempt scratchpad filled by the aiohttp trace hook (when headers were sent)."""

    __slots__ = ("first_deadline", "first_token", "scope", "sent", "total_deadline")

    def __init__(self, first_token: float, total_deadline: float) -> None:
        self.first_token = first_token
        self.total_deadline = total_deadline
        self.first_deadline = total_deadline
        self.sent = False
        self.scope: asyncio.Timeout | None = None


async def _on_headers_sent(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any
) -> None:
    # The connection exists and our request is on the wire: the first-token clock starts now.
    marks = ctx.trace_request_ctx
    if isinstance(marks, _Marks):
        marks.sent = True
        marks.first_deadline = min(
            asyncio.get_running_loop().time() + marks.first_token, marks.total_deadline
        )
        if marks.scope is not None:
            marks.scope.reschedule(marks.first_deadline)


def _translate(exc: BaseException, secrets: Sequence[str | None]) -> GatewayError:
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


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


class _Attempt:
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
        except _TRANSPORT_ERRORS as exc:
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
            raise _timeout(phase, self) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._lost(exc, secrets) from None

    def _lost(self, exc: BaseException, secrets: Sequence[str | None]) -> GatewayError:
        err = _translate(exc, secrets)
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


def _timeout(phase: type[GatewayTimeout], attempt: _Attempt | None) -> GatewayTimeout:
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


def _json_body(
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


class _StreamState:
    """Reading side of an open stream: decoder, assembler and a queue of ready chunks."""

    __slots__ = (
        "assembler",
        "attempt",
        "debug",
        "decoder",
        "done",
        "error",
        "got_first",
        "queue",
        "secrets",
    )

    def __init__(self, attempt: _Attempt, secrets: Sequence[str | None]) -> None:
        self.attempt = attempt
        self.decoder = SSEDecoder()
        self.assembler = ChunkAssembler()
        self.queue: collections.deque[ChatChunk] = collections.deque()
        self.done = False
        self.error: GatewayError | None = None
        self.got_first = False
        self.secrets = secrets
        self.debug = log.isEnabledFor(logging.DEBUG)

    async def fill(self) -> None:
        """Read until at least one chunk is queued, the stream ended, or an error is pending.

        Chunks decoded before an in-stream error are delivered first; the error is raised
        after them (see ``ChatStream.__anext__``).
        """
        queue = self.queue
        while not queue and not self.done:
            data = await self.attempt.read(not self.got_first, self.secrets)
            if data:
                try:
                    events = self.decoder.feed(data)
                except GatewayError as exc:
                    self._fail(exc)
                    return
            else:
                events = self.decoder.close()
                self.done = True
            for event in events:
                try:
                    payload = parse_chunk(event)
                except GatewayError as exc:
                    self._fail(exc)
                    return
                if payload is None:
                    if event.data == DONE:
                        self.done = True
                        break
                    continue
                queue.append(ChatChunk(payload))
                if self.debug:
                    log.debug("chunk %d: %s", self.assembler.chunks, event.data[:200])
            if queue:
                self.got_first = True

    def _fail(self, exc: GatewayError) -> None:
        exc.request_id = exc.request_id or self.assembler.request_id or self.attempt.request_id()
        exc.model = exc.model or self.attempt.model
        exc.message = scrub(exc.message, self.secrets)
        self.error = exc
        self.done = True

    def load_json(self, body: bytes) -> None:
        """A stream request answered with plain JSON: queue it as one equivalent chunk."""
        data = _json_body(body, self.secrets, None)
        chunk = completion_to_chunk(data)
        self.queue.append(ChatChunk(chunk))
        self.got_first = True
        self.done = True


class ChatStream:
    """An open streamed chat completion. Use only as ``async with gw.stream(body) as s``.

    ``__aenter__`` sends the request (retrying / falling back as configured) and waits for the
    first chunk; iterating yields :class:`~gateway_client.models.ChatChunk` objects; leaving the
    block closes the connection unless the stream ended cleanly.

    Attributes: ``status`` (HTTP status), ``request_id``, ``model`` (the model that answered,
    after any client-side fallback), ``attempts``, ``text_so_far``.
    """

    def __init__(
        self, client: GatewayClient, request: ChatRequest, wire: dict[str, Any] | None = None
    ) -> None:
        self._client = client
        self._request = request
        self._wire = wire
        self._state: _StreamState | None = None
        self._raised = False
        self.attempts = 0
        self.model: str | None = None

    async def __aenter__(self) -> ChatStream:
        if self._state is not None:
            raise RuntimeError("a ChatStream can be entered only once")
        self._state = await self._client._open_stream(self._request, self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        if state is None:
            return
        response = state.attempt.response
        if exc_type is None and state.done and state.error is None:
            if not response.content.at_eof():
                try:
                    await self._drain(state)
                except BaseException:
                    response.close()
                    raise
            if response.content.at_eof():
                response.release()
                return
        # Early exit, cancellation or failure: drop the socket now (release() would read on).
        response.close()

    @staticmethod
    async def _drain(state: _StreamState) -> None:
        try:
            async with asyncio.timeout(_DRAIN_WAIT):
                while await state.attempt.response.content.readany():
                    pass
        except (TimeoutError, *_TRANSPORT_ERRORS):
            pass

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> ChatChunk:
        state = self._state
        if state is None:
            raise RuntimeError("use 'async with gw.stream(...) as stream' before iterating")
        queue = state.queue
        if not queue:
            await state.fill()
        if queue:
            # Assemble as chunks are handed out, so text_so_far and result() describe what
            # the caller has seen, not what was read ahead.
            chunk = queue.popleft()
            state.assembler.add(chunk.raw)
            return chunk
        if state.error is not None and not self._raised:
            self._raised = True
            raise state.error
        raise StopAsyncIteration

    @property
    def status(self) -> int | None:
        return self._state.attempt.response.status if self._state else None

    @property
    def request_id(self) -> str | None:
        if self._state is None:
            return None
        return (
            self._state.attempt.request_id()
            or self._state.assembler.request_id
            or (self._state.assembler.id)
        )

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (e.g. the gateway's X-RateLimit-*); empty before opening."""
        return self._state.attempt.response.headers if self._state else {}

    @property
    def text_so_far(self) -> str:
        return self._state.assembler.text_of(0) if self._state else ""

    def result(self) -> StreamResult:
        """The completion assembled from every chunk handed out so far.

        Complete once iteration finished; json-repair (if requested) is applied here.
        """
        if self._state is None:
            raise RuntimeError("the stream was never opened")
        result = self._state.assembler.result()
        result.request_id = self.request_id
        if not result.model:
            result.model = self.model
        if self._request.wants_json_repair():
            repair_stream_result(result)
        return result


class GatewayClient:
    """Async client for AssemblyAI's LLM Gateway and any OpenAI-compatible endpoint.

    ``base_url`` is the prefix ``/chat/completions`` is appended to; default: env
    ``LLM_GATEWAY_URL``, else the ``region``'s gateway (``"us"`` or ``"eu"``). ``api_key``
    defaults to env ``ASSEMBLYAI_API_KEY``; it is sent as ``Authorization: <key>``
    (``auth_scheme="bearer"`` sends ``Bearer <key>``). One pooled keep-alive aiohttp session
    lives from ``start()``/``__aenter__`` to ``close()``/``__aexit__``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        region: str = "us",
        max_retries: int = 2,
        connect_timeout: float | None = None,
        first_token_timeout: float | None = None,
        idle_timeout: float | None = None,
        total_timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        auth_scheme: Literal["raw", "bearer"] = "raw",
        *,
        timeouts: Timeouts | None = None,
        retry_policy: RetryPolicy | None = None,
        rand: Callable[[], float] = random.random,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if region not in REGION_URLS:
            raise ValueError(f"unknown region {region!r}; expected one of {sorted(REGION_URLS)}")
        if auth_scheme not in ("raw", "bearer"):
            raise ValueError("auth_scheme must be 'raw' or 'bearer'")
        self.region = region
        self.base_url = (
            base_url or os.environ.get("LLM_GATEWAY_URL") or REGION_URLS[region]
        ).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("ASSEMBLYAI_API_KEY")
        base = timeouts or Timeouts()
        self.timeouts = Timeouts(
            connect=connect_timeout if connect_timeout is not None else base.connect,
            first_token=first_token_timeout
            if first_token_timeout is not None
            else base.first_token,
            idle=idle_timeout if idle_timeout is not None else base.idle,
            total=total_timeout if total_timeout is not None else base.total,
        )
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self.fallback_models = tuple(fallback_models)
        self._auth_scheme = auth_scheme
        self._rand = rand
        self._max_connections = max_connections
        self._extra_headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # Never show the key.
        return f"GatewayClient(base_url={self.base_url!r}, region={self.region!r})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the pooled session (idempotent)."""
        if self._session is not None and not self._session.closed:
            return
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_on_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
            trace_configs=[trace],
            headers=self._headers(),
        )

    async def close(self) -> None:
        """Close the session and every pooled connection."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> GatewayClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "gateway-client/0.1", "Accept": "application/json"}
        headers.update(self._extra_headers)
        if self._api_key:
            key = self._api_key
            headers["Authorization"] = f"Bearer {key}" if self._auth_scheme == "bearer" else key
        return headers

    @property
    def _secrets(self) -> tuple[str | None]:
        return (self._api_key,)

    def _need_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("GatewayClient is not started; use 'async with' or await start()")
        return self._session

    # ------------------------------------------------------------------ public calls

    async def complete(self, body: Mapping[str, Any] | ChatRequest) -> ChatCompletion:
        """Send a non-streamed chat completion and return the parsed envelope.

        A body with ``"async": true`` is submitted as a run and awaited with :meth:`wait_run`.
        """
        request = validate_request(body)
        if request.async_:
            return await self.wait_run(await self.submit_run(request))
        wire = request_dict(request)
        if wire.get("stream"):
            wire["stream"] = False
        completion = await self._call(wire, self._complete_attempt)
        if request.wants_json_repair():
            repair_completion(completion)
        return completion

    def stream(self, body: Mapping[str, Any] | ChatRequest, *, trusted: bool = False) -> ChatStream:
        """Return a streamed completion; use it as ``async with gw.stream(body) as s``.

        Validation happens here, before any network call. ``trusted=True`` skips it for a
        plain dict the caller built from already-validated parts (it is sent as given): the
        realtime service does this, since validation costs more than the rest of sending.
        """
        if trusted and isinstance(body, Mapping) and "post_processing_steps" not in body:
            shell = ChatRequest.model_construct(model=body.get("model"), stream=True)
            return ChatStream(self, shell, wire=dict(body))
        request = validate_request(body)
        if request.async_:
            raise InvalidRequestError("invalid request: async: cannot be combined with stream")
        return ChatStream(self, request)

    async def submit_run(self, body: Mapping[str, Any] | ChatRequest) -> str:
        """Submit ``body`` as an async run (``"async": true``) and return the run id."""
        request = validate_request(body)
        wire = request_dict(request)
        wire["async"] = True
        wire.pop("stream", None)
        data = await self._call(wire, self._json_attempt)
        for key in ("id", "run_id", "uid", "request_id"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        raise ProtocolError("async run answer carries no run id")

    async def wait_run(
        self, run_id: str, *, poll_interval: float = 0.25, max_poll_interval: float = 2.0
    ) -> ChatCompletion:
        """Poll ``GET {base_url}/chat_completion_runs/{run_id}`` until the run finishes.

        Returns the completion, raises :class:`RunFailedError` for a failed run, and
        :class:`TotalTimeout` when ``Timeouts.total`` passes first.
        """
        session = self._need_session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total
        url = f"{self.base_url}/chat_completion_runs/{run_id}"
        interval = poll_interval
        while True:
            data = await self._get_json(session, url, deadline)
            status = str(data.get("status") or "").lower()
            inner = data.get("response") or data.get("result") or data.get("completion")
            if status in _FAILED_STATUSES:
                parsed = parse_error_body(data if data.get("error") else (inner or data))
                raise RunFailedError(
                    scrub(f"run {run_id} {status}: {parsed['message']}", self._secrets),
                    status=parsed["status"],
                    code=parsed["code"],
                    request_id=run_id,
                )
            if isinstance(inner, dict) and inner.get("choices") is not None:
                return ChatCompletion.model_validate(inner)
            if data.get("choices") is not None:
                return ChatCompletion.model_validate(data)
            if status in _DONE_STATUSES:
                raise ProtocolError(f"run {run_id} finished without a completion")
            if loop.time() + interval >= deadline:
                raise TotalTimeout(f"run {run_id} not finished within the total deadline")
            await asyncio.sleep(interval)
            interval = min(max_poll_interval, interval * 1.5)

    # ------------------------------------------------------------------ machinery

    async def _call(
        self,
        wire: dict[str, Any],
        attempt_fn: Callable[[bytes, str, float, int], Awaitable[T]],
    ) -> T:
        """Run ``attempt_fn`` for the primary model, then each fallback model, with retries.

        ``attempt_fn(payload, model, total_deadline, attempt_number)`` performs one HTTP
        exchange. Retry and fallback decisions come from :mod:`gateway_client.retry`.
        """
        self._need_session()
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + self.timeouts.total
        primary = str(wire["model"])
        models = [primary, *(m for m in self.fallback_models if m != primary)]
        attempts = 0
        last: GatewayError | None = None
        for model in models:
            payload = orjson.dumps(wire if model == primary else {**wire, "model": model})
            retry_no = 0
            while True:
                attempts += 1
                try:
                    return await attempt_fn(payload, model, total_deadline, attempts)
                except GatewayError as exc:
                    exc.attempts = attempts
                    exc.model = exc.model or model
                    last = exc
                    if isinstance(exc, AuthenticationError | InvalidRequestError | TotalTimeout):
                        raise
                    if not should_retry(exc, retry_no, self.retry_policy):
                        break
                    delay = retry_delay(retry_no, self.retry_policy, self._rand, exc.retry_after)
                    if loop.time() + delay >= total_deadline:
                        raise
                    log.info(
                        "gateway retry model=%s attempt=%d in %.2fs after: %s",
                        model,
                        attempts,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    retry_no += 1
            if model != models[-1]:
                log.info("gateway fallback from model=%s after: %s", model, last)
        assert last is not None
        raise last

    async def _send(
        self, payload: bytes, model: str, total_deadline: float, attempt_no: int
    ) -> _Attempt:
        """POST ``payload``; return the attempt once 2xx headers arrived, else raise."""
        session = self._need_session()
        loop = asyncio.get_running_loop()
        started = loop.time()
        marks = _Marks(self.timeouts.first_token, total_deadline)
        # Until the trace hook says the request is on the wire, allow connect + first_token.
        header_deadline = min(
            started + self.timeouts.connect + self.timeouts.first_token, total_deadline
        )
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(header_deadline) as scope:
                marks.scope = scope
                response = await session.post(
                    f"{self.base_url}/chat/completions",
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    trace_request_ctx=marks,
                )
        except TimeoutError:
            scope_ = marks.scope
            if scope_ is not None and scope_.expired():
                if (scope_.when() or 0.0) >= total_deadline:
                    phase: type[GatewayTimeout] = TotalTimeout
                else:
                    phase = FirstTokenTimeout if marks.sent else ConnectTimeout
                err: GatewayError = _timeout(phase, None)
            else:  # aiohttp's own sock_connect timeout
                err = ConnectTimeout("connect timed out")
            self._log_attempt(None, model, None, started, attempt_no, err)
            raise err from None
        except _TRANSPORT_ERRORS as exc:
            err = _translate(exc, self._secrets)
            self._log_attempt(None, model, None, started, attempt_no, err)
            raise err from None
        attempt = _Attempt(
            response,
            model=model,
            first_deadline=marks.first_deadline,
            total_deadline=total_deadline,
            idle=self.timeouts.idle,
            started=started,
            attempt_no=attempt_no,
        )
        try:
            if response.status >= 300:
                raise await self._status_error(attempt)
        except BaseException as exc:
            response.close()
            self._log_attempt(
                attempt.request_id(), model, response.status, started, attempt_no, exc
            )
            raise
        return attempt

    def _log_ok(self, attempt: _Attempt, request_id: str | None) -> None:
        self._log_attempt(
            request_id or attempt.request_id(),
            attempt.model,
            attempt.response.status,
            attempt.started,
            attempt.attempt_no,
        )

    async def _status_error(self, attempt: _Attempt) -> GatewayError:
        response = attempt.response
        try:
            body = await attempt.read_all(_MAX_ERROR_BODY, self._secrets)
        except GatewayError:
            body = b""
        return error_for_status(
            response.status,
            body,
            request_id=attempt.request_id(),
            retry_after=server_wait_hint(response.headers, time.time()),
            model=attempt.model,
            secrets=self._secrets,
        )

    def _log_attempt(
        self,
        request_id: str | None,
        model: str,
        status: int | None,
        started: float,
        attempt_no: int,
        error: BaseException | None = None,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        latency_ms = (asyncio.get_running_loop().time() - started) * 1000.0
        outcome = "ok" if error is None else type(error).__name__
        log.info(
            "gateway request request_id=%s model=%s url=%s region=%s status=%s "
            "latency_ms=%.0f attempt=%d outcome=%s",
            request_id,
            model,
            self.base_url,
            self.region,
            status,
            latency_ms,
            attempt_no,
            outcome,
        )

    async def _json_attempt(
        self, payload: bytes, model: str, total_deadline: float, attempt_no: int
    ) -> dict[str, Any]:
        attempt = await self._send(payload, model, total_deadline, attempt_no)
        try:
            body = await attempt.read_all(_MAX_JSON_BODY, self._secrets)
        except BaseException:
            attempt.response.close()
            raise
        attempt.response.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProtocolError("response body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError("response body is not a JSON object")
        if not data.get("request_id") and attempt.request_id():
            data["request_id"] = attempt.request_id()
        self._log_ok(attempt, data.get("request_id"))
        return data

    async def _complete_attempt(
        self, payload: bytes, model: str, total_deadline: float, attempt_no: int
    ) -> ChatCompletion:
        attempt = await self._send(payload, model, total_deadline, attempt_no)
        content_type = attempt.response.headers.get("Content-Type", "")
        try:
            if content_type.startswith("text/event-stream"):
                # The server streamed although we asked it not to: assemble the stream.
                state = _StreamState(attempt, self._secrets)
                while not state.done:
                    await state.fill()
                    state.queue.clear()
                if state.error is not None:
                    raise state.error
                streamed = _completion_from_stream(state.assembler.result(), attempt.request_id())
                attempt.response.close()
                self._log_ok(attempt, streamed.request_id)
                return streamed
            body = await attempt.read_all(_MAX_JSON_BODY, self._secrets)
        except BaseException:
            attempt.response.close()
            raise
        attempt.response.release()
        data = _json_body(body, self._secrets, attempt.request_id())
        completion = ChatCompletion.model_validate(data)
        if not completion.request_id:
            completion.request_id = attempt.request_id()
        self._log_ok(attempt, completion.request_id)
        return completion

    async def _open_stream(self, request: ChatRequest, stream: ChatStream) -> _StreamState:
        """Open the stream and read up to its first chunk (retries allowed until then)."""
        wire = stream._wire if stream._wire is not None else request_dict(request)
        wire["stream"] = True

        async def attempt_fn(
            payload: bytes, model: str, total_deadline: float, attempt_no: int
        ) -> _StreamState:
            stream.attempts = attempt_no
            attempt = await self._send(payload, model, total_deadline, attempt_no)
            state = _StreamState(attempt, self._secrets)
            try:
                content_type = attempt.response.headers.get("Content-Type", "")
                if content_type.startswith("application/json"):
                    state.load_json(await attempt.read_all(_MAX_JSON_BODY, self._secrets))
                else:
                    await state.fill()
                    if not state.queue and state.error is not None:
                        raise state.error
            except BaseException:
                attempt.response.close()
                raise
            stream.model = model
            first = state.queue[0].raw.get("request_id") if state.queue else None
            self._log_ok(attempt, first if isinstance(first, str) else None)
            return state

        return await self._call(wire, attempt_fn)

    async def _get_json(
        self, session: aiohttp.ClientSession, url: str, deadline: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout_at(min(deadline, started + self.timeouts.first_token)):
                async with session.get(url) as response:
                    body = await response.read()
                    status = response.status
                    headers = response.headers
        except TimeoutError:
            raise TotalTimeout("polling the run exceeded its deadline") from None
        except _TRANSPORT_ERRORS as exc:
            raise _translate(exc, self._secrets) from None
        if status >= 300:
            raise error_for_status(
                status,
                body,
                request_id=headers.get("x-request-id"),
                retry_after=server_wait_hint(headers, time.time()),
                secrets=self._secrets,
            )
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProtocolError("run status is not valid JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError("run status is not a JSON object")
        return data


def _completion_from_stream(result: StreamResult, request_id: str | None) -> ChatCompletion:
    """Build a ChatCompletion envelope from an assembled stream."""
    choices = []
    for choice in result.choices:
        message: dict[str, Any] = {"role": choice.role, "content": choice.text or None}
        if choice.tool_calls:
            message["tool_calls"] = [tc.to_dict() for tc in choice.tool_calls]
        if choice.refusal is not None:
            message["refusal"] = choice.refusal
        if choice.reasoning is not None:
            message["reasoning"] = choice.reasoning
        choices.append(
            {"index": choice.index, "message": message, "finish_reason": choice.finish_reason}
        )
    return ChatCompletion.model_validate(
        {
            "request_id": result.request_id or request_id,
            "id": result.id,
            "model": result.model,
            "choices": choices,
            "usage": result.usage,
        }
    )
