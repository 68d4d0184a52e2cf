"""The public client: :class:`GatewayClient`, its :class:`Timeouts` and :data:`REGION_URLS`.

One pooled keep-alive aiohttp session per client; every call goes through one loop of retries
and fallbacks. Everything that decides (SSE framing, chunk assembly, retry policy, error
parsing) lives in the pure modules; one HTTP exchange is :mod:`gateway_client._transport`;
the reading side of a stream (:class:`~gateway_client._stream.ChatStream`, re-exported here)
is :mod:`gateway_client._stream`. The contract of this module:

* **Deadlines by phase** (:class:`Timeouts`): ``connect`` (TCP/TLS, via aiohttp's
  ``sock_connect``), ``first_token`` (from the moment the request headers were written to the
  first chunk -- or, for ``complete()``, to the response headers), ``idle`` (longest gap between
  two reads), ``total`` (the whole call: every attempt, backoff sleep and fallback). Each is an
  ``asyncio.timeout_at`` around our own reads, never aiohttp's read timeout, and each raises its
  own :class:`~gateway_client.errors.GatewayTimeout` subclass.
* **Retries** only before the first chunk reached the caller: ``stream()`` opens the request
  *and* reads the first chunk inside ``__aenter__``; once ``__aenter__`` returned, a failure is
  raised, never replayed. ``fallback_models`` (the call's, else the client's) are tried in
  order, each with its own retries, when the body's model fails before its first chunk; the
  last error is raised when all fail (auth errors, local validation errors and the total
  deadline end the call instead). That loop is :meth:`GatewayClient._call`, the only one.
* **Cancellation**: leaving ``async with gw.stream(...)`` early, or cancelling the task inside
  it, calls ``response.close()`` -- the socket is closed at once, so the gateway sees the
  client leave. ``CancelledError`` always propagates.
* **Errors** are translated at this boundary: no aiohttp exception escapes, and the API key is
  scrubbed from every message and never logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import orjson

from gateway_client._stream import ChatStream, StreamState, completion_from_stream
from gateway_client._transport import (
    MAX_JSON_BODY,
    TRANSPORT_ERRORS,
    Attempt,
    Marks,
    json_body,
    on_headers_sent,
    status_error,
    timeout_error,
    translate,
)
from gateway_client.errors import (
    AuthenticationError,
    ConnectTimeout,
    FirstTokenTimeout,
    GatewayError,
    GatewayTimeout,
    InvalidRequestError,
    ProtocolError,
    RunFailedError,
    TotalTimeout,
    error_for_status,
    parse_error_body,
    scrub,
)
from gateway_client.models import ChatCompletion, ChatRequest, request_dict, validate_request
from gateway_client.repair import repair_completion
from gateway_client.retry import RetryPolicy, retry_delay, server_wait_hint, should_retry

__all__ = ["REGION_URLS", "ChatStream", "GatewayClient", "Timeouts"]

log = logging.getLogger("gateway_client")

REGION_URLS = {
    "us": "https://llm-gateway.assemblyai.com/v1",
    "eu": "https://llm-gateway.eu.assemblyai.com/v1",
}

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
        self.fallback_models = _model_ids(fallback_models)
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
        trace.on_request_headers_sent.append(on_headers_sent)
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

    async def complete(
        self, body: Mapping[str, Any] | ChatRequest, *, fallback_models: Sequence[str] = ()
    ) -> ChatCompletion:
        """Send a non-streamed chat completion and return the parsed envelope.

        ``fallback_models``: models to try in order, each with its own retries, when the
        body's model fails (see :meth:`stream`); the completion's ``model`` says which one
        answered. A body with ``"async": true`` is submitted as a run and awaited with
        :meth:`wait_run`.
        """
        fallbacks = _model_ids(fallback_models)
        request = validate_request(body)
        if request.async_:
            run_id = await self.submit_run(request, fallback_models=fallbacks)
            return await self.wait_run(run_id)
        wire = request_dict(request)
        if wire.get("stream"):
            wire["stream"] = False
        completion = await self._call(wire, self._complete_attempt, fallbacks)
        if request.wants_json_repair():
            repair_completion(completion)
        return completion

    def stream(
        self,
        body: Mapping[str, Any] | ChatRequest,
        *,
        trusted: bool = False,
        fallback_models: Sequence[str] = (),
    ) -> ChatStream:
        """Return a streamed completion; use it as ``async with gw.stream(body) as s``.

        Validation happens here, before any network call. ``trusted=True`` skips it for a
        plain dict the caller built from already-validated parts (it is sent as given): the
        realtime service does this, since validation costs more than the rest of sending.

        ``fallback_models`` (this call's; when empty, the client's): when the body's model
        fails with a :class:`GatewayError` before the first chunk reached the caller --
        opening fails, a non-2xx status, or the stream errors before its first chunk -- and
        its retries are exhausted, the same body is sent with the next model in order (the
        body's own ``fallbacks`` left out). Once ``__aenter__`` returned, errors propagate and
        nothing is replayed. If every model fails, the last error is raised. ``s.model`` is
        the model that served; ``s.failed_attempts`` lists ``(model, error)`` per failed
        attempt, so hold the object to read it after a failure::

            s = gw.stream(body, fallback_models=("gpt-5",))
            async with s as stream: ...
            s.model, s.failed_attempts
        """
        fallbacks = _model_ids(fallback_models)
        if trusted and isinstance(body, Mapping) and "post_processing_steps" not in body:
            return ChatStream(functools.partial(self._open_stream, dict(body), fallbacks))
        request = validate_request(body)
        if request.async_:
            raise InvalidRequestError("invalid request: async: cannot be combined with stream")
        opener = functools.partial(self._open_stream, request, fallbacks)
        return ChatStream(opener, json_repair=request.wants_json_repair())

    async def submit_run(
        self, body: Mapping[str, Any] | ChatRequest, *, fallback_models: Sequence[str] = ()
    ) -> str:
        """Submit ``body`` as an async run (``"async": true``) and return the run id.

        ``fallback_models`` apply to the submission only; a run that fails later is not
        resubmitted.
        """
        fallbacks = _model_ids(fallback_models)
        request = validate_request(body)
        wire = request_dict(request)
        wire["async"] = True
        wire.pop("stream", None)
        data = await self._call(wire, self._json_attempt, fallbacks)
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
        fallback_models: Sequence[str] = (),
        failed: list[tuple[str, GatewayError]] | None = None,
    ) -> T:
        """The one retry-and-fallback loop: the body's model, then each fallback model.

        ``attempt_fn(payload, model, total_deadline, attempt_number)`` performs one HTTP
        exchange and returns only once nothing can be replayed to the caller any more (for a
        stream: its first chunk is queued), so whatever it raises may be retried.

        The models are ``wire["model"]``, then ``fallback_models`` (else the client's), each
        once. A model gets its retries (:func:`~gateway_client.retry.should_retry`); when they
        are spent, or the next wait would cross the total deadline, the next model gets the
        same body with ``model`` replaced and the gateway's own ``fallbacks`` removed (they
        were the primary's). Authentication errors, local validation errors and the total
        deadline end the call at once. Every failed attempt is appended to ``failed`` as
        ``(model, error)``; when all models failed, the last error is raised.
        """
        self._need_session()
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + self.timeouts.total
        primary = str(wire["model"])
        models = list(dict.fromkeys([primary, *(fallback_models or self.fallback_models)]))
        attempts = 0
        last: GatewayError | None = None
        for model in models:
            if model == primary:
                payload = orjson.dumps(wire)
            else:
                fallback = {k: v for k, v in wire.items() if k != "fallbacks"}
                payload = orjson.dumps(fallback | {"model": model})
            retry_no = 0
            while True:
                attempts += 1
                try:
                    return await attempt_fn(payload, model, total_deadline, attempts)
                except GatewayError as exc:
                    exc.attempts = attempts
                    exc.model = exc.model or model
                    last = exc
                    if failed is not None:
                        failed.append((model, exc))
                    if isinstance(exc, AuthenticationError | InvalidRequestError | TotalTimeout):
                        raise
                    if not should_retry(exc, retry_no, self.retry_policy):
                        break
                    delay = retry_delay(retry_no, self.retry_policy, self._rand, exc.retry_after)
                    if loop.time() + delay >= total_deadline:
                        break  # no time to wait for this model; the next one may answer now
                    log.info(
                        "gateway retry",
                        extra={"model": model, "attempt": attempts, "delay_s": round(delay, 3)}
                        | _error_fields(exc),
                    )
                    await asyncio.sleep(delay)
                    retry_no += 1
            if model != models[-1]:
                log.info(
                    "gateway fallback to the next model",
                    extra={"model": model, "next_model": models[models.index(model) + 1]}
                    | _error_fields(last),
                )
        assert last is not None
        raise last

    async def _send(
        self, payload: bytes, model: str, total_deadline: float, attempt_no: int
    ) -> Attempt:
        """POST ``payload``; return the attempt once 2xx headers arrived, else raise."""
        session = self._need_session()
        loop = asyncio.get_running_loop()
        started = loop.time()
        marks = Marks(self.timeouts.first_token, total_deadline)
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
                err: GatewayError = timeout_error(phase, None)
            else:  # aiohttp's own sock_connect timeout
                err = ConnectTimeout("connect timed out")
            self._log_attempt(None, model, None, started, attempt_no, err)
            raise err from None
        except TRANSPORT_ERRORS as exc:
            err = translate(exc, self._secrets)
            self._log_attempt(None, model, None, started, attempt_no, err)
            raise err from None
        attempt = Attempt(
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
                raise await status_error(attempt, self._secrets)
        except BaseException as exc:
            response.close()
            self._log_attempt(
                attempt.request_id(), model, response.status, started, attempt_no, exc
            )
            raise
        return attempt

    def _log_ok(self, attempt: Attempt, request_id: str | None) -> None:
        self._log_attempt(
            request_id or attempt.request_id(),
            attempt.model,
            attempt.response.status,
            attempt.started,
            attempt.attempt_no,
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
        fields: dict[str, object] = {
            "request_id": request_id,
            "model": model,
            "url": self.base_url,
            "region": self.region,
            "status": status,
            "latency_ms": round(latency_ms),
            "attempt": attempt_no,
            "outcome": "ok" if error is None else type(error).__name__,
        }
        if error is None:
            log.info("gateway request", extra=fields)
        elif isinstance(error, asyncio.CancelledError):
            log.info("gateway request cancelled", extra=fields)
        else:
            log.info("gateway request attempt failed", extra=fields | _error_fields(error))

    async def _json_attempt(
        self, payload: bytes, model: str, total_deadline: float, attempt_no: int
    ) -> dict[str, Any]:
        attempt = await self._send(payload, model, total_deadline, attempt_no)
        try:
            body = await attempt.read_all(MAX_JSON_BODY, self._secrets)
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
                state = StreamState(attempt, self._secrets)
                while not state.done:
                    await state.fill()
                    state.queue.clear()
                if state.error is not None:
                    raise state.error
                streamed = completion_from_stream(state.assembler.result(), attempt.request_id())
                attempt.response.close()
                self._log_ok(attempt, streamed.request_id)
                return streamed
            body = await attempt.read_all(MAX_JSON_BODY, self._secrets)
        except BaseException:
            attempt.response.close()
            raise
        attempt.response.release()
        data = json_body(body, self._secrets, attempt.request_id())
        completion = ChatCompletion.model_validate(data)
        if not completion.request_id:
            completion.request_id = attempt.request_id()
        self._log_ok(attempt, completion.request_id)
        return completion

    async def _open_stream(
        self,
        body: dict[str, Any] | ChatRequest,
        fallback_models: Sequence[str],
        stream: ChatStream,
    ) -> StreamState:
        """Open the stream and read up to its first chunk (retries and fallbacks until then).

        ``body`` is a validated request, or a trusted dict sent as given (see :meth:`stream`).
        """
        wire = body if isinstance(body, dict) else request_dict(body)
        wire["stream"] = True

        async def attempt_fn(
            payload: bytes, model: str, total_deadline: float, attempt_no: int
        ) -> StreamState:
            stream.attempts = attempt_no
            attempt = await self._send(payload, model, total_deadline, attempt_no)
            state = StreamState(attempt, self._secrets)
            try:
                content_type = attempt.response.headers.get("Content-Type", "")
                if content_type.startswith("application/json"):
                    state.load_json(await attempt.read_all(MAX_JSON_BODY, self._secrets))
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

        return await self._call(wire, attempt_fn, fallback_models, stream.failed_attempts)

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
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, self._secrets) from None
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


def _error_fields(error: BaseException | None) -> dict[str, object]:
    """Log fields for a failure, named as the service names them: ``error_type``, ``reason``
    (the message, already scrubbed of secrets), ``status`` and ``request_id`` when known."""
    if error is None:
        return {}
    fields: dict[str, object] = {"error_type": type(error).__name__}
    if isinstance(error, GatewayError):
        fields["reason"] = error.message[:300]
        if error.status is not None:
            fields["status"] = error.status
        if error.request_id:
            fields["request_id"] = error.request_id
    else:
        fields["reason"] = str(error)[:300]
    return fields


def _model_ids(models: Sequence[str]) -> tuple[str, ...]:
    """``fallback_models`` as a tuple; a bare string is refused (it would be read per letter)."""
    if isinstance(models, str):
        raise TypeError("fallback_models must be a sequence of model ids, not one string")
    return tuple(models)
