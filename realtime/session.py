"""One session: carries out the turn policy's decisions as owned tasks.

The pure cores decide (`TurnPolicy` says when to fire, cancel, promote; `Conversation` says
what to send); this module does: it runs each response as a task in the session's TaskGroup,
streams the gateway's deltas to every connection of the session, and sends exactly one
terminal message per response, whatever happens.

Ordering rule that makes "no delta after response.cancelled" hold: every message is published
synchronously to every connection's bounded outbox, and a response's state is checked and
changed in the same synchronous step, so once a terminal message is queued nothing of that
response can be queued after it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gateway_client import GatewayError
from realtime.core import outbound as msg
from realtime.core.config import ConfigError, SessionConfig
from realtime.core.context import Conversation
from realtime.core.inbound import (
    Begin,
    ClientMessage,
    Ignored,
    ProtocolError,
    ResponseCancel,
    ResponseTruncate,
    SessionUpdate,
    SpeechStarted,
    Termination,
    TurnMessage,
)
from realtime.core.turns import (
    Cancel,
    Discard,
    Fire,
    Promote,
    ReplaceText,
    Start,
    StartTimer,
    TurnPolicy,
)
from realtime.limits import Limiter
from realtime.logs import ContextLogger
from realtime.metrics import ServiceMetrics
from realtime.outbox import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, Outbox
from realtime.responses import Response, plain, tool_delta

log = logging.getLogger("realtime.session")

now = time.perf_counter


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


@dataclass(slots=True)
class Deps:
    """What every session shares with the server."""

    gateway: Any  # gateway_client.GatewayClient (typed loosely: tests may pass a subclass)
    limiter: Limiter
    metrics: ServiceMetrics
    default_config: SessionConfig
    participant_queue: int = 4096
    viewer_queue: int = 1024


class Session:
    """A live session: config, policy, conversation, connections, responses."""

    def __init__(self, session_id: str, deps: Deps) -> None:
        self.id = session_id
        self.deps = deps
        self.config = deps.default_config
        self.policy = self._new_policy(self.config)
        self.conversation = Conversation()
        self.participants: list[Outbox] = []
        self.viewers: list[Outbox] = []
        self.responses: dict[str, Response] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.terminated = False
        self.ended = False
        self.log = ContextLogger(log, {"session_id": session_id})
        # Extension points for the audio path (realtime/audio_relay.py, realtime/aai_compat.py):
        # `listeners` hear ("done" | "failed", response, result-or-error) as a response ends;
        # `relay` is the session's upstream speech-to-text relay, opened on the first audio.
        self.listeners: list[Callable[[str, Response, Any], None]] = []
        self.relay: Any = None

    # ---- lifecycle -------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Session]:
        """Own the session's response tasks for the duration of the block."""
        self.deps.metrics.sessions_active.add(1)
        self.deps.metrics.sessions_total.inc()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    yield self
                finally:
                    self.end("client", CLOSE_NORMAL)
        finally:
            self._tg = None
            self.deps.metrics.sessions_active.add(-1)

    def end(self, reason: str, close_code: int) -> None:
        """Cancel what is live (one terminal each) and close every connection."""
        if self.ended:
            return
        self.ended = True
        self.terminated = True
        actions = (
            self.policy.on_shutdown() if reason == "shutdown" else self.policy.on_cancel_request()
        )
        self._apply(actions, now(), reason_override=reason)
        for r in list(self.responses.values()):  # anything the policy no longer tracks
            self._cancel(r, reason)
        if self.relay is not None:
            self.relay.close()
        for box in (*self.participants, *self.viewers):
            box.close(close_code)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` as a task owned by this session (cancelled when the session ends)."""
        assert self._tg is not None, "the session is not running"
        return self._tg.create_task(coro)

    def shutdown(self) -> None:
        self.end("shutdown", CLOSE_GOING_AWAY)

    # ---- connections -----------------------------------------------------------------------

    def attach(self, box: Outbox) -> None:
        history = self.conversation.history() if box.role == "viewer" else None
        box.offer(msg.session_created(self.id, box.role, self.config.to_wire(), history))
        (self.viewers if box.role == "viewer" else self.participants).append(box)
        self.deps.metrics.connections_active.add(1, box.role)

    def detach(self, box: Outbox) -> None:
        group = self.viewers if box.role == "viewer" else self.participants
        if box in group:
            group.remove(box)
            self.deps.metrics.connections_active.add(-1, box.role)

    def publish(self, data: bytes) -> None:
        """Queue one message on every connection; a viewer that cannot take it is dropped."""
        for box in self.participants:
            if not box.offer(data):
                self.log.warning("participant fell %d messages behind; closing it", box.limit)
                box.abort(CLOSE_POLICY, "too slow")
        for box in self.viewers:
            if not box.offer(data):
                self.deps.metrics.viewers_dropped_total.inc()
                box.abort(CLOSE_POLICY, "viewer too slow")

    async def backpressure(self) -> None:
        """Wait while a participant's queue is above its high-water mark."""
        for box in self.participants:
            await box.wait_writable()

    def send_error(self, box: Outbox, code: str, message: str) -> None:
        self.deps.metrics.client_errors_total.inc(code)
        if not box.offer(msg.error(code, message)):
            box.abort(CLOSE_POLICY, "too slow")

    # ---- input -----------------------------------------------------------------------------

    def handle_frame(self, box: Outbox, message: ClientMessage, received_at: float) -> None:
        """Apply one parsed client message. Bad input gets an error; the session goes on."""
        if isinstance(message, TurnMessage):
            if not self.terminated:
                self._apply(self.policy.on_turn(message.event), received_at)
        elif isinstance(message, SpeechStarted):
            if not self.terminated:
                self._apply(self.policy.on_speech_started(), received_at)
        elif isinstance(message, SessionUpdate):
            self._update_config(box, message.patch)
        elif isinstance(message, ResponseCancel):
            self._apply(self.policy.on_cancel_request(), received_at)
        elif isinstance(message, ResponseTruncate):
            self._truncate(box, message)
        elif isinstance(message, Termination):
            self._terminate(received_at)
        elif isinstance(message, Begin | Ignored):
            pass

    def handle_bad_frame(self, box: Outbox, error: ProtocolError) -> None:
        self.send_error(box, error.code, error.message)

    def _update_config(self, box: Outbox, patch: dict[str, Any]) -> None:
        try:
            config = self.config.update(patch)
        except ConfigError as exc:
            self.send_error(box, "invalid_config", str(exc))
            return
        self.config = config
        self._apply(
            self.policy.configure(
                trigger=config.trigger,
                on_new_turn=config.on_new_turn,
                interrupt_min_words=config.interrupt_min_words,
                max_inflight=config.max_inflight,
                format_wait_ms=config.format_wait_ms,
            ),
            now(),
        )
        self.publish(msg.session_updated(self.id, config.to_wire()))

    def _truncate(self, box: Outbox, m: ResponseTruncate) -> None:
        r = self.responses.get(m.response_id)
        if r is not None and not r.finished:
            self.send_error(
                box, "invalid_event", "response.truncate: the response is still streaming"
            )
            return
        try:
            self.conversation.truncate_reply(m.response_id, m.text)
        except (KeyError, ValueError) as exc:
            self.send_error(box, "invalid_event", f"response.truncate: {exc}")
            return
        self.publish(msg.response_truncated(m.response_id, m.text))

    def _terminate(self, received_at: float) -> None:
        """Input ends: responses in flight finish, then connections close with 1000."""
        if self.terminated:
            return
        self._apply(self.policy.on_termination(), received_at)
        self.terminated = True
        assert self._tg is not None
        self._tg.create_task(self._close_when_idle())

    async def _close_when_idle(self) -> None:
        await self._idle.wait()
        for box in (*self.participants, *self.viewers):
            box.close(CLOSE_NORMAL)

    # ---- policy actions --------------------------------------------------------------------

    def _new_policy(self, c: SessionConfig) -> TurnPolicy:
        return TurnPolicy(
            trigger=c.trigger,
            on_new_turn=c.on_new_turn,
            interrupt_min_words=c.interrupt_min_words,
            max_inflight=c.max_inflight,
            format_wait_ms=c.format_wait_ms,
            new_id=lambda: new_id("r_"),
        )

    def _apply(self, actions: list[Any], at: float, reason_override: str | None = None) -> None:
        for a in actions:
            if isinstance(a, Fire):
                self._fire(a, at)
            elif isinstance(a, Start):
                r = self.responses.get(a.response_id)
                if r is not None:
                    r.start.set()
            elif isinstance(a, Cancel):
                r = self.responses.get(a.response_id)
                if r is not None:
                    self._cancel(r, reason_override or a.reason)
            elif isinstance(a, Promote):
                self._promote(a, at)
            elif isinstance(a, Discard):
                self._discard(a.response_id)
            elif isinstance(a, ReplaceText):
                self.conversation.replace_user(a.turn_order, a.text)
            elif isinstance(a, StartTimer):
                assert self._tg is not None
                self._tg.create_task(self._format_timer(a.turn_order, a.delay_ms))

    async def _format_timer(self, turn_order: int, delay_ms: int) -> None:
        await asyncio.sleep(delay_ms / 1000)
        if not self.ended:
            self._apply(self.policy.on_format_timeout(turn_order), now())

    def _fire(self, a: Fire, at: float) -> None:
        r = Response(
            id=a.response_id,
            turn_order=a.turn_order,
            text_in=a.text,
            model=self.config.model,
            speculative=a.speculative,
            fired_at=at,
        )
        self.responses[r.id] = r
        self._idle.clear()
        if not a.queued:
            r.start.set()
        # Build the request now, from the context as it is at the moment the turn fired
        # (the current turn is passed as text, so recording it afterwards changes nothing).
        body = self._request_body(r)
        assert self._tg is not None
        # The request task is scheduled before response.created is queued, so the request
        # goes out before the writer spends a send on the notice (deltas cannot overtake it:
        # both go through the same ordered outbox).
        r.task = self._tg.create_task(self._run(r, body))
        if not a.speculative:
            self._make_visible(r, a.text)
        else:
            self.deps.metrics.speculations_total.inc("started")

    def _make_visible(self, r: Response, text: str) -> None:
        r.visible = True
        self.conversation.add_user(r.turn_order, text)
        self.conversation.start_reply(r.id, r.turn_order)
        self.publish(msg.response_created(r.id, r.turn_order, r.model))

    def _promote(self, a: Promote, at: float) -> None:
        r = self.responses.get(a.response_id)
        if r is None or r.finished:
            return
        r.promoted_at = at
        self.deps.metrics.speculations_total.inc("promoted")
        self._make_visible(r, a.text)
        if r.held:
            held = "".join(r.held)
            r.held.clear()
            self._deliver(r, held)
        if r.outcome is not None:  # it already ended while hidden
            kind, value = r.outcome
            if kind == "done":
                self._done(r, value)
            else:
                self._failed(r, value)

    def _discard(self, response_id: str) -> None:
        r = self.responses.get(response_id)
        if r is None or r.finished:
            return
        self.deps.metrics.speculations_total.inc("discarded")
        r.finished = True
        self._forget(r, notify_policy=False)
        if r.task is not None:
            r.task.cancel()

    def _cancel(self, r: Response, reason: str) -> None:
        if r.finished:
            return
        r.finished = True
        if r.task is not None:
            r.task.cancel()
        if not r.visible:  # a hidden speculation leaves no trace
            self._forget(r, notify_policy=True)
            return
        delivered = "".join(r.delivered)
        self.conversation.finish_reply(r.id, delivered)
        self.publish(msg.response_cancelled(r.id, r.turn_order, reason, delivered))
        self.deps.metrics.responses_total.inc("cancelled", reason)
        self.deps.metrics.cancellations_total.inc(reason)
        self.log.info(
            "response cancelled",
            extra={"response_id": r.id, "turn_order": r.turn_order, "reason": reason},
        )
        self._forget(r, notify_policy=True)

    def _forget(self, r: Response, *, notify_policy: bool) -> None:
        self.responses.pop(r.id, None)
        if notify_policy:
            self._apply(self.policy.on_response_finished(r.id), now())
        if not self.responses:
            self._idle.set()

    # ---- one response ----------------------------------------------------------------------

    def _request_body(self, r: Response) -> dict[str, Any]:
        body: dict[str, Any] = self.config.request_fields()
        body["messages"] = self.conversation.build_messages(
            self.config, r.turn_order, current_text=r.text_in
        )
        body["stream"] = True
        r.prompt_chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
        return body

    async def _run(self, r: Response, body: dict[str, Any]) -> None:
        """Stream one response. Every exit publishes one terminal (unless cancelled from outside)."""
        try:
            await r.start.wait()
            async with self.deps.limiter.slot(r.model):
                r.sent_at = now()
                self.deps.metrics.added_latency_ms.observe((r.sent_at - r.fired_at) * 1000)
                result = await self._stream(r, body)
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            self._end_with(r, "failed", exc)
        except Exception as exc:  # a bug must still end the response with a terminal
            self.log.exception("response task crashed", extra={"response_id": r.id})
            self._end_with(r, "failed", exc)
        else:
            self._end_with(r, "done", result)

    async def _stream(self, r: Response, body: dict[str, Any]) -> Any:
        """Try the model, then the session's client-side fallbacks, before any delta was sent."""
        models = [body["model"], *[f["model"] for f in self.config.fallbacks]]
        last: GatewayError | None = None
        for i, model in enumerate(models):
            attempt = dict(body, model=model)
            if i > 0:
                attempt.pop("fallbacks", None)
            try:
                return await self._stream_once(r, attempt)
            except GatewayError as exc:
                last = exc
                self.deps.metrics.gateway_errors_total.inc(
                    str(getattr(exc, "status", None) or "none")
                )
                if r.delivered or r.held:
                    raise  # never replay a reply the user already got part of
                self.log.warning(
                    "gateway request failed",
                    extra={
                        "response_id": r.id,
                        "model": model,
                        "status": getattr(exc, "status", None),
                    },
                )
        assert last is not None
        raise last

    async def _stream_once(self, r: Response, body: dict[str, Any]) -> Any:
        gw = self.deps.gateway
        # The body is built from a validated config and the context: skip re-validating it.
        async with gw.stream(body, trusted=True) as stream:
            r.request_id = getattr(stream, "request_id", None)
            headers = getattr(stream, "headers", {})
            # The gateway says when a model's window is spent: later requests wait for it.
            self.deps.limiter.gateway_said(
                body["model"],
                headers.get("X-RateLimit-Remaining"),
                headers.get("X-RateLimit-Reset"),
            )
            async for chunk in stream:
                # The hot path reads the decoded dict directly: no wrapper objects per token.
                choices = chunk.raw.get("choices")
                if not choices:
                    continue
                delta = choices[0].get("delta") or {}
                text = delta.get("content")
                if text:
                    if r.visible:
                        self._deliver(r, text)
                        await self.backpressure()
                    else:
                        r.held.append(text)
                tool_calls = delta.get("tool_calls")
                if tool_calls and r.visible:
                    for tc in tool_calls:
                        self.publish(msg.tool_call_delta(r.id, r.turn_order, tool_delta(tc)))
            r.request_id = getattr(stream, "request_id", None) or r.request_id
            return stream.result()

    def _deliver(self, r: Response, text: str) -> None:
        if r.finished:
            return
        if r.first_delta_at is None:
            r.first_delta_at = now()
            self.deps.metrics.ttft_ms.observe(
                (r.first_delta_at - (r.promoted_at or r.fired_at)) * 1000
            )
        r.delivered.append(text)
        self.publish(msg.response_delta(r.id, r.turn_order, text))

    def _end_with(self, r: Response, kind: str, value: Any) -> None:
        if r.finished:
            return
        if not r.visible:  # hidden speculation: keep the outcome until it is promoted or discarded
            r.outcome = (kind, value)
            return
        if kind == "done":
            self._done(r, value)
        else:
            self._failed(r, value)

    def _done(self, r: Response, result: Any) -> None:
        r.finished = True
        text = "".join(r.delivered)
        usage = plain(getattr(result, "usage", None))
        tool_calls = plain(getattr(result, "tool_calls", None)) or None
        self.conversation.finish_reply(r.id, text)
        if (
            isinstance(usage, dict)
            and isinstance(usage.get("prompt_tokens"), int)
            and r.prompt_chars
        ):
            self.conversation.observe_usage(r.prompt_chars, usage["prompt_tokens"])
        self.publish(
            msg.response_done(
                r.id,
                r.turn_order,
                text=text,
                finish_reason=getattr(result, "finish_reason", None),
                usage=usage,
                request_id=r.request_id or getattr(result, "request_id", None),
                timings=r.timings(),
                tool_calls=tool_calls,
                model=getattr(result, "model", None),
            )
        )
        for listener in self.listeners:
            listener("done", r, result)
        self.deps.metrics.responses_total.inc("done", "")
        self.log.info(
            "response done",
            extra={"response_id": r.id, "turn_order": r.turn_order, "request_id": r.request_id},
        )
        self._forget(r, notify_policy=True)

    def _failed(self, r: Response, exc: BaseException) -> None:
        r.finished = True
        delivered = "".join(r.delivered)
        self.conversation.finish_reply(r.id, delivered)
        status = getattr(exc, "status", None)
        if isinstance(exc, GatewayError):
            code = "gateway_timeout" if "Timeout" in type(exc).__name__ else "gateway_error"
            text = str(getattr(exc, "message", None) or exc)
        else:
            code, text = "internal_error", "the service failed to complete this response"
        self.publish(msg.response_failed(r.id, r.turn_order, code, status, text, delivered))
        for listener in self.listeners:
            listener("failed", r, exc)
        self.deps.metrics.responses_total.inc("failed", code)
        self.log.warning(
            "response failed",
            extra={
                "response_id": r.id,
                "turn_order": r.turn_order,
                "status": status,
                "request_id": r.request_id,
            },
        )
        self._forget(r, notify_policy=True)
