"""One session's adapter: carries out the core's outputs as owned tasks, timers and sends.

`realtime.core.session.SessionCore` decides; this module does. It owns the session's
TaskGroup (one task per upstream stream, and the speech-to-text relay when audio arrives),
its format timers (loop handles, cancelled when the core says so or when the session ends)
and the registry of its connections. `run(outputs)` is the one place outputs are carried out.

Lifetime: `running()` is entered by the handler of the connection that created the session
and left when that handler ends; leaving ends the session (every live reply gets one terminal
message, every connection is closed) and awaits every task the session started.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway_client import GatewayError, GatewayTimeout
from realtime.connection import CLOSE_POLICY, Connection
from realtime.core.config import SessionConfig
from realtime.core.inbound import ClientMessage, ResponseCancel, Termination
from realtime.core.outbound import Outbound
from realtime.core.replies import Completion, Failure
from realtime.core.session import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CancelTimer,
    CloseAll,
    Log,
    Output,
    Publish,
    SendTo,
    SessionCore,
    StartStream,
    StartTimer,
    StopStream,
)
from realtime.limits import Limiter
from realtime.logs import ContextLogger
from realtime.metrics import ServiceMetrics
from realtime.responses import plain, tool_delta

log = logging.getLogger("realtime.session")

now = time.perf_counter

RELAY_CONN = 0  # the connection id of events that speech-to-text produced
REPLAY_LOG = 4096  # messages a session keeps for participants that resume (PROTOCOL.md)
_NO_REPLAY: deque[tuple[int, bytes]] = deque(maxlen=0)  # shared stand-in, never appended to


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Relay(Protocol):
    """A session's upstream speech-to-text connection (realtime.relay.AudioRelay)."""

    async def feed(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Deps:
    """What every session shares with the server."""

    gateway: Any  # gateway_client.GatewayClient (typed loosely: tests may pass a subclass)
    limiter: Limiter
    metrics: ServiceMetrics
    default_config: SessionConfig
    participant_queue: int = 4096
    viewer_queue: int = 1024
    model_prefixes: tuple[str, ...] = ()  # empty: any model (see ServerSettings)


class Session:
    """A live session: its core, its connections, its upstream streams and timers."""

    def __init__(self, session_id: str, deps: Deps, config: SessionConfig | None = None) -> None:
        self.id = session_id
        self.deps = deps
        self.core = SessionCore(
            session_id,
            config or deps.default_config,
            new_id=new_id,
            metrics=deps.metrics,
            model_prefixes=deps.model_prefixes,
        )
        self.connections: dict[int, Connection] = {}
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.relay: Relay | None = None
        # Resuming (PROTOCOL.md "Resuming a session"): every message gets the next `seq` and
        # is kept in a bounded replay log; the token lets a dropped participant back in.
        self.seq = 0
        self.replay: deque[tuple[int, bytes]] = _NO_REPLAY  # made on the first message
        self.resume_token = secrets.token_urlsafe(24)
        # Done when the session is to end. A future, not an Event: one per session, smaller.
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._detached: asyncio.TimerHandle | None = None
        self._detached_at = 0  # the seq when its last participant left
        # False: speech-to-text only (a /v3/ws client that asked for no LLM replies); turns
        # then fire nothing and only the end of input reaches the core.
        self.llm = True
        self.log = ContextLogger(log, {"session_id": session_id})

    @property
    def config(self) -> SessionConfig:
        return self.core.config

    @property
    def accepting(self) -> bool:
        return self.core.accepting and not self._finished.done()

    @property
    def running_now(self) -> bool:
        """Whether its TaskGroup runs (it does one turn of the loop after `Server.start_session`)."""
        return self._tg is not None

    def finish(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    @property
    def ended(self) -> bool:
        return self.core.ended

    # ---- lifecycle --------------------------------------------------------------------

    async def live(self) -> None:
        """The session's own task (owned by the server): runs until the session is to end
        (its input ended and drained, its last participant gone past the resume window, or
        shutdown), then ends it and awaits everything it started."""
        async with self.running():
            await self._finished

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Session]:
        """Own the session's tasks for the duration of the block; leaving ends the session."""
        metrics = self.deps.metrics
        metrics.sessions_active.add(1)
        metrics.sessions_total.inc()
        started = time.monotonic()
        self.log.info("session opened", extra={"model": self.config.model})
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    yield self
                finally:
                    self.end("client", CLOSE_NORMAL)
        finally:
            self._tg = None
            self.finish()
            if self._detached is not None:
                self._detached.cancel()
                self._detached = None
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            metrics.sessions_active.add(-1)
            core = self.core
            self.log.info(
                "session closed",
                extra={
                    "duration_s": round(time.monotonic() - started, 3),
                    "turns": core.turns_fired,
                    "replies": dict(core.outcomes),
                    "close_reason": core.end_reason or "client",
                },
            )

    def end(self, reason: str, close_code: int) -> None:
        """End the session: one terminal per live reply, every connection closed."""
        self.run(self.core.end(reason, close_code, now()))
        if self.relay is not None:
            self.relay.close()
        self.finish()

    def shutdown(self) -> None:
        self.end("shutdown", CLOSE_GOING_AWAY)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run `coro` as a task owned by this session (awaited when the session ends)."""
        assert self._tg is not None, "the session is not running"
        return self._tg.create_task(coro)

    # ---- connections ------------------------------------------------------------------

    def attach(self, conn: Connection, *, last_seq: int | None = None) -> bool:
        """Add a connection: `session.created`, or with `last_seq` `session.resumed` and
        every kept message after it, in the same step, so nothing is lost or sent twice.
        False if the session is over."""
        if not self.accepting:
            return False
        if last_seq is None:
            token = self.resume_token if conn.role == "participant" else None
            self.connections[conn.id] = conn
            self.run(self.core.join(conn.id, conn.role, token))
        else:
            resumed = self.core.resumed(last_seq)
            conn.offer(resumed, resumed.encode(self.seq))
            for seq, data in self.replay:
                if seq > last_seq:
                    conn.offer_bytes(data)
            self.connections[conn.id] = conn
        self.deps.metrics.connections_active.add(1, conn.role)
        if conn.role == "participant" and self._detached is not None:
            self._detached.cancel()
            self._detached = None
            self.log.info("session resumed", extra={"last_seq": last_seq})
        return True

    def can_resume_from(self, last_seq: int) -> bool:
        """Whether every message after `last_seq` is still in the replay log."""
        if last_seq > self.seq:
            return False
        if last_seq == self.seq:
            return True
        return bool(self.replay) and self.replay[0][0] <= last_seq + 1

    def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        self.deps.metrics.connections_active.add(-1, conn.role)
        if conn.role == "participant" and not self.participants() and not self._finished.done():
            self._last_participant_left()

    def _last_participant_left(self) -> None:
        """Without Termination the session waits, detached, for a participant to resume it;
        replies in flight keep streaming into the replay log. Window 0: it ends now."""
        window_ms = self.config.resume_window_ms
        if window_ms <= 0 or self.core.closing:
            self.end("client", CLOSE_NORMAL)
            return
        self._detached_at = self.seq
        loop = asyncio.get_running_loop()
        self._detached = loop.call_later(window_ms / 1000, self._window_expired)
        self.log.info("session detached", extra={"resume_window_ms": window_ms})

    def _window_expired(self) -> None:
        self._detached = None
        if not self.participants():
            self.log.info("resume window expired")
            self.end("client", CLOSE_NORMAL)

    def participants(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.role == "participant"]

    async def backpressure(self) -> None:
        """Wait while a participant's queue is above its high-water mark. Bounded by the
        write deadline: a participant that stops reading is aborted, which ends the wait."""
        for conn in self.connections.values():
            if conn.role == "participant" and not conn.writable:
                await conn.wait_writable()
                return

    # ---- input ------------------------------------------------------------------------

    def handle(self, conn: Connection, message: ClientMessage, received_at: float) -> None:
        """Apply one parsed client message. A failure inside becomes `internal_error` to
        that client; the session goes on."""
        try:
            outputs = self.core.on_message(conn.id, message, received_at)
        except Exception:
            self.log.exception("handling a client message failed")
            self.deps.metrics.internal_errors_total.inc()
            outputs = self.core.on_bad_message(
                conn.id, "internal_error", "the server failed to handle this message"
            )
        self.run(outputs)

    def refuse(self, conn: Connection, code: str, message: str) -> None:
        self.run(self.core.on_bad_message(conn.id, code, message))

    def relayed(self, message: Outbound, parsed: ClientMessage | None) -> None:
        """A speech-to-text message from upstream: clients see it verbatim, then it drives
        the session exactly as a client-sent event does."""
        self._publish(message)
        if parsed is not None and (self.llm or isinstance(parsed, Termination)):
            self.run(self.core.on_message(RELAY_CONN, parsed, now()))

    def stt_failed(self, status: int | str | None, message: str) -> None:
        self.log.warning("upstream speech-to-text failed", extra={"status": status})
        self.run(self.core.on_stt_failed(status, message, now()))

    # ---- carrying out the core's outputs ----------------------------------------------

    def run(self, outputs: list[Output]) -> None:
        for o in outputs:
            if type(o) is Publish:
                self._publish(o.message)
            elif isinstance(o, SendTo):
                self._send_to(o)
            elif isinstance(o, StartStream):
                if self._tg is not None:
                    self._streams[o.response_id] = self._tg.create_task(self._stream(o))
            elif isinstance(o, StopStream):
                task = self._streams.pop(o.response_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(o, StartTimer):
                loop = asyncio.get_running_loop()
                old = self._timers.pop(o.turn_order, None)
                if old is not None:
                    old.cancel()
                self._timers[o.turn_order] = loop.call_later(
                    o.delay_ms / 1000, self._timer_fired, o.turn_order
                )
            elif isinstance(o, CancelTimer):
                handle = self._timers.pop(o.key, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(o, CloseAll):
                for conn in list(self.connections.values()):
                    conn.close(o.code, o.reason)
                self.finish()
            elif isinstance(o, Log):
                self.log.log(o.level, o.message, extra=o.fields)

    def _next_seq(self, data_of: Outbound) -> tuple[int, bytes]:
        self.seq += 1
        data = data_of.encode(self.seq)
        if self.replay is _NO_REPLAY:
            self.replay = deque(maxlen=REPLAY_LOG)
        self.replay.append((self.seq, data))
        if self._detached is not None and self.seq - self._detached_at >= REPLAY_LOG - 16:
            # Nobody reads while detached: a reply that would push what the resuming
            # participant needs out of the log is cancelled (reason client).
            self._detached_at = self.seq
            self.run(self.core.on_message(RELAY_CONN, ResponseCancel(None), now()))
        return self.seq, data

    def _send_to(self, o: SendTo) -> None:
        conn = self.connections.get(o.conn)
        if o.message.type == "session.created":  # carries the current seq, takes none
            data = o.message.encode(self.seq)
        else:
            _, data = self._next_seq(o.message)
        if conn is not None and not conn.offer(o.message, data):
            conn.drop(CLOSE_POLICY, "too slow")

    def _publish(self, message: Outbound) -> None:
        _, data = self._next_seq(message)
        for conn in list(self.connections.values()):
            if not conn.offer(message, data):
                if conn.role == "viewer":
                    self.deps.metrics.viewers_dropped_total.inc()
                self.log.warning("%s fell %d messages behind; closing it", conn.role, conn.limit)
                conn.drop(CLOSE_POLICY, "too slow")

    def _timer_fired(self, key: int) -> None:
        self._timers.pop(key, None)
        self.run(self.core.on_timer(key, now()))

    # ---- one upstream stream ----------------------------------------------------------

    async def _stream(self, start: StartStream) -> None:
        """Stream one reply. Every exit reports to the core, except a cancellation (the core
        asked for it and already sent the terminal)."""
        rid, core = start.response_id, self.core
        model = str(start.body["model"])
        reported: set[int] = set()  # ids of the gateway errors already counted and logged
        try:
            on_wait = lambda wait_s: self.run(core.on_queued(rid, wait_s))  # noqa: E731
            async with self.deps.limiter.slot(model, on_wait=on_wait):
                core.on_sent(rid, now())
                completion = await self._read(rid, start, reported)
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            if id(exc) not in reported:
                self._report(rid, exc.model or model, exc)
            self.run(core.on_failed(rid, _failure(exc), now()))
        except Exception:  # a bug must still end the reply with a terminal
            self.log.exception("response task crashed", extra={"response_id": rid})
            failure = Failure("internal_error", "the service failed to complete this response")
            self.run(core.on_failed(rid, failure, now()))
        else:
            self.run(core.on_done(rid, completion, now()))
        finally:
            if self._streams.get(rid) is asyncio.current_task():
                del self._streams[rid]

    def _report(self, rid: str, model: str, exc: GatewayError) -> None:
        self.deps.metrics.gateway_errors_total.inc(str(exc.status or type(exc).__name__))
        self.log.warning(
            "gateway request failed",
            extra={
                "response_id": rid,
                "model": model,
                "status": exc.status,
                "error_type": type(exc).__name__,
                "reason": str(exc.message)[:300],
                "request_id": exc.request_id,
            },
        )

    async def _read(self, rid: str, start: StartStream, reported: set[int]) -> Completion:
        core, body = self.core, start.body
        stream_cm = self.deps.gateway.stream(
            body, trusted=True, fallback_models=start.fallback_models
        )
        try:
            async with stream_cm as stream:
                core.on_request_id(rid, stream.request_id)
                headers = stream.headers
                # The gateway says when a model's window is spent: later requests wait for it.
                self.deps.limiter.gateway_said(
                    str(body["model"]),
                    headers.get("X-RateLimit-Remaining"),
                    headers.get("X-RateLimit-Reset"),
                )
                async for chunk in stream:
                    # The hot path reads the decoded dict directly: no wrapper per token.
                    choices = chunk.raw.get("choices")
                    if not choices:
                        continue
                    delta = choices[0].get("delta") or {}
                    text = delta.get("content")
                    if text:
                        outputs = core.on_delta(rid, text, now())
                        if outputs:
                            self.run(outputs)
                            await self.backpressure()
                    tool_calls = delta.get("tool_calls")
                    if tool_calls:
                        for tc in tool_calls:
                            self.run(core.on_tool_delta(rid, tool_delta(tc)))
                result = stream.result()
                request_id = stream.request_id
        finally:
            # Every failed attempt (retries and fallbacks included) is counted and logged once.
            for model, exc in stream_cm.failed_attempts:
                reported.add(id(exc))
                self._report(rid, model, exc)
        return Completion(
            finish_reason=getattr(result, "finish_reason", None),
            usage=plain(getattr(result, "usage", None)),
            tool_calls=plain(getattr(result, "tool_calls", None)) or None,
            model=getattr(result, "model", None),
            request_id=request_id or getattr(result, "request_id", None),
        )


def _failure(exc: GatewayError) -> Failure:
    code = "gateway_timeout" if isinstance(exc, GatewayTimeout) else "gateway_error"
    return Failure(code, str(getattr(exc, "message", None) or exc), exc.status)
