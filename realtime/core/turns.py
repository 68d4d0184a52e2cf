"""The turn policy: when a turn fires a response, and what a new turn does to live ones. Pure.

Inputs are plain method calls (a parsed `Turn`, `SpeechStarted`, a timer that ran out, the
client's `response.cancel`, a response reaching its end, the end of input); outputs are lists
of action objects that the session carries out in order. No asyncio, no I/O, no clock: the
policy asks for a timer with `StartTimer` and is told with `on_format_timeout`.

Two tables of state, each changed in one place:

* the response lifecycle, `TRANSITIONS` (queued, running, speculative -> finished), walked by
  `transition`, which raises `IllegalTransition` on any pair not in the table;
* the newest turn's phase (open -> waiting for its formatted copy -> fired), `_TurnState`.

Memory is bounded: the policy holds only live responses (at most 2 * max_inflight visible
plus one speculation), the newest turn, and the texts of the last few fired turns (for the
formatted copy that arrives after a turn fired). PROTOCOL.md is the contract; the decisions
it leaves open are listed in docs/turn-policy.md.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_SPECULATIONS_PER_TURN",
    "TRANSITIONS",
    "Action",
    "Cancel",
    "Discard",
    "Fire",
    "IllegalTransition",
    "Promote",
    "REvent",
    "RState",
    "ReplaceText",
    "ResponseInfo",
    "Start",
    "StartTimer",
    "TurnEvent",
    "TurnPolicy",
    "normalize",
    "transition",
]

# A turn whose partials keep changing stops speculating after this many attempts: each
# speculation is a paid upstream request (voice-frameworks.md section 3, pain point 3).
MAX_SPECULATIONS_PER_TURN = 3
# How many fired turns remember their text, for a formatted copy that arrives late.
_FIRED_MEMORY = 8


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """A parsed AssemblyAI v3 `Turn` message (reference assemblyai.md section 2.5)."""

    turn_order: int
    transcript: str
    end_of_turn: bool
    turn_is_formatted: bool
    utterance: str = ""
    word_count: int = 0  # len(words) of the event, else the transcript's word count
    speaker: str | None = None  # `speaker_label` ("A", "B", ..., "UNKNOWN"), when diarized


# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fire:
    """Create a response for a turn.

    Not speculative: send response.created now, record the user turn `text`, and start the
    upstream request unless `queued` (then wait for `Start`). Speculative: start the request
    but show nothing and hold its deltas; the turn is not recorded until `Promote`.
    """

    response_id: str
    turn_order: int
    text: str
    speculative: bool
    queued: bool


@dataclass(frozen=True, slots=True)
class Start:
    """A queued response may start its upstream request now."""

    response_id: str


@dataclass(frozen=True, slots=True)
class Promote:
    """The end of turn confirmed a speculation: record `text`, send response.created and the
    held deltas at once, stream on."""

    response_id: str
    turn_order: int
    text: str


@dataclass(frozen=True, slots=True)
class Discard:
    """Abort a speculative response upstream; clients never hear of it."""

    response_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Abort a visible response and send response.cancelled with `reason`
    (interrupted | superseded | client | shutdown)."""

    response_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReplaceText:
    """A formatted final arrived after its turn fired: replace the turn's text in the history
    for later requests. Fires nothing."""

    turn_order: int
    text: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call `on_format_timeout(turn_order)` after `delay_ms`."""

    turn_order: int
    delay_ms: int


Action = Fire | Start | Promote | Discard | Cancel | ReplaceText | StartTimer


# ---- the response lifecycle table ---------------------------------------------------------


class RState(StrEnum):
    QUEUED = "queued"  # visible (response.created sent), waiting for a free slot
    RUNNING = "running"  # visible, upstream request allowed to run
    SPECULATIVE = "speculative"  # running upstream, invisible to clients
    FINISHED = "finished"  # terminal: the policy forgets it


class REvent(StrEnum):
    START = "start"  # a slot freed up for a queued response
    PROMOTE = "promote"  # the end of turn confirmed a speculation
    CANCEL = "cancel"  # the policy cancels a visible response
    DISCARD = "discard"  # the policy drops a speculation
    FINISH = "finish"  # the session reports a terminal state (done, failed, cancelled)


TRANSITIONS: dict[tuple[RState, REvent], RState] = {
    (RState.QUEUED, REvent.START): RState.RUNNING,
    (RState.QUEUED, REvent.CANCEL): RState.FINISHED,
    (RState.QUEUED, REvent.FINISH): RState.FINISHED,
    (RState.RUNNING, REvent.CANCEL): RState.FINISHED,
    (RState.RUNNING, REvent.FINISH): RState.FINISHED,
    (RState.SPECULATIVE, REvent.PROMOTE): RState.RUNNING,
    (RState.SPECULATIVE, REvent.DISCARD): RState.FINISHED,
    (RState.SPECULATIVE, REvent.FINISH): RState.FINISHED,
}


class IllegalTransition(RuntimeError):
    """A (state, event) pair that is not in `TRANSITIONS`: a bug in the caller."""


def transition(state: RState, event: REvent) -> RState:
    """The next state of a response, or `IllegalTransition`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"response cannot {event.value} while {state.value}") from None


@dataclass(slots=True)
class _Response:
    id: str
    turn_order: int
    state: RState
    norm: str = ""  # a speculation's normalised text, compared with the final


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """A snapshot of one live response."""

    response_id: str
    turn_order: int
    state: str

    @property
    def visible(self) -> bool:
        return self.state != RState.SPECULATIVE


# ---- helpers ------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case- and punctuation-blind form of a transcript, for comparing two versions of it."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.casefold())).strip()


def _speculation_text(ev: TurnEvent) -> str:
    """What a speculation sends: the transcript when it is the utterance plus more, since the
    final carries every finalised word of the turn; otherwise the utterance itself."""
    t, u = normalize(ev.transcript), normalize(ev.utterance)
    if len(t) > len(u) and (t.startswith(u) or t.endswith(u)):
        return ev.transcript
    return ev.utterance


def _counter_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"r_{next(counter)}"


class _Phase(StrEnum):
    OPEN = "open"  # no final yet
    WAITING = "waiting"  # trigger=formatted: unformatted final seen, timer running
    FIRED = "fired"  # the turn fired (or was promoted): nothing more fires for it


@dataclass(slots=True)
class _TurnState:
    order: int
    phase: _Phase = _Phase.OPEN
    final_text: str = ""  # the unformatted final, while WAITING
    spec_id: str | None = None
    speculations: int = 0


def _validate(
    trigger: str, on_new_turn: str, interrupt_min_words: int, max_inflight: int, format_wait_ms: int
) -> None:
    """Reject values config.py would never produce (a programming error, not client input)."""
    if trigger not in ("end_of_turn", "formatted", "eager"):
        raise ValueError(f"trigger: unknown value {trigger!r}")
    if on_new_turn not in ("cancel", "supersede", "keep"):
        raise ValueError(f"on_new_turn: unknown value {on_new_turn!r}")
    if interrupt_min_words < 1 or max_inflight < 1 or format_wait_ms < 0:
        raise ValueError("interrupt_min_words, max_inflight must be >= 1; format_wait_ms >= 0")


# ---- the policy ---------------------------------------------------------------------------


class TurnPolicy:
    """Decides, per session, when turns fire and what happens to live responses.

    Every public method returns the actions to carry out, in order. After `on_termination`
    or `on_shutdown` no input fires anything; responses already live still finish and may
    free slots for queued ones.
    """

    def __init__(
        self,
        *,
        trigger: str = "end_of_turn",
        on_new_turn: str = "cancel",
        interrupt_min_words: int = 1,
        max_inflight: int = 4,
        format_wait_ms: int = 300,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self._new_id = new_id or _counter_ids()
        self._live: dict[str, _Response] = {}  # insertion order = creation order
        self._turn: _TurnState | None = None
        self._fired: OrderedDict[int, str] = OrderedDict()  # turn_order -> recorded text
        self._last_fired = -1
        self._stopped = False
        _validate(trigger, on_new_turn, interrupt_min_words, max_inflight, format_wait_ms)
        self.trigger = trigger
        self.on_new_turn = on_new_turn
        self.interrupt_min_words = interrupt_min_words
        self.max_inflight = max_inflight
        self.format_wait_ms = format_wait_ms

    # ---- inputs ---------------------------------------------------------------------------

    def configure(
        self,
        *,
        trigger: str,
        on_new_turn: str,
        interrupt_min_words: int,
        max_inflight: int,
        format_wait_ms: int,
    ) -> list[Action]:
        """Apply a new config mid-session.

        A turn waiting for its formatted copy fires now if the trigger is no longer
        `formatted`; a speculation is discarded if it is no longer `eager`; a larger
        `max_inflight` starts queued responses, a smaller one trims the queue (oldest first).
        """
        _validate(trigger, on_new_turn, interrupt_min_words, max_inflight, format_wait_ms)
        self.trigger, self.on_new_turn = trigger, on_new_turn
        self.interrupt_min_words, self.max_inflight = interrupt_min_words, max_inflight
        self.format_wait_ms = format_wait_ms
        out: list[Action] = []
        turn = self._turn
        if turn is not None and not self._stopped:
            if turn.phase is _Phase.WAITING and trigger != "formatted":
                self._fire(turn, turn.final_text, out)
            if trigger != "eager":
                self._discard_speculation(turn, out)
        self._trim_queue(out)
        self._drain(out)
        return out

    def on_turn(self, ev: TurnEvent) -> list[Action]:
        """A `Turn` message. Older turns are ignored except a late formatted final."""
        if self._stopped:
            return []
        out: list[Action] = []
        turn = self._turn
        if turn is None or ev.turn_order > turn.order:
            if turn is not None:
                self._close_turn(turn, out)
            turn = self._turn = _TurnState(ev.turn_order)
        elif ev.turn_order < turn.order:
            self._late_formatted(ev, out)
            return out
        if self.on_new_turn == "cancel" and ev.word_count >= self.interrupt_min_words:
            self._cancel_visible(out, "interrupted", older_than=ev.turn_order)
        if turn.phase is _Phase.FIRED:
            self._late_formatted(ev, out)
        elif turn.phase is _Phase.WAITING:
            if ev.end_of_turn and ev.turn_is_formatted and ev.transcript.strip():
                self._fire(turn, ev.transcript, out)
        elif ev.end_of_turn:
            self._on_final(turn, ev, out)
        elif self.trigger == "eager" and ev.utterance.strip():
            self._speculate(turn, _speculation_text(ev), out)
        return out

    def on_speech_started(self) -> list[Action]:
        """`SpeechStarted` (the user speaks again): barge-in under `cancel`."""
        out: list[Action] = []
        if not self._stopped and self.on_new_turn == "cancel":
            self._cancel_visible(out, "interrupted")
            self._drain(out)
        return out

    def on_format_timeout(self, turn_order: int) -> list[Action]:
        """The formatted copy did not come in time: fire with the unformatted final."""
        turn = self._turn
        out: list[Action] = []
        if not self._stopped and turn is not None and turn.order == turn_order:
            if turn.phase is _Phase.WAITING:
                self._fire(turn, turn.final_text, out)
        return out

    def on_cancel_request(self) -> list[Action]:
        """The client's `response.cancel`: every visible live response, queued ones too."""
        out: list[Action] = []
        self._cancel_visible(out, "client")
        return out

    def on_response_finished(self, response_id: str) -> list[Action]:
        """The session reports a terminal state; a freed slot starts the oldest queued one.

        An id the policy already forgot (it cancelled or discarded it) is ignored.
        """
        out: list[Action] = []
        r = self._live.get(response_id)
        if r is not None:
            self._end(r, REvent.FINISH)
            self._drain(out)
        return out

    def on_termination(self) -> list[Action]:
        """Input ended: a turn waiting for its formatted copy fires now, an unconfirmed
        speculation is discarded; afterwards every input is ignored."""
        out: list[Action] = []
        if self._stopped:
            return out
        turn = self._turn
        if turn is not None:
            if turn.phase is _Phase.WAITING:
                self._fire(turn, turn.final_text, out)
            self._discard_speculation(turn, out)
        self._stopped = True
        return out

    def on_shutdown(self) -> list[Action]:
        """The server stops: cancel every visible live response, discard speculations."""
        self._stopped = True
        out: list[Action] = []
        self._cancel_visible(out, "shutdown")
        for r in self._of_state(RState.SPECULATIVE):
            self._end(r, REvent.DISCARD)
            out.append(Discard(r.id))
        return out

    def waiting_for_format(self) -> int | None:
        """The turn_order whose format timer matters now, or None (a timer of any other
        turn is moot and may be cancelled)."""
        turn = self._turn
        if turn is not None and turn.phase is _Phase.WAITING and not self._stopped:
            return turn.order
        return None

    def live(self) -> list[ResponseInfo]:
        """The live responses, oldest first."""
        return [ResponseInfo(r.id, r.turn_order, r.state.value) for r in self._live.values()]

    # ---- turn steps -----------------------------------------------------------------------

    def _close_turn(self, turn: _TurnState, out: list[Action]) -> None:
        """A newer turn began: the previous one's pending decisions are settled now, so that
        it can never fire after the newer one (responses are created in turn order)."""
        if turn.phase is _Phase.WAITING:
            self._fire(turn, turn.final_text, out)
        self._discard_speculation(turn, out)

    def _on_final(self, turn: _TurnState, ev: TurnEvent, out: list[Action]) -> None:
        text = ev.transcript
        if not text.strip():  # an empty final never fires; a speculation is now unconfirmed
            self._discard_speculation(turn, out)
            return
        if self.trigger == "formatted" and not ev.turn_is_formatted and self.format_wait_ms > 0:
            turn.phase, turn.final_text = _Phase.WAITING, text
            out.append(StartTimer(turn.order, self.format_wait_ms))
            return
        spec = self._live.get(turn.spec_id) if turn.spec_id else None
        if spec is not None and spec.norm == normalize(text):
            self._promote(turn, spec, text, out)
        else:
            self._discard_speculation(turn, out)
            self._fire(turn, text, out)

    def _late_formatted(self, ev: TurnEvent, out: list[Action]) -> None:
        """A formatted final for a turn that already fired replaces its recorded text."""
        if not (ev.end_of_turn and ev.turn_is_formatted and ev.transcript.strip()):
            return
        recorded = self._fired.get(ev.turn_order)
        if recorded is not None and recorded != ev.transcript:
            self._fired[ev.turn_order] = ev.transcript
            out.append(ReplaceText(ev.turn_order, ev.transcript))

    def _speculate(self, turn: _TurnState, text: str, out: list[Action]) -> None:
        norm = normalize(text)
        current = self._live.get(turn.spec_id) if turn.spec_id else None
        if not norm or (current is not None and current.norm == norm):
            return
        self._discard_speculation(turn, out)
        if turn.speculations >= MAX_SPECULATIONS_PER_TURN or turn.order <= self._last_fired:
            return
        turn.speculations += 1
        r = self._add(turn.order, RState.SPECULATIVE)
        r.norm = norm
        turn.spec_id = r.id
        out.append(Fire(r.id, turn.order, text, speculative=True, queued=False))

    def _discard_speculation(self, turn: _TurnState, out: list[Action]) -> None:
        r = self._live.get(turn.spec_id) if turn.spec_id else None
        turn.spec_id = None
        if r is not None:
            self._end(r, REvent.DISCARD)
            out.append(Discard(r.id))

    def _fire(self, turn: _TurnState, text: str, out: list[Action]) -> None:
        """Create the visible response of `turn` (the one place a turn becomes fired)."""
        if turn.order <= self._last_fired:
            return  # never fire a turn older than one that fired (guarantee 4)
        self._mark_fired(turn, text)
        self._new_turn_fired(turn.order, out)
        queued = self._running_count() >= self.max_inflight
        if queued:
            queue = self._of_state(RState.QUEUED)
            if len(queue) >= self.max_inflight:  # full: the oldest waiting one makes room
                self._cancel(queue[0], "superseded", out)
        r = self._add(turn.order, RState.QUEUED if queued else RState.RUNNING)
        out.append(Fire(r.id, turn.order, text, speculative=False, queued=queued))

    def _promote(self, turn: _TurnState, spec: _Response, text: str, out: list[Action]) -> None:
        """Make a confirmed speculation visible; without a free slot, queue a fresh request
        instead (a promoted response runs at once, so it must fit under max_inflight)."""
        self._new_turn_fired(turn.order, out)
        if self._running_count() >= self.max_inflight:
            self._discard_speculation(turn, out)
            self._fire(turn, text, out)
            return
        self._mark_fired(turn, text)
        turn.spec_id = None
        self._move(spec, REvent.PROMOTE)
        out.append(Promote(spec.id, turn.order, text))

    def _mark_fired(self, turn: _TurnState, text: str) -> None:
        turn.phase = _Phase.FIRED
        self._last_fired = turn.order
        self._fired[turn.order] = text
        while len(self._fired) > _FIRED_MEMORY:
            self._fired.popitem(last=False)

    def _new_turn_fired(self, turn_order: int, out: list[Action]) -> None:
        if self.on_new_turn == "cancel":
            self._cancel_visible(out, "interrupted", older_than=turn_order)
        elif self.on_new_turn == "supersede":
            self._cancel_visible(out, "superseded", older_than=turn_order)

    # ---- response bookkeeping -------------------------------------------------------------

    def _add(self, turn_order: int, state: RState) -> _Response:
        r = _Response(self._new_id(), turn_order, state)
        self._live[r.id] = r
        return r

    def _move(self, r: _Response, event: REvent) -> None:
        r.state = transition(r.state, event)

    def _end(self, r: _Response, event: REvent) -> None:
        self._move(r, event)
        del self._live[r.id]  # terminal responses are forgotten

    def _cancel(self, r: _Response, reason: str, out: list[Action]) -> None:
        self._end(r, REvent.CANCEL)
        out.append(Cancel(r.id, reason))

    def _cancel_visible(
        self, out: list[Action], reason: str, older_than: int | None = None
    ) -> None:
        for r in list(self._live.values()):
            if r.state is RState.SPECULATIVE:
                continue
            if older_than is None or r.turn_order < older_than:
                self._cancel(r, reason, out)
        self._drain(out)

    def _of_state(self, state: RState) -> list[_Response]:
        return [r for r in self._live.values() if r.state is state]

    def _running_count(self) -> int:
        return sum(1 for r in self._live.values() if r.state is RState.RUNNING)

    def _drain(self, out: list[Action]) -> None:
        """Start queued responses, oldest first, while slots are free."""
        free = self.max_inflight - self._running_count()
        for r in self._of_state(RState.QUEUED)[: max(free, 0)]:
            self._move(r, REvent.START)
            out.append(Start(r.id))

    def _trim_queue(self, out: list[Action]) -> None:
        queue = self._of_state(RState.QUEUED)
        for r in queue[: max(len(queue) - self.max_inflight, 0)]:
            self._cancel(r, "superseded", out)
