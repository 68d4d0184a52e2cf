"""A session's decisions, sans I/O: `SessionCore.on_x(...)` returns the outputs to carry out.

The core holds the session's config, turn policy, conversation and replies. Its inputs are
plain calls (a client message, a delta from upstream, a timer that ran out, the end of the
session); its outputs are typed records (publish a message, start or stop an upstream stream,
start or cancel a timer, close every connection) that the asyncio adapter,
`realtime.session.Session`, carries out in order. The turn policy's actions are worked off
from one queue, so policy and core never call back into each other.

Guarantees kept here (PROTOCOL.md "Responses"): a reply's messages are emitted in the same
step as its state changes, so once its terminal message is emitted nothing of it follows; a
hidden speculation emits nothing until promoted; the history keeps only what was delivered.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime.core import outbound as out_msg
from realtime.core.config import ConfigError, SessionConfig
from realtime.core.context import Conversation
from realtime.core.inbound import (
    ClientMessage,
    ResponseCancel,
    ResponseCreate,
    ResponseTruncate,
    SessionUpdate,
    SpeakerRevision,
    SpeechStarted,
    Termination,
    TurnMessage,
)
from realtime.core.outbound import Outbound
from realtime.core.replies import RE, RS, Completion, Failure, Reply
from realtime.core.turns import (
    Action,
    Cancel,
    Discard,
    Fire,
    Promote,
    ReplaceText,
    Start,
    StartTimer,
    TurnPolicy,
)
from realtime.metrics import ServiceMetrics

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CancelTimer",
    "CloseAll",
    "Log",
    "Output",
    "Publish",
    "SendTo",
    "SessionCore",
    "StartStream",
    "StartTimer",
    "StopStream",
]

SUMMARY_TIMER = -1  # the summary cadence's timer key (format timers are keyed by turn_order >= 0)
_SPEAKER_MEMORY = 16  # turns whose speaker_label is remembered before they are recorded
_ERRORS_LOGGED_IN_FULL = 5  # per error code and session; then every hundredth
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown only


# ---- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Queue `message` on every connection of the session."""

    message: Outbound


@dataclass(frozen=True, slots=True)
class SendTo:
    """Queue `message` on one connection (an error, a session.created)."""

    conn: int
    message: Outbound


@dataclass(frozen=True, slots=True)
class StartStream:
    """Start the upstream request of a reply (it waits for the limiter first)."""

    response_id: str
    body: dict[str, Any]
    fallback_models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopStream:
    """Abort a reply's upstream request at once (its connection is closed, not read out)."""

    response_id: str


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: int


@dataclass(frozen=True, slots=True)
class CloseAll:
    """Close every connection of the session with `code` after what is queued."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


Output = Publish | SendTo | StartStream | StopStream | StartTimer | CancelTimer | CloseAll | Log


# ---- the core -----------------------------------------------------------------------------


class SessionCore:
    """One session's state and decisions. Every `on_*` method returns the outputs, in order."""

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        *,
        new_id: Callable[[str], str],
        metrics: ServiceMetrics | None = None,
        model_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.model_prefixes = model_prefixes
        self.id = session_id
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self._new_id = new_id
        self.policy = self._new_policy(config)
        self.conversation = Conversation()
        self.replies: dict[str, Reply] = {}
        self.terminated = False  # input ended: nothing new fires
        self.ended = False  # the session is over
        self.closing = False  # CloseAll was emitted
        self.stt_failed = False
        self._timers: set[int] = set()
        self._pending: deque[Action] = deque()
        self._reason_override: str | None = None
        self.end_reason = ""  # why the session ended: termination, client, shutdown, ...
        self.outcomes: dict[str, int] = {"done": 0, "cancelled": 0, "failed": 0}
        self.turns_fired = 0
        self._errors_logged: dict[str, int] = {}
        # turn_order -> the newest speaker_label seen for it, for the turn's recording
        self._speakers: OrderedDict[int, str] = OrderedDict()
        # The background reply (a cadence summary or a response.create): at most one runs,
        # outside the turn policy and max_inflight; one that comes due meanwhile waits.
        self._background: str | None = None
        self._background_due = False
        self._covered_upto = -1  # the newest turn a background request has taken
        self._last_summary_at: float | None = None
        self._final_summary = False  # the last summary at the end of input was considered
        self.summaries = {"fired": 0, "done": 0, "folds": 0}
        # The memory fold (context_strategy: summarize): one background request at a time,
        # invisible to clients, outside the policy and max_inflight.
        self._fold: tuple[str, int, int] | None = None  # (id, upto, summary version)
        self._fold_text: list[str] = []

    @property
    def accepting(self) -> bool:
        """Whether a new connection may join."""
        return not (self.ended or self.terminated or self.closing)

    # ---- connections ------------------------------------------------------------------

    def join(self, conn: int, role: str, resume_token: str | None = None) -> list[Output]:
        """The `session.created` of a new connection, with the history so far (and, for a
        participant, the session's `resume_token`)."""
        created = out_msg.session_created(
            self.id,
            role,
            self.config.to_wire(),
            self.conversation.history(self._live()),
            self.conversation.summary,
            resume_token,
        )
        return [SendTo(conn, created)]

    def resumed(self, last_seq: int) -> Outbound:
        """The `session.resumed` of a connection that comes back after `last_seq`."""
        return out_msg.session_resumed(
            self.id,
            last_seq + 1,
            self.config.to_wire(),
            self.conversation.history(self._live()),
            self.conversation.summary,
        )

    def _live(self) -> dict[str, str]:
        return {r.id: r.delivered_text() for r in self.replies.values() if r.state is RS.VISIBLE}

    # ---- client input -----------------------------------------------------------------

    def on_message(self, conn: int, message: ClientMessage, at: float) -> list[Output]:
        """Apply one parsed client message (or a relayed speech-to-text event). Once the
        session ended nothing applies."""
        if self.ended:
            return []
        out: list[Output] = []
        if isinstance(message, TurnMessage):
            if message.event.speaker is not None:
                self._label(message.event.turn_order, message.event.speaker)
            if not self.terminated:
                self._pending.extend(self.policy.on_turn(message.event))
        elif isinstance(message, SpeakerRevision):
            for turn_order, speaker in message.revisions:
                self._label(turn_order, speaker)
        elif isinstance(message, SpeechStarted):
            if not self.terminated:
                self._pending.extend(self.policy.on_speech_started())
        elif isinstance(message, SessionUpdate):
            self._update(conn, message.patch, out)
        elif isinstance(message, ResponseCancel):
            self._pending.extend(self.policy.on_cancel_request())
            background = self.replies.get(self._background or "")
            if background is not None:
                self._cancel(background, "client", out)
        elif isinstance(message, ResponseCreate):
            if not self.terminated:
                self._request_background(at, out, force=True)
        elif isinstance(message, ResponseTruncate):
            self._truncate(conn, message, out)
        elif isinstance(message, Termination):
            if not self.terminated:
                self._pending.extend(self.policy.on_termination())
                self.terminated = True
        self._drain(at, out)
        return out

    def _label(self, turn_order: int, speaker: str) -> None:
        """A turn's speaker: remembered for when it is recorded, and set on it if it is."""
        self.conversation.relabel(turn_order, speaker)
        self._speakers.pop(turn_order, None)
        self._speakers[turn_order] = speaker
        while len(self._speakers) > _SPEAKER_MEMORY:
            self._speakers.popitem(last=False)

    def on_bad_message(self, conn: int, code: str, message: str) -> list[Output]:
        """Bad input from one connection: an error to it, and the session goes on. Logged
        the first few times per code, then every hundredth (a client in a loop must not
        flood the log)."""
        self.metrics.client_errors_total.inc(code)
        out: list[Output] = [SendTo(conn, out_msg.error(code, message))]
        seen = self._errors_logged.get(code, 0) + 1
        self._errors_logged[code] = seen
        if seen <= _ERRORS_LOGGED_IN_FULL or seen % 100 == 0:
            fields = {"code": code, "reason": message[:200], "occurrence": seen}
            out.append(Log(logging.INFO, "client error", fields))
        return out

    def on_stt_failed(self, status: int | str | None, message: str, at: float) -> list[Output]:
        """Upstream speech-to-text ended with an error: one `stt_error` to every connection,
        then the session's input ends as with `Termination`."""
        if self.stt_failed or self.ended:
            return []
        self.stt_failed = True
        self.metrics.client_errors_total.inc("stt_error")
        out: list[Output] = [Publish(out_msg.error("stt_error", message, status=status))]
        if not self.terminated:
            self._pending.extend(self.policy.on_termination())
            self.terminated = True
        self._drain(at, out)
        return out

    # ---- upstream stream events --------------------------------------------------------

    def on_sent(self, response_id: str, at: float) -> None:
        """The reply's request left for the gateway (it got its slot)."""
        r = self.replies.get(response_id)
        if r is not None:
            r.sent_at = at
            self.metrics.added_latency_ms.observe((at - r.fired_at) * 1000)

    def on_queued(self, response_id: str, wait_s: float) -> list[Output]:
        """The reply waits `wait_s` for the model's rate window."""
        r = self.replies.get(response_id)
        if r is None or r.state is not RS.VISIBLE:
            return []
        wait_ms = max(0, round(wait_s * 1000))
        return [Publish(out_msg.response_queued(r.id, r.turn_order, wait_ms))]

    def on_delta(self, response_id: str, text: str, at: float) -> list[Output]:
        if self._fold is not None and response_id == self._fold[0]:
            self._fold_text.append(text)
            return []
        r = self.replies.get(response_id)
        if r is None:
            return []
        if r.state is RS.VISIBLE:
            return [self._deliver(r, text, at)]
        if r.state is RS.HIDDEN:
            r.held.append(text)
        return []

    def on_tool_delta(self, response_id: str, delta: Mapping[str, Any]) -> list[Output]:
        r = self.replies.get(response_id)
        if r is None:
            return []
        if r.state is RS.HIDDEN:
            r.held_tools.append(dict(delta))  # shown if the speculation is promoted
            return []
        if r.state is not RS.VISIBLE:
            return []
        return [Publish(out_msg.tool_call_delta(r.id, r.turn_order, delta))]

    def on_request_id(self, response_id: str, request_id: str | None) -> None:
        r = self.replies.get(response_id)
        if r is not None and request_id:
            r.request_id = request_id

    def on_done(self, response_id: str, completion: Completion, at: float) -> list[Output]:
        if self._fold is not None and response_id == self._fold[0]:
            return self._fold_ended(True, at)
        return self._ended(response_id, completion, at)

    def on_failed(self, response_id: str, failure: Failure, at: float) -> list[Output]:
        if self._fold is not None and response_id == self._fold[0]:
            return self._fold_ended(False, at)
        return self._ended(response_id, failure, at)

    # ---- the memory fold (context_strategy: summarize) ---------------------------------

    def _maybe_fold(self, out: list[Output]) -> None:
        """Start folding the turns that fell out of the context window, if any and none is
        running. It never delays a reply: its request starts after the reply's."""
        cfg = self.config
        if cfg.context_strategy != "summarize" or cfg.prompt is not None:
            return
        if self._fold is not None or self.ended or self.closing or self.terminated:
            return
        step = self.conversation.build_fold(cfg)
        if step is None:
            return
        rid = self._new_id("m_")
        body: dict[str, Any] = {
            "model": cfg.summary_model or cfg.model,
            "messages": step.messages,
            "stream": True,
        }
        self._fold = (rid, step.upto, self.conversation.summary_version)
        self._fold_text = []
        self.summaries["fired"] += 1
        self.metrics.summaries_started_total.inc("memory")
        out.append(StartStream(rid, body, ()))
        out.append(Log(logging.DEBUG, "memory fold started", {"upto": step.upto}))

    def _fold_ended(self, done: bool, at: float) -> list[Output]:
        assert self._fold is not None
        _, upto, base = self._fold
        text = "".join(self._fold_text).strip()
        self._fold, self._fold_text = None, []
        out: list[Output] = []
        if done and text and base == self.conversation.summary_version:
            self.conversation.set_summary(text, upto)
            self._summary_taken("memory", text, None, at)
            self._maybe_fold(out)  # the rest of a backlog follows
        else:
            self.metrics.summaries_total.inc("memory", "dropped")
        self._drain(at, out)
        return out

    def _summary_taken(self, kind: str, text: str, fired_at: float | None, at: float) -> None:
        """A summary step completed and became the session's summary: count it."""
        self.summaries["done"] += 1
        self.summaries["folds"] += 1
        metrics = self.metrics
        metrics.summaries_total.inc(kind, "done")
        metrics.summary_chars.observe(len(text))
        if fired_at is not None:
            metrics.summary_latency_ms.observe((at - fired_at) * 1000)

    def _stop_fold(self, out: list[Output]) -> None:
        if self._fold is not None:
            out.append(StopStream(self._fold[0]))
            self._fold, self._fold_text = None, []

    def on_timer(self, key: int, at: float) -> list[Output]:
        self._timers.discard(key)
        out: list[Output] = []
        if not self.ended:
            if key == SUMMARY_TIMER:
                if not self.terminated:
                    self._request_background(at, out, timer=True)
            else:
                self._pending.extend(self.policy.on_format_timeout(key))
            self._drain(at, out)
        return out

    # ---- the end ----------------------------------------------------------------------

    def end(self, reason: str, code: int, at: float) -> list[Output]:
        """End the session: every live reply ends with one terminal (reason `client` or
        `shutdown`), speculations are dropped, timers cancelled, connections closed."""
        if self.ended:
            return []
        self.ended = self.terminated = True
        self.end_reason = self.end_reason or reason
        self.closing = True  # the CloseAll below carries this end's code
        out: list[Output] = []
        actions = (
            self.policy.on_shutdown() if reason == "shutdown" else self.policy.on_cancel_request()
        )
        self._pending.extend(actions)
        self._reason_override = reason
        try:
            self._drain(at, out)
            for r in list(self.replies.values()):  # anything the policy no longer tracks
                self._cancel(r, reason, out)
            self._drain(at, out)
        finally:
            self._reason_override = None
        for key in sorted(self._timers):
            out.append(CancelTimer(key))
        self._timers.clear()
        self._stop_fold(out)
        out.append(CloseAll(code, "server shutting down" if reason == "shutdown" else ""))
        return out

    # ---- the action queue -------------------------------------------------------------

    def _drain(self, at: float, out: list[Output]) -> None:
        """Work off the policy's actions; carrying one out may queue more (never recurses)."""
        pending = self._pending
        while pending:
            a = pending.popleft()
            if isinstance(a, Fire):
                self._fire(a, at, out)
            elif isinstance(a, Start):
                r = self.replies.get(a.response_id)
                if r is not None and not r.terminal and not r.streaming and not self.ended:
                    out.append(self._start(r))
            elif isinstance(a, Cancel):
                r = self.replies.get(a.response_id)
                if r is not None:
                    self._cancel(r, self._reason_override or a.reason, out)
            elif isinstance(a, Promote):
                self._promote(a, at, out)
            elif isinstance(a, Discard):
                self._discard(a.response_id, out)
            elif isinstance(a, ReplaceText):
                self.conversation.replace_user(a.turn_order, a.text)
            elif isinstance(a, StartTimer):
                if not self.ended:
                    self._timers.add(a.turn_order)
                    out.append(a)
        self._sweep_timers(out)
        if (
            self.terminated
            and not self.ended
            and not self.closing
            and not self._final_summary
            and self.config.summary_every is not None
        ):
            # The end of input: the turns not yet summarized get a last summary.
            self._final_summary = True
            self._request_background(at, out, force=True)
        if self.terminated and not self.replies and not self.closing:
            self._stop_fold(out)
            self.closing = True
            self.end_reason = "stt_error" if self.stt_failed else "termination"
            out.append(CloseAll(CLOSE_NORMAL, "session ended"))

    def _sweep_timers(self, out: list[Output]) -> None:
        """A format timer whose turn fired, was superseded or ended is cancelled now."""
        if not self._timers:
            return
        waiting = None if self.ended else self.policy.waiting_for_format()
        for key in sorted(self._timers):
            if key >= 0 and key != waiting:
                self._timers.discard(key)
                out.append(CancelTimer(key))

    # ---- reply steps ------------------------------------------------------------------

    def _fire(self, a: Fire, at: float, out: list[Output]) -> None:
        if self.config.summary_every is not None:
            # Meeting cadence: a turn is recorded, and summaries fire on the cadence.
            self._pending.extend(self.policy.on_response_finished(a.response_id))
            if not a.speculative:
                self.turns_fired += 1
                self.conversation.add_user(a.turn_order, a.text, self._speakers.get(a.turn_order))
                if self._last_summary_at is None:
                    self._last_summary_at = at
                self._request_background(at, out)
            return
        r = Reply(
            id=a.response_id,
            turn_order=a.turn_order,
            text_in=a.text,
            model=self.config.model,
            fired_at=at,
            state=RS.HIDDEN if a.speculative else RS.VISIBLE,
        )
        if not a.speculative:
            self.turns_fired += 1
        # The request is built now, from the context as it is when the turn fired.
        r.body = self._request_body(r)
        self.replies[r.id] = r
        if a.speculative:
            self.metrics.speculations_total.inc("started")
            out.append(self._start(r))
            return
        # The stream starts before response.created is queued, so the request goes out
        # before the writer spends a send on the notice.
        if not a.queued:
            out.append(self._start(r))
        self._show(r, a.text, out)
        self._maybe_fold(out)

    # ---- the background reply: summaries on a cadence, response.create ---------------------

    def _request_background(
        self, at: float, out: list[Output], *, force: bool = False, timer: bool = False
    ) -> None:
        """Fire the background reply if it is due (forced, or the cadence's turns or seconds
        reached) and a turn not yet taken exists; while one runs, remember that another is
        due; otherwise keep the cadence's timer running."""
        if self.ended or self.closing:
            return
        every = self.config.summary_every or {}
        new_turns = self.conversation.user_turns_after(self._covered_upto)
        turns, seconds = every.get("turns"), every.get("seconds")
        last = self._last_summary_at if self._last_summary_at is not None else at
        due = force or (turns is not None and new_turns >= turns)
        elapsed = timer or (seconds is not None and at - last >= seconds)
        due = due or (seconds is not None and new_turns > 0 and elapsed)
        if self._background is not None:
            self._background_due = self._background_due or due
            return
        if new_turns == 0 and not (force and self.config.summary_every is None):
            self._stop_summary_timer(out)
            return
        if due:
            self._fire_background(at, out)
        elif seconds is not None and SUMMARY_TIMER not in self._timers:
            delay_ms = max(0, round((last + seconds - at) * 1000))
            self._timers.add(SUMMARY_TIMER)
            out.append(StartTimer(SUMMARY_TIMER, delay_ms))

    def _stop_summary_timer(self, out: list[Output]) -> None:
        if SUMMARY_TIMER in self._timers:
            self._timers.discard(SUMMARY_TIMER)
            out.append(CancelTimer(SUMMARY_TIMER))

    def _fire_background(self, at: float, out: list[Output]) -> None:
        """One background reply: a summary step when the prompt renders {{summary}},
        otherwise a request for the newest turn under the session's prompt."""
        newest = self.conversation.newest_user()
        if newest is None:
            return
        cfg = self.config
        r = Reply(
            id=self._new_id("r_"),
            turn_order=newest[0],
            text_in=newest[1],
            model=cfg.model,
            fired_at=at,
            state=RS.VISIBLE,
        )
        if cfg.prompt is not None and "{{summary}}" in cfg.prompt:
            step = self.conversation.build_summary(cfg)
            if step is None:
                return
            messages = step.messages
            r.turn_order, r.summary_upto = step.upto, step.upto
            r.summary_base = self.conversation.summary_version
            self._background_due = step.partial  # the rest follows at once
            self.summaries["fired"] += 1
            self.metrics.summaries_started_total.inc("meeting")
        else:
            messages = self.conversation.build_messages(cfg, newest[0])
            self._background_due = False
        body: dict[str, Any] = cfg.request_fields()
        body["messages"], body["stream"] = messages, True
        r.body = body
        r.prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        self._covered_upto = max(self._covered_upto, r.turn_order)
        self._background = r.id
        self._last_summary_at = at
        self._stop_summary_timer(out)
        self.replies[r.id] = r
        out.append(self._start(r))
        self.conversation.start_reply(r.id, r.turn_order)
        out.append(Publish(out_msg.response_created(r.id, r.turn_order, r.model)))

    def _background_ended(self, r: Reply, done: bool, at: float, out: list[Output]) -> None:
        """The background reply ended: a completed summary step becomes the summary (unless
        a newer summary landed since it was built); a due one fires next."""
        if r.id != self._background:
            return
        self._background = None
        conv = self.conversation
        text = r.delivered_text()
        if r.summary_upto is not None:
            if done and text.strip() and r.summary_base == conv.summary_version:
                conv.set_summary(text, r.summary_upto)
                self._summary_taken("meeting", text, r.fired_at, at)
            else:  # its turns are not folded: the next step takes them again
                self.metrics.summaries_total.inc("meeting", "dropped")
                self._covered_upto = conv.folded_upto
                done = False  # an empty or stale summary is retried like a failure
        if not done:
            self._background_due = False
        if self.ended:
            return
        force = self._background_due
        self._background_due = False
        if done:
            self._request_background(at, out, force=force)
        elif not self.terminated:
            # A failure is not retried at once (a gateway that is down would be hammered):
            # the next turn or the cadence's timer fires the next step.
            seconds = (self.config.summary_every or {}).get("seconds")
            if seconds is not None and SUMMARY_TIMER not in self._timers:
                self._timers.add(SUMMARY_TIMER)
                out.append(StartTimer(SUMMARY_TIMER, round(seconds * 1000)))

    def _start(self, r: Reply) -> StartStream:
        r.streaming = True
        fallbacks = tuple(str(f["model"]) for f in self.config.fallbacks)
        return StartStream(r.id, r.body, fallbacks)

    def _show(self, r: Reply, text: str, out: list[Output]) -> None:
        self.conversation.add_user(r.turn_order, text, self._speakers.get(r.turn_order))
        self.conversation.start_reply(r.id, r.turn_order)
        out.append(Publish(out_msg.response_created(r.id, r.turn_order, r.model)))

    def _promote(self, a: Promote, at: float, out: list[Output]) -> None:
        r = self.replies.get(a.response_id)
        if r is None or r.terminal:
            return
        ended_hidden = r.state is RS.HIDDEN_ENDED
        r.move(RE.PROMOTE)
        r.promoted_at = at
        self.turns_fired += 1
        self.metrics.speculations_total.inc("promoted")
        self._show(r, a.text, out)
        self._maybe_fold(out)
        if r.held:
            held = "".join(r.held)
            r.held.clear()
            out.append(self._deliver(r, held, at))
        for delta in r.held_tools:
            out.append(Publish(out_msg.tool_call_delta(r.id, r.turn_order, delta)))
        r.held_tools.clear()
        if ended_hidden and r.outcome is not None:
            outcome, r.outcome = r.outcome, None
            self._finish(r, outcome, at, out)

    def _discard(self, response_id: str, out: list[Output]) -> None:
        r = self.replies.get(response_id)
        if r is None or r.terminal:
            return
        r.move(RE.DISCARD)
        self.metrics.speculations_total.inc("discarded")
        if r.streaming:
            out.append(StopStream(r.id))
        self.replies.pop(r.id, None)

    def _cancel(self, r: Reply, reason: str, out: list[Output]) -> None:
        if r.terminal:
            return
        visible = r.state is RS.VISIBLE
        r.move(RE.CANCEL)
        if r.streaming:
            out.append(StopStream(r.id))
        self.replies.pop(r.id, None)
        self._pending.extend(self.policy.on_response_finished(r.id))
        if not visible:  # a hidden speculation leaves no trace
            return
        delivered = r.delivered_text()
        self.conversation.finish_reply(r.id, delivered)
        if r.id == self._background:
            self._background = None
            if r.summary_upto is not None:
                self._covered_upto = self.conversation.folded_upto
            self._background_due = False
        out.append(Publish(out_msg.response_cancelled(r.id, r.turn_order, reason, delivered)))
        self.metrics.responses_total.inc("cancelled", reason)
        self.outcomes["cancelled"] += 1
        self.metrics.cancellations_total.inc(reason)
        out.append(Log(logging.INFO, "response cancelled", self._ids(r, reason=reason)))

    def _deliver(self, r: Reply, text: str, at: float) -> Publish:
        if r.first_delta_at is None:
            r.first_delta_at = at
            origin = r.promoted_at if r.promoted_at is not None else r.fired_at
            self.metrics.ttft_ms.observe((at - origin) * 1000)
        r.delivered.append(text)
        return Publish(out_msg.response_delta(r.id, r.turn_order, text))

    def _ended(self, response_id: str, outcome: Completion | Failure, at: float) -> list[Output]:
        r = self.replies.get(response_id)
        if r is None or r.terminal:
            return []
        if r.state is RS.HIDDEN:  # kept until the speculation is promoted or discarded
            r.move(RE.FINISH if isinstance(outcome, Completion) else RE.FAIL)
            r.outcome = outcome
            return []
        out: list[Output] = []
        self._finish(r, outcome, at, out)
        self._drain(at, out)
        return out

    def _finish(
        self, r: Reply, outcome: Completion | Failure, at: float, out: list[Output]
    ) -> None:
        delivered = r.delivered_text()
        self.conversation.finish_reply(r.id, delivered)
        self.replies.pop(r.id, None)
        self._pending.extend(self.policy.on_response_finished(r.id))
        done = isinstance(outcome, Completion)
        if r.summary_upto is not None and r.id != self._background and done and delivered.strip():
            # a per-turn summary step (no cadence): it folds its turns unless stale
            if r.summary_base == self.conversation.summary_version:
                self.conversation.set_summary(delivered, r.summary_upto)
                self._summary_taken("meeting", delivered, r.fired_at, at)
        try:
            self._report_end(r, outcome, delivered, at, out)
        finally:
            self._background_ended(r, done, at, out)

    def _report_end(
        self,
        r: Reply,
        outcome: Completion | Failure,
        delivered: str,
        at: float,
        out: list[Output],
    ) -> None:
        if isinstance(outcome, Completion):
            r.move(RE.FINISH)
            usage = outcome.usage
            prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            if isinstance(prompt_tokens, int) and r.prompt_chars:
                self.conversation.observe_usage(r.prompt_chars, prompt_tokens)
            request_id = outcome.request_id or r.request_id
            message = out_msg.response_done(
                r.id,
                r.turn_order,
                text=delivered,
                finish_reason=outcome.finish_reason,
                usage=usage,
                request_id=request_id,
                timings=r.timings(at),
                tool_calls=outcome.tool_calls,
                model=outcome.model,
            )
            out.append(Publish(message))
            self.metrics.responses_total.inc("done", "")
            self.outcomes["done"] += 1
            out.append(Log(logging.INFO, "response done", self._ids(r, request_id=request_id)))
        else:
            r.move(RE.FAIL)
            message = out_msg.response_failed(
                r.id, r.turn_order, outcome.code, outcome.status, outcome.message, delivered
            )
            out.append(Publish(message))
            self.metrics.responses_total.inc("failed", outcome.code)
            self.outcomes["failed"] += 1
            fields = self._ids(r, code=outcome.code, status=outcome.status, reason=outcome.message)
            out.append(Log(logging.WARNING, "response failed", fields))

    # ---- config and history -----------------------------------------------------------

    def _update(self, conn: int, patch: dict[str, Any], out: list[Output]) -> None:
        """Validate and build the whole new config, then swap it in: a refused update
        changes nothing."""
        try:
            config = self.config.update(patch)
            self._check_models(config)
            wire = config.to_wire()
            orjson.dumps(wire)  # what session.updated will carry must serialise
            policy_args = _policy_args(config)
        except ConfigError as exc:
            out.extend(self.on_bad_message(conn, exc.code, exc.message[:500]))
            return
        except orjson.JSONEncodeError as exc:
            out.extend(self.on_bad_message(conn, "invalid_config", str(exc)[:500]))
            return
        self._pending.extend(self.policy.configure(**policy_args))
        self.config = config
        ignored = SessionConfig.ignored_fields(patch)
        out.append(Publish(out_msg.session_updated(self.id, wire, ignored)))

    def _check_models(self, config: SessionConfig) -> None:
        """With `model_prefixes` (the EU gateway), every model the session would use must be
        one the gateway serves."""
        prefixes = self.model_prefixes
        if not prefixes:
            return
        models = [config.model, *(str(f["model"]) for f in config.fallbacks)]
        if config.summary_model:
            models.append(config.summary_model)
        for model in models:
            if not model.lower().startswith(prefixes):
                raise ConfigError(
                    f"model: {model[:80]} is not served by this server's gateway region "
                    f"(models starting {', '.join(prefixes)} only)"
                )

    def _truncate(self, conn: int, m: ResponseTruncate, out: list[Output]) -> None:
        r = self.replies.get(m.response_id)
        if r is not None and not r.terminal:
            out.extend(
                self.on_bad_message(
                    conn, "invalid_event", "response.truncate: the response is still streaming"
                )
            )
            return
        try:
            self.conversation.truncate_reply(m.response_id, m.text)
        except (KeyError, ValueError) as exc:
            out.extend(self.on_bad_message(conn, "invalid_event", f"response.truncate: {exc}"))
            return
        out.append(Publish(out_msg.response_truncated(m.response_id, m.text)))

    def _request_body(self, r: Reply) -> dict[str, Any]:
        body: dict[str, Any] = self.config.request_fields()
        speaker = self._speakers.get(r.turn_order)
        prompt = self.config.prompt
        step = None
        if prompt is not None and "{{summary}}" in prompt:  # a summary step, once per turn
            step = self.conversation.build_summary(self.config, (r.turn_order, r.text_in, speaker))
        if step is not None:
            messages = step.messages
            r.summary_upto, r.summary_base = step.upto, self.conversation.summary_version
        else:
            messages = self.conversation.build_messages(
                self.config, r.turn_order, current_text=r.text_in, speaker=speaker
            )
        body["messages"] = messages
        body["stream"] = True
        r.prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        return body

    def _new_policy(self, c: SessionConfig) -> TurnPolicy:
        return TurnPolicy(**_policy_args(c), new_id=lambda: self._new_id("r_"))

    def _ids(self, r: Reply, **extra: Any) -> dict[str, Any]:
        return {"response_id": r.id, "turn_order": r.turn_order, **extra}


def _policy_args(c: SessionConfig) -> dict[str, Any]:
    return {
        "trigger": c.trigger,
        "on_new_turn": c.on_new_turn,
        "interrupt_min_words": c.interrupt_min_words,
        "max_inflight": c.max_inflight,
        "format_wait_ms": c.format_wait_ms,
    }
