"""A faithful local stand-in for AssemblyAI's LLM Gateway, on aiohttp.web.

Serves ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models`` and
``GET /v1/chat_completion_runs/{uid}`` on loopback, with the gateway's validation, error
bodies, auth, rate limits, server-side retry and fallbacks, ``transcript_id`` substitution,
``json-repair`` post-processing and async runs, plus fault injection and observation hooks
for tests. See docs/gateway_emulator.md for the contract and each choice made where the
public docs are silent.

Run it: ``python -m gateway_client.emulator --port 8081``. In-process::

    async with GatewayEmulator(port=0) as emu:
        ...  # point a client at emu.base_url; inspect emu.requests; push emu.faults
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway_client.emulator.faults import (
    Failure,
    Fault,
    FaultQueue,
    RateLimiter,
    RecordedRequest,
    error_body,
    fault_failure,
    invalid_request,
    parse_fault_header,
)
from gateway_client.emulator.models import MODELS, ModelInfo, models_payload
from gateway_client.emulator.reply import (
    Reply,
    completion_envelope,
    make_reply,
    messages_of,
    repair_reply,
    stream_chunks,
    substitute_transcript,
)
from gateway_client.emulator.validate import (
    MAX_FALLBACK_DEPTH,
    field_errors,
    merge_fallback,
    unsupported_model,
)

__all__ = ["Fault", "GatewayEmulator", "RecordedRequest"]

log = logging.getLogger("gateway_client.emulator")

AUTH_ERROR = "Authentication error, API token missing/invalid"
MAX_RECORDED = 10_000
MAX_RUNS = 10_000
_DONE = b"data: [DONE]\n\n"
_STOP_GRACE_S = 1.0  # aiohttp's wait for handlers at stop; ours are cancelled before that


@dataclass(slots=True)
class _Served:
    """The attempt that produced an answer: its model, effective body and fault (if any)."""

    info: ModelInfo
    body: dict[str, Any]
    fault: Fault | None


@dataclass(slots=True)
class _Run:
    id: str
    status: str = "pending"
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GatewayEmulator:
    """The emulated gateway. ``start()``/``stop()`` or ``async with``; one event loop.

    Attributes read per request, so tests may change them while it runs: ``token_delay``,
    ``first_token_delay``, ``reply_words``, ``stream_only_openai``, ``server_retry_delay``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] = (),
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        rate_limit: int | None = None,
        transcripts: Mapping[str, str] | None = None,
        reply_words: int | None = None,
        stream_only_openai: bool = False,
        server_retry_delay: float = 0.5,
        max_recorded: int = MAX_RECORDED,
    ) -> None:
        self.host = host
        self.port = port
        self._api_keys = tuple(k.encode() for k in api_keys)
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.reply_words = reply_words
        self.stream_only_openai = stream_only_openai
        self.server_retry_delay = server_retry_delay
        self.transcripts: dict[str, str] = dict(transcripts or {})
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self._queue = FaultQueue(self.faults)
        self._limiter = RateLimiter(rate_limit)
        self._max_recorded = max_recorded
        self._gone: deque[RecordedRequest] = deque(maxlen=1000)
        self._gone_event = asyncio.Event()
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # run jobs and in-flight handlers
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._open_requests = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def rate_limit(self) -> int | None:
        return self._limiter.limit

    @property
    def open_requests(self) -> int:
        """Chat-completion requests whose handler is still running (0 when all are answered).

        Counted from the moment a ``POST /v1/chat/completions`` handler starts until its
        ``finally`` ran: a finished answer, a client that left mid-stream (the handler is
        cancelled) and ``stop()`` all bring it back down. Tests assert it returns to 0 to
        prove every upstream stream was closed.
        """
        return self._open_requests

    @property
    def url(self) -> str:
        """``http://host:port``: the assemblyai SDK's ``llm_gateway_base_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: the OpenAI SDK's and GatewayClient's ``base_url``."""
        return f"{self.url}/v1"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; ``self.port`` then holds it)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/chat_completion_runs/{uid}", self._run_status)
        # handler_cancellation: a client that leaves cancels its handler, which is how a
        # silent (hung or sleeping) stream notices the disconnect at once.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_STOP_GRACE_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self._stopping = False
        self.port = runner.addresses[0][1]
        log.info("LLM Gateway emulator listening on %s", self.base_url)

    async def stop(self) -> None:
        """Cancel in-flight handlers and async runs, wait for them, close the listener."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GatewayEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_disconnect(self, timeout: float = 2.0) -> RecordedRequest:
        """The next request whose client left before its answer was complete.

        Disconnects that happened before the call are returned first, in order; raises
        TimeoutError when none arrives within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not self._gone:
                self._gone_event.clear()
                await self._gone_event.wait()
        return self._gone.popleft()

    async def wait_idle(self, timeout: float = 2.0) -> None:
        """Return once ``open_requests`` is 0; raise TimeoutError if it is not within ``timeout``.

        A client that closed its connection is noticed a loop turn or more later (the handler
        is cancelled when the socket reports the loss), so assert ``open_requests == 0``
        after this, not straight after the client left.
        """
        async with asyncio.timeout(timeout):
            while self._open_requests:
                await self._idle.wait()

    # ------------------------------------------------------------------ handlers

    async def _models(self, request: web.Request) -> web.Response:
        # The SDK documents this endpoint as needing no auth; keys are not checked here.
        log.info("GET /v1/models status=200")
        return _json(models_payload(), 200, {"x-request-id": str(uuid.uuid4())})

    async def _run_status(self, request: web.Request) -> web.Response:
        rid = str(uuid.uuid4())
        run = self._runs.get(request.match_info["uid"])
        status = 401 if not self._authorized(request) else 404 if run is None else 200
        log.info("GET /v1/chat_completion_runs/%s status=%d", request.match_info["uid"], status)
        if status == 401:
            return _auth_error(rid)
        if run is None:
            body = error_body(404, "chat completion run not found", [], rid)
            return _json(body, 404, {"x-request-id": rid})
        data: dict[str, Any] = {"id": run.id, "status": run.status, "response": run.response}
        if run.error is not None:
            data["error"] = run.error
        return _json(data, 200, {"x-request-id": rid})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        # Owned while it runs: stop() cancels and awaits it; open_requests counts it.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._open_requests += 1
        self._idle.clear()
        try:
            return await self._chat_handler(request)
        finally:
            self._open_requests -= 1
            if not self._open_requests:
                self._idle.set()
            if task is not None:
                self._tasks.discard(task)

    async def _chat_handler(self, request: web.Request) -> web.StreamResponse:
        rid = str(uuid.uuid4())
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        rec = RecordedRequest(
            request_id=rid,
            body=body if isinstance(body, dict) else {},
            model=str(body.get("model", "")) if isinstance(body, dict) else "",
            arrived_at=time.perf_counter(),
            stream=isinstance(body, dict) and body.get("stream") is True,
        )
        self._record(rec)
        try:
            return await self._answer(request, rec, body)
        except asyncio.CancelledError:
            if not self._stopping:
                self._mark_gone(rec)
            raise
        except ConnectionError:  # the client closed the socket while we wrote
            self._mark_gone(rec)
            return web.Response(status=499)  # never reaches anyone; ends the handler
        finally:
            log.info(
                "POST /v1/chat/completions request_id=%s model=%s stream=%s status=%s "
                "answered_by=%s fault=%s chunks=%d completed=%s disconnected=%s",
                rid,
                rec.model,
                rec.stream,
                rec.status,
                rec.answered_by,
                rec.fault,
                rec.chunks_sent,
                rec.completed,
                rec.disconnected,
            )

    async def _answer(
        self, request: web.Request, rec: RecordedRequest, body: Any
    ) -> web.StreamResponse:
        rid = rec.request_id
        base = {"x-request-id": rid}
        if not self._authorized(request):
            return await self._send_error(request, rec, Failure(401, AUTH_ERROR, [], base))
        if not isinstance(body, dict):
            problem = Failure(400, "invalid request body", ["body must be a JSON object"], base)
            return await self._send_error(request, rec, problem)
        errors = field_errors(body)
        unknown = unsupported_model(body.get("model"))
        if errors or (unknown and not body.get("fallbacks")):
            problem = invalid_request(errors, unknown, base)
            return await self._send_error(request, rec, problem)
        try:
            header_fault = _header_fault(request)
        except ValueError as exc:
            return await self._send_error(request, rec, Failure(400, str(exc), [str(exc)], base))
        transcript_id = body.get("transcript_id")
        if transcript_id is not None and transcript_id not in self.transcripts:
            problem = Failure(
                404, "transcript not found", [f"transcript {transcript_id} not found"], base
            )
            return await self._send_error(request, rec, problem)
        limit = self._limiter.check(rec.model, time.monotonic())
        headers = base | limit.headers
        if not limit.allowed:
            problem = Failure(429, f"rate limit exceeded for model {rec.model}", [], headers)
            return await self._send_error(request, rec, problem)
        if body.get("async") is True:
            return await self._submit_run(request, rec, body, headers)
        outcome = await self._attempts(body, header_fault)
        if isinstance(outcome, Failure):
            outcome.headers = headers | outcome.headers
            return await self._send_error(request, rec, outcome)
        rec.answered_by = outcome.info.id
        fault = outcome.fault
        rec.fault = fault.kind if fault else None
        if fault is not None and fault.kind in ("status", "rate_limit"):
            return await self._send_error(request, rec, fault_failure(fault, headers, rec.model))
        reply = self._reply(request, outcome)
        if reply is None:
            problem = Failure(
                500, "json-repair failed: the model output is not repairable JSON", [], headers
            )
            return await self._send_error(request, rec, problem)
        streams = not self.stream_only_openai or outcome.info.is_openai
        if rec.stream and streams:
            return await self._stream(request, rec, outcome, reply, headers)
        return await self._complete(request, rec, body, outcome, reply, headers)

    # ------------------------------------------------------------------ the model

    async def _attempts(
        self, body: dict[str, Any], header_fault: Fault | None
    ) -> _Served | Failure:
        """Primary model (with one server-side retry on 5xx), then fallbacks up to depth."""
        config = body.get("fallback_config") or {}
        retry = config.get("retry", True) is not False
        fallbacks = body.get("fallbacks") or []
        depth = config.get("depth")
        depth = min(len(fallbacks), MAX_FALLBACK_DEPTH if depth is None else depth)
        plan = [body] + [merge_fallback(body, item) for item in fallbacks[:depth]]
        failure: Failure | None = None
        for index, attempt in enumerate(plan):
            problems = [] if index == 0 else field_errors(attempt)
            unknown = unsupported_model(attempt["model"])
            if problems or unknown:
                failure = invalid_request(problems, unknown, {})
                continue
            tries = 2 if retry and index == 0 else 1
            for t in range(tries):
                first = index == 0 and t == 0
                if first and header_fault is not None:
                    fault: Fault | None = header_fault
                else:
                    fault = self._queue.take(attempt["model"], any_model=first)
                if fault is None or not fault.provider_failure:
                    return _Served(MODELS[attempt["model"]], attempt, fault)
                failure = fault_failure(fault, {}, attempt["model"])
                if fault.status < 500 or t + 1 == tries:
                    break
                await asyncio.sleep(self.server_retry_delay)
        assert failure is not None  # the plan is never empty
        return failure

    def _reply(self, request: web.Request, served: _Served) -> Reply | None:
        """The model's reply for ``served``; None when json-repair was asked and failed."""
        body = served.body
        messages = messages_of(body)
        transcript_id = body.get("transcript_id")
        if isinstance(transcript_id, str) and transcript_id in self.transcripts:
            messages = substitute_transcript(messages, self.transcripts[transcript_id])
        words = _header_number(request, "X-Emulator-Reply-Words", int)
        reply = make_reply(
            body,
            messages,
            served.info,
            reply_words=self.reply_words if words is None else words,
            broken_json=request.headers.get("X-Emulator-Broken-Json") or None,
        )
        if any(s.get("type") == "json-repair" for s in body.get("post_processing_steps") or []):
            return repair_reply(reply)
        return reply

    # ------------------------------------------------------------------ writers

    async def _complete(
        self,
        request: web.Request,
        rec: RecordedRequest,
        body: dict[str, Any],
        served: _Served,
        reply: Reply,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        fault = served.fault
        if fault is not None and fault.kind in ("hang", "hang_before_headers"):
            await _forever()
        first = self._first_delay(request)
        if fault is not None and fault.kind in ("slow_first_token", "gap"):
            first += fault.delay
        await asyncio.sleep(first)
        if fault is not None and fault.kind == "drop":
            return _abort(request, rec)
        if fault is not None and fault.kind == "error_chunk":
            failure = Failure(500, fault.message or "upstream model error", [], headers)
            return await self._send_error(request, rec, failure)
        if fault is not None and fault.kind == "malformed":
            resp = web.Response(
                body=b"{not json", status=200, headers=headers, content_type="application/json"
            )
            return await self._send(request, rec, resp)
        echo = {k: v for k, v in body.items() if k not in ("messages", "prompt")}
        envelope = completion_envelope(
            reply,
            request_id=rec.request_id,
            completion_id=_completion_id(rec.request_id),
            model=served.info.id,
            created=int(time.time()),
            request_echo=echo,
            response_time_ns=int((time.perf_counter() - rec.arrived_at) * 1e9),
        )
        return await self._send(request, rec, _json(envelope, 200, headers))

    async def _stream(
        self,
        request: web.Request,
        rec: RecordedRequest,
        served: _Served,
        reply: Reply,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        fault = served.fault
        if fault is not None and fault.kind == "hang_before_headers":
            await _forever()
        resp = web.StreamResponse(status=200, headers=headers | {"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        rec.status = 200
        await resp.prepare(request)
        if fault is not None and fault.kind == "hang":
            await _forever()
        first = self._first_delay(request)
        if fault is not None and fault.kind == "slow_first_token":
            first += fault.delay
        await asyncio.sleep(first)
        token_delay = _header_number(request, "X-Emulator-Token-Delay", float)
        delay = self.token_delay if token_delay is None else token_delay
        chunks = stream_chunks(
            reply,
            request_id=rec.request_id,
            model=served.info.id,
            completion_id=_completion_id(rec.request_id),
            created=int(time.time()),
        )
        paced = len(chunks) - 2  # finish and usage chunks follow the last word at once
        trigger = None if fault is None else min(fault.after_chunks, len(chunks))
        for i in range(len(chunks) + 1):
            if i == trigger and fault is not None:
                if fault.kind == "drop":
                    return _abort(request, rec)
                if fault.kind == "malformed":
                    await self._write(resp, rec, b"data: {not json\n\n")
                    break
                if fault.kind == "error_chunk":
                    error = {
                        "error": {"message": fault.message or "upstream model error", "code": 500}
                    }
                    await self._write(resp, rec, b"data: " + orjson.dumps(error) + b"\n\n")
                    await resp.write_eof()
                    rec.completed = True
                    return resp
                if fault.kind == "gap":
                    await asyncio.sleep(fault.delay)
            if i == len(chunks):
                break
            if 0 < i < paced and delay > 0:
                await asyncio.sleep(delay)
            await self._write(resp, rec, b"data: " + orjson.dumps(chunks[i]) + b"\n\n")
        await resp.write(_DONE)
        await resp.write_eof()
        rec.completed = True
        return resp

    async def _write(self, resp: web.StreamResponse, rec: RecordedRequest, data: bytes) -> None:
        await resp.write(data)
        rec.chunks_sent += 1
        rec.chunk_times.append(time.perf_counter())

    async def _send(
        self, request: web.Request, rec: RecordedRequest, resp: web.Response
    ) -> web.Response:
        """Write a whole answer ourselves, so ``completed`` means the body really went out."""
        rec.status = resp.status
        await resp.prepare(request)
        await resp.write_eof()
        rec.completed = True
        return resp

    async def _send_error(
        self, request: web.Request, rec: RecordedRequest, failure: Failure
    ) -> web.Response:
        if failure.status in (401, 403):
            data: dict[str, Any] = {
                "error": failure.message,
                "status": "error",
                "request_id": rec.request_id,
            }
        else:
            data = error_body(failure.status, failure.message, failure.errors, rec.request_id)
        headers = {"x-request-id": rec.request_id} | failure.headers
        return await self._send(request, rec, _json(data, failure.status, headers))

    # ------------------------------------------------------------------ async runs

    async def _submit_run(
        self,
        request: web.Request,
        rec: RecordedRequest,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> web.Response:
        run = _Run(id=str(uuid.uuid4()))
        self._runs[run.id] = run
        while len(self._runs) > MAX_RUNS:
            del self._runs[next(iter(self._runs))]
        header_fault = _header_fault(request)
        words = _header_number(request, "X-Emulator-Reply-Words", int)
        task = asyncio.get_running_loop().create_task(
            self._run_job(run, rec.request_id, body, header_fault, words)
        )
        # Owned: stop() cancels and awaits every task in this set.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        data = {
            "id": run.id,
            "status": run.status,
            "request_id": rec.request_id,
            "created": int(time.time()),
        }
        return await self._send(request, rec, _json(data, 200, headers))

    async def _run_job(
        self,
        run: _Run,
        request_id: str,
        body: dict[str, Any],
        header_fault: Fault | None,
        words: int | None,
    ) -> None:
        outcome = await self._attempts(body, header_fault)
        if isinstance(outcome, _Served) and outcome.fault is not None:
            if outcome.fault.kind in ("status", "rate_limit"):
                outcome = fault_failure(outcome.fault, {}, body["model"])
        if isinstance(outcome, Failure):
            run.status = "failed"
            run.error = error_body(outcome.status, outcome.message, outcome.errors, request_id)
            return
        await asyncio.sleep(self.first_token_delay)
        messages = messages_of(outcome.body)
        tid = body.get("transcript_id")
        if isinstance(tid, str) and tid in self.transcripts:
            messages = substitute_transcript(messages, self.transcripts[tid])
        reply = make_reply(
            outcome.body,
            messages,
            outcome.info,
            reply_words=self.reply_words if words is None else words,
        )
        echo = {k: v for k, v in body.items() if k not in ("messages", "prompt")}
        run.response = completion_envelope(
            reply,
            request_id=request_id,
            completion_id=_completion_id(request_id),
            model=outcome.info.id,
            created=int(time.time()),
            request_echo=echo,
            response_time_ns=0,
        )
        run.status = "completed"

    # ------------------------------------------------------------------ bookkeeping

    def _authorized(self, request: web.Request) -> bool:
        if not self._api_keys:
            return True
        given = request.headers.get("Authorization", "").strip()
        if given[:7].lower() == "bearer ":
            given = given[7:].strip()
        token = given.encode()
        return any(hmac.compare_digest(token, key) for key in self._api_keys)

    def _first_delay(self, request: web.Request) -> float:
        value = _header_number(request, "X-Emulator-First-Token-Delay", float)
        return self.first_token_delay if value is None else value

    def _record(self, rec: RecordedRequest) -> None:
        self.requests.append(rec)
        if len(self.requests) > self._max_recorded:
            del self.requests[: len(self.requests) - self._max_recorded]

    def _mark_gone(self, rec: RecordedRequest) -> None:
        if rec.disconnected or rec.completed:
            return
        rec.disconnected = True
        rec.disconnected_at = time.perf_counter()
        self._gone.append(rec)
        self._gone_event.set()


# ---------------------------------------------------------------------- helpers


def _json(data: Any, status: int, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        headers=dict(headers),
        content_type="application/json",
    )


def _auth_error(request_id: str) -> web.Response:
    data = {"error": AUTH_ERROR, "status": "error", "request_id": request_id}
    return _json(data, 401, {"x-request-id": request_id})


def _completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.replace("-", "")[:24]


def _header_fault(request: web.Request) -> Fault | None:
    value = request.headers.get("X-Emulator-Fault")
    return parse_fault_header(value) if value else None


def _header_number(request: web.Request, name: str, kind: type[int] | type[float]) -> Any:
    value = request.headers.get(name)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        return None


def _abort(request: web.Request, rec: RecordedRequest) -> web.Response:
    """Cut the TCP connection mid-answer (the ``drop`` fault)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)  # nothing is written: the transport is gone


async def _forever() -> None:
    """Never answer; the wait ends when the client leaves or the emulator stops."""
    await asyncio.get_running_loop().create_future()

