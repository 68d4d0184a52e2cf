"""SessionCore, with plain calls: random sessions against the protocol's guarantees, and a few
scenarios written out.

No event loop and no sockets: the test plays the adapter's part. It feeds client frames as the
wire gives them (parsed by `parse_client_frame`), plays the upstream streams the core asked
for (a delta, a completion or a failure may only come from a stream that was started and not
stopped), fires the timers it asked for, and checks what every client would have seen (the
accumulated `Publish` messages) against PROTOCOL.md "Responses".
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import orjson
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from realtime.core.config import SessionConfig
from realtime.core.inbound import parse_client_frame
from realtime.core.replies import RS, Completion, Failure
from realtime.core.session import (
    CancelTimer,
    CloseAll,
    Log,
    Publish,
    SendTo,
    SessionCore,
    StartStream,
    StartTimer,
    StopStream,
)

TERMINALS = ("response.done", "response.cancelled", "response.failed")


def new_core(**overrides: Any) -> SessionCore:
    counter = itertools.count(1)
    config = SessionConfig.from_defaults(model="m", **overrides)
    return SessionCore("s_test", config, new_id=lambda prefix: f"{prefix}{next(counter)}")


def frame(**fields: Any) -> Any:
    """A client message exactly as the wire gives it."""
    return parse_client_frame(orjson.dumps(fields))


def turn(order: int, transcript: str, *, eot: bool = False, fmt: bool = False, utt: str = ""):
    return frame(
        type="Turn",
        turn_order=order,
        transcript=transcript,
        end_of_turn=eot,
        turn_is_formatted=fmt,
        utterance=utt,
    )


def published(outputs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.message.type, dict(o.message.fields or {})) for o in outputs if type(o) is Publish]


def unlogged(outputs: list[Any]) -> list[Any]:
    return [o for o in outputs if not isinstance(o, Log)]


def of_type(outputs: list[Any], kind: type) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


# ---- random sessions --------------------------------------------------------------------------

WORDS = st.sampled_from(
    ["", "hi", "Hi.", "hi there", "Hi, there!", "book it", "what is the capital of France?"]
)
DELTAS = st.sampled_from(["Paris", " is", " the", " capital.", "ok", " ", "é"])
SPEAKER_LABELS = st.sampled_from([None, None, "A", "B", "UNKNOWN"])


class SessionMachine(RuleBasedStateMachine):
    """Drives one SessionCore with random input, plays the adapter, checks the guarantees."""

    @initialize(
        trigger=st.sampled_from(["end_of_turn", "formatted", "eager", "eager"]),
        mode=st.sampled_from(["cancel", "supersede", "keep", "keep"]),
        max_inflight=st.integers(1, 3),
        min_words=st.sampled_from([1, 1, 2]),
        wait=st.sampled_from([300, 300, 0]),
    )
    def setup(self, trigger: str, mode: str, max_inflight: int, min_words: int, wait: int):
        self.core = new_core(
            trigger=trigger,
            on_new_turn=mode,
            max_inflight=max_inflight,
            interrupt_min_words=min_words,
            format_wait_ms=wait,
        )
        self.t = 1.0
        self.steps = 0
        self.turn = 0
        self.utterance = ""
        self.finals: dict[int, set[str]] = {}  # turn_order -> transcripts of its finals
        # what clients saw
        self.pub: list[tuple[str, dict[str, Any]]] = []
        self.created: list[str] = []  # response ids, in creation order
        self.turn_of: dict[str, int] = {}
        self.shown: dict[str, list[str]] = {}  # rid -> published deltas
        self.terminal: dict[str, str] = {}  # rid -> its terminal type
        self.kept: dict[str, str] = {}  # rid -> what the history must keep of it
        # what the adapter was asked to do
        self.started: set[str] = set()
        self.stopped: set[str] = set()
        self.streams: set[str] = set()  # started, not stopped, not completed: may report
        self.completed: set[str] = set()  # its stream reported done or failed
        self.fed: dict[str, list[str]] = {}  # rid -> every delta its stream gave
        self.sent: set[str] = set()
        self.timers: set[int] = set()  # started, not cancelled, not fired
        self.dead_timers: set[int] = set()
        self.closes: list[tuple[int, bool]] = []  # (code, emitted by end())
        self.terminated = False  # Termination or an stt failure was fed
        self.ended = False  # end() was called
        self.joined: list[tuple[str, int, str]] = []  # (rid, deltas seen, text at the join)
        self.labels: dict[int, str] = {}  # turn_order -> the newest speaker_label given

    # ---- playing the adapter -------------------------------------------------------------

    def tick(self) -> float:
        self.t += 0.01
        return self.t

    def send(self, conn: int = 1, **fields: Any) -> list[Any]:
        self.steps += 1
        outs = self.core.on_message(conn, frame(**fields), self.tick())
        self.apply(outs)
        return outs

    def apply(self, outs: list[Any], *, by_end: bool = False) -> None:
        for o in outs:
            if type(o) is Publish:
                self.see(o.message.type, dict(o.message.fields or {}))
            elif isinstance(o, SendTo):
                assert o.conn in (1, 2), o
                assert o.message.type == "error", o
            elif isinstance(o, StartStream):
                rid = o.response_id
                assert not self.ended, f"StartStream({rid}) after end"
                assert rid not in self.started, f"second StartStream({rid})"
                assert rid not in self.terminal, f"StartStream({rid}) after its terminal"
                assert o.body["model"] == "m" and o.body["stream"] is True
                assert o.body["messages"][-1]["role"] == "user"
                self.started.add(rid)
                self.streams.add(rid)
                self.fed[rid] = []
            elif isinstance(o, StopStream):
                rid = o.response_id
                assert rid in self.started, f"StopStream({rid}) of a stream never started"
                assert rid not in self.stopped, f"second StopStream({rid})"
                self.stopped.add(rid)
                self.streams.discard(rid)
            elif isinstance(o, StartTimer):
                assert not self.ended, "StartTimer after end"
                assert o.turn_order not in self.timers, f"timer {o.turn_order} started twice"
                self.timers.add(o.turn_order)
            elif isinstance(o, CancelTimer):
                assert o.key in self.timers, f"CancelTimer({o.key}) of no live timer"
                self.timers.discard(o.key)
                self.dead_timers.add(o.key)
            elif isinstance(o, CloseAll):
                self.closes.append((o.code, by_end))
            else:
                assert isinstance(o, Log), o

    def see(self, kind: str, f: dict[str, Any]) -> None:
        """One message every client gets: guarantees 1, 2 and 4, and (c) no trace of a
        speculation that was never promoted."""
        self.pub.append((kind, f))
        rid = f.get("response_id")
        if rid is None or kind == "response.truncated":
            if kind == "response.truncated":
                assert rid in self.terminal
            return
        if kind == "response.created":
            assert rid not in self.turn_of, f"{rid} created twice"
            assert not self.ended, f"{rid} created after end"
            if self.created:  # guarantee 4 (a turn fires at most once: strictly increasing)
                last = self.turn_of[self.created[-1]]
                assert f["turn_order"] > last, f"{rid} of turn {f['turn_order']} after {last}"
            self.created.append(rid)
            self.turn_of[rid] = f["turn_order"]
            self.shown[rid] = []
            return
        assert rid in self.turn_of, f"{kind} of {rid} that was never created"
        assert rid not in self.terminal, f"{kind} of {rid} after its {self.terminal.get(rid)}"
        assert f["turn_order"] == self.turn_of[rid]
        if kind == "response.delta":
            self.shown[rid].append(f["delta"])
        elif kind == "response.queued":
            assert not self.shown[rid]
        elif kind in TERMINALS:
            self.terminal[rid] = kind
            shown = "".join(self.shown[rid])
            text = f["text"] if kind == "response.done" else f["delivered_text"]
            assert text == shown, f"{kind} of {rid}: {text!r} but the deltas say {shown!r}"
            # nothing the upstream gave is lost or made up
            assert text == "".join(self.fed.get(rid, [])), f"{rid} lost or invented text"
            self.kept[rid] = text
            for jrid, seen, head in self.joined:  # what a late joiner shows adds up
                if jrid == rid:
                    assert head + "".join(self.shown[rid][seen:]) == text
            if kind == "response.done":
                t = f["timings"]
                assert all(v >= 0 for v in t.values()), t
                assert t["ttft_ms"] <= t["total_ms"], t
            if kind == "response.cancelled":
                assert f["reason"] in ("interrupted", "superseded", "client", "shutdown")

    def end(self, reason: str, code: int) -> None:
        self.ended = True
        outs = self.core.end(reason, code, self.tick())
        self.apply(outs, by_end=True)
        # (g) every live reply got its terminal, every timer is gone, connections close
        assert outs and outs[-1] == CloseAll(code, outs[-1].reason)
        assert not self.timers, f"timers left after end: {self.timers}"
        assert self.core.replies == {}
        assert not self.streams, f"streams left running after end: {self.streams}"
        missing = [r for r in self.created if r not in self.terminal]
        assert not missing, f"created without a terminal: {missing}"

    # ---- client input --------------------------------------------------------------------

    @rule(
        step=st.sampled_from([-1, 0, 0, 0, 1, 1]),
        text=WORDS,
        eot=st.booleans(),
        fmt=st.booleans(),
        utt=WORDS,
        words=st.booleans(),
        speaker=SPEAKER_LABELS,
    )
    def turn_event(
        self, step: int, text: str, eot: bool, fmt: bool, utt: str, words: bool, speaker
    ):
        self.turn = max(0, self.turn + step)
        fields: dict[str, Any] = {
            "type": "Turn",
            "turn_order": self.turn,
            "transcript": text,
            "end_of_turn": eot,
            "turn_is_formatted": fmt,
            "utterance": utt,
        }
        if words:
            fields["words"] = [
                {"text": w, "start": 0, "end": 1, "confidence": 0.9, "word_is_final": True}
                for w in text.split()
            ]
        if speaker is not None:
            fields["speaker_label"] = speaker
            if not self.core.ended:  # once the session ended, no client message applies
                self.labels[self.turn] = speaker
        if eot:
            self.finals.setdefault(self.turn, set()).add(text)
        self.send(**fields)

    @rule(data=st.data(), speaker=SPEAKER_LABELS.filter(bool))
    def speaker_revision(self, data, speaker: str):
        """AssemblyAI's SpeakerRevision relabels a recorded turn (or any turn_order)."""
        recorded = sorted({e["turn_order"] for e in self.core.conversation.history()})
        order = data.draw(st.sampled_from(recorded or [self.turn]))
        outs = self.send(
            type="SpeakerRevision", revisions=[{"turn_order": order, "speaker_label": speaker}]
        )
        if not self.core.ended:  # once the session ended, no client message applies
            self.labels[order] = speaker
            assert unlogged(outs) == []
            for e in self.core.conversation.history():
                if e["role"] == "user" and e["turn_order"] == order:
                    assert e.get("speaker") == (None if speaker == "UNKNOWN" else speaker)

    @rule(text=WORDS, final=WORDS, same=st.booleans(), copy=st.booleans())
    def spoken_turn(self, text: str, final: str, same: bool, copy: bool):
        """A well-formed turn: a partial with an utterance, the final (often the same words,
        so that speculations get promoted), maybe its formatted copy."""
        if same:
            final = text.upper() + "."
        self.turn += 1
        finals = self.finals.setdefault(self.turn, set())
        self.send(**_turn_fields(self.turn, text, utt=text))
        finals.add(final)
        self.send(**_turn_fields(self.turn, final, eot=True))
        if copy:
            finals.add(final.capitalize())
            self.send(**_turn_fields(self.turn, final.capitalize(), eot=True, fmt=True))

    @rule(text=WORDS.filter(bool), new_turn=st.booleans())
    def partial(self, text: str, new_turn: bool):
        """A partial with an utterance: under `eager`, a speculation starts (its stream may
        then give deltas, or end, before the final decides on it)."""
        self.turn += new_turn
        self.utterance = text
        self.send(**_turn_fields(self.turn, text, utt=text))

    @rule(same=st.booleans(), other=WORDS, copy=st.booleans())
    def final(self, same: bool, other: str, copy: bool):
        """The final of the current turn: often the last utterance's words, case and
        punctuation aside (a confirmed speculation), else other words."""
        text = self.utterance.upper() + "!" if same else other
        self.finals.setdefault(self.turn, set()).add(text)
        self.send(**_turn_fields(self.turn, text, eot=True))
        if copy:
            self.finals[self.turn].add(text.capitalize())
            self.send(**_turn_fields(self.turn, text.capitalize(), eot=True, fmt=True))

    @rule(
        text=WORDS.filter(bool),
        deltas=st.lists(DELTAS, max_size=3),
        ends=st.sampled_from([None, None, "done", "failed"]),
        same=st.booleans(),
    )
    def speculation_race(self, text: str, deltas: list[str], ends: str | None, same: bool):
        """A new turn's partial, its speculation's stream giving text (and maybe ending)
        before the final, then the final: the race `eager` exists for."""
        self.turn += 1
        self.utterance = text
        outs = self.send(**_turn_fields(self.turn, text, utt=text))
        for o in of_type(outs, StartStream):
            if o.response_id in self.streams:
                for d in deltas:
                    self.fed[o.response_id].append(d)
                    self.apply(self.core.on_delta(o.response_id, d, self.tick()))
                if ends:
                    self.stream_end(o.response_id, fail=ends == "failed")
        self.final(same, "book it", copy=False)

    @precondition(lambda self: not self.ended)
    @rule(role=st.sampled_from(["viewer", "participant"]))
    def join(self, role: str):
        """A late joiner: its session.created lists every reply still streaming with its text
        so far, which the deltas that follow continue (PROTOCOL.md "Connecting")."""
        outs = self.core.join(3, role)
        assert len(outs) == 1 and isinstance(outs[0], SendTo) and outs[0].conn == 3
        created = outs[0].message
        assert created.type == "session.created" and created.fields["role"] == role
        history = created.fields["history"]
        streaming = [e for e in history if e.get("status") == "in_progress"]
        assert [e for e in history if e not in streaming] == self.core.conversation.history()
        live = [rid for rid, r in self.core.replies.items() if r.state is RS.VISIBLE]
        assert sorted(e["response_id"] for e in streaming) == sorted(live)
        for e in streaming:
            rid = e["response_id"]
            assert e["text"] == "".join(self.shown[rid]) and e["turn_order"] == self.turn_of[rid]
            self.joined.append((rid, len(self.shown[rid]), e["text"]))

    @rule()
    def speech_started(self):
        self.send(type="SpeechStarted", timestamp=1000)

    # After the end nothing applies (test_nothing_fires_after_end_client checks that).
    @precondition(lambda self: not self.ended)
    @rule(
        trigger=st.sampled_from([None, "end_of_turn", "formatted", "eager"]),
        mode=st.sampled_from([None, "cancel", "supersede", "keep"]),
        max_inflight=st.sampled_from([None, 1, 2, 4]),
        preset=st.sampled_from([None, None, None, "assistant", "per_turn"]),
        bad=st.sampled_from([None, None, None, ("trigger", "soon"), ("max_inflight", 0)]),
    )
    def session_update(self, trigger, mode, max_inflight, preset, bad):
        patch = {
            k: v
            for k, v in {
                "preset": preset,
                "trigger": trigger,
                "on_new_turn": mode,
                "max_inflight": max_inflight,
            }.items()
            if v is not None
        }
        if bad is not None:
            patch[bad[0]] = bad[1]
        before = self.core.config
        policy = self.core.policy
        was = (policy.trigger, policy.on_new_turn, policy.max_inflight)
        conn = 2 if bad else 1
        outs = unlogged(self.send(conn, type="session.update", session=patch))
        if bad:  # nothing of a refused update takes effect
            assert len(outs) == 1 and isinstance(outs[0], SendTo) and outs[0].conn == conn
            assert outs[0].message.fields["error"]["code"] == "invalid_config"
            assert self.core.config is before
            assert (policy.trigger, policy.on_new_turn, policy.max_inflight) == was
            return
        kinds = [k for k, _ in published(outs)]
        assert kinds.count("session.updated") == 1
        c = self.core.config
        for name in ("trigger", "on_new_turn", "max_inflight"):
            if name in patch:
                assert getattr(c, name) == patch[name]
            assert getattr(self.core.policy, name) == getattr(c, name)

    @rule()
    def client_cancel(self):
        outs = self.send(type="response.cancel")
        # every visible reply that was live is cancelled, reason client
        for kind, f in published(outs):
            if kind == "response.cancelled":
                assert f["reason"] == "client"
        assert all(r.state in (RS.HIDDEN, RS.HIDDEN_ENDED) for r in self.core.replies.values())

    @rule(data=st.data())
    def truncate(self, data):
        finished = sorted(self.terminal)
        live = sorted(self.core.replies)
        choices = ["unknown"] + (["valid", "valid", "not_prefix"] if finished else [])
        choices += ["live"] if live else []
        how = data.draw(st.sampled_from(choices))
        if how == "unknown":
            rid, text = "r_999", ""
        elif how == "live":
            rid, text = data.draw(st.sampled_from(live)), ""
        else:
            rid = data.draw(st.sampled_from(finished))
            kept = self.kept[rid]
            if how == "valid":
                text = kept[: data.draw(st.integers(0, len(kept)))]
            else:
                text = kept + "x"
        valid = rid in self.kept and self.kept[rid] != "" and self.kept[rid].startswith(text)
        outs = unlogged(self.send(2, type="response.truncate", response_id=rid, text=text))
        if self.core.ended:
            assert outs == []  # once the session ended, no client message applies
        elif valid:
            assert published(outs) == [("response.truncated", {"response_id": rid, "text": text})]
            self.kept[rid] = text
        else:
            assert len(outs) == 1 and isinstance(outs[0], SendTo) and outs[0].conn == 2, outs
            assert outs[0].message.fields["error"]["code"] == "invalid_event"

    @precondition(lambda self: self.steps > 20)
    @rule(stt=st.sampled_from([False, False, True]))
    def termination(self, stt: bool):
        """The end of input (late in a run, so that runs explore states first)."""
        if stt:
            self.steps += 1
            self.apply(self.core.on_stt_failed(1011, "upstream gone", self.tick()))
        else:
            self.send(type="Termination")
        self.terminated = True

    @precondition(lambda self: self.steps > 30 and not self.ended)
    @rule(reason=st.sampled_from(["client", "shutdown"]))
    def end_session(self, reason: str):
        self.end(reason, 1000 if reason == "client" else 1001)

    # ---- upstream streams and timers ----------------------------------------------------

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), text=DELTAS, n=st.integers(1, 3))
    def delta(self, data, text: str, n: int):
        rid = data.draw(st.sampled_from(sorted(self.streams)))
        for _ in range(n):
            self.fed[rid].append(text)
            outs = self.core.on_delta(rid, text, self.tick())
            self.apply(outs)

    @precondition(lambda self: self.streams)
    @rule(data=st.data())
    def tool_delta(self, data):
        rid = data.draw(st.sampled_from(sorted(self.streams)))
        delta = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{"}}
        outs = self.core.on_tool_delta(rid, delta)
        self.apply(outs)
        r = self.core.replies[rid]
        assert len(outs) == (1 if r.state is RS.VISIBLE else 0)

    @precondition(lambda self: self.streams - self.sent)
    @rule(data=st.data(), wait=st.sampled_from([0.0, 0.5]))
    def request_sent(self, data, wait: float):
        """The request got its slot (maybe after waiting for the rate limit)."""
        rid = data.draw(st.sampled_from(sorted(self.streams - self.sent)))
        self.sent.add(rid)
        if wait and not self.fed[rid]:
            self.apply(self.core.on_queued(rid, wait))
        self.core.on_sent(rid, self.tick())

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), fail=st.booleans())
    def stream_ends(self, data, fail: bool):
        rid = data.draw(st.sampled_from(sorted(self.streams)))
        self.stream_end(rid, fail)

    def stream_end(self, rid: str, fail: bool) -> None:
        self.streams.discard(rid)
        self.completed.add(rid)
        self.steps += 1
        if fail:
            outs = self.core.on_failed(rid, Failure("gateway_error", "x", 503), self.tick())
        else:
            completion = Completion(finish_reason="stop", usage={"prompt_tokens": 7})
            outs = self.core.on_done(rid, completion, self.tick())
        self.apply(outs)

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def timer_fires(self, data):
        key = data.draw(st.sampled_from(sorted(self.timers)))
        self.timers.discard(key)
        self.dead_timers.add(key)
        self.steps += 1
        self.apply(self.core.on_timer(key, self.tick()))

    @precondition(lambda self: self.dead_timers)
    @rule(data=st.data())
    def stale_timer_fires(self, data):
        """A timer that fired while it was being cancelled changes nothing."""
        key = data.draw(st.sampled_from(sorted(self.dead_timers)))
        before = len(self.pub)
        self.apply(self.core.on_timer(key, self.tick()))
        assert len(self.pub) == before

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def streams_belong_to_live_replies(self):
        replies = self.core.replies
        # (f) a reply that left (cancelled, discarded) had its stream stopped or finished
        for rid in self.started - set(replies):
            assert rid in self.stopped or rid in self.completed, f"{rid}: its stream leaks"
        for rid in self.stopped:
            assert rid not in replies, f"{rid} is live with its stream stopped"
        assert not self.started - set(self.fed)
        # every live reply can still make progress: the stream it needs is running
        for rid, r in replies.items():
            assert not r.terminal
            if r.state is RS.HIDDEN:
                assert rid in self.streams, f"hidden {rid} has no stream"
            elif r.state is RS.HIDDEN_ENDED:
                assert rid in self.completed
            elif r.streaming:
                assert rid in self.streams, f"visible {rid} has no stream"
            assert r.visible == (rid in self.turn_of)

    @invariant()
    def policy_and_core_agree(self):
        live = {i.response_id: i.state for i in self.core.policy.live()}
        assert set(live) == set(self.core.replies), (live, list(self.core.replies))
        for rid, r in self.core.replies.items():
            if r.state in (RS.HIDDEN, RS.HIDDEN_ENDED):
                expected = "speculative"
            else:
                expected = "running" if r.streaming else "queued"
            assert live[rid] == expected, (rid, r.state, live[rid])

    @invariant()
    def timers_follow_the_waiting_turn(self):
        waiting = None if self.ended else self.core.policy.waiting_for_format()
        assert self.timers <= {waiting}, f"timers {self.timers}, waiting for {waiting}"
        if waiting is not None:
            assert waiting in self.timers, f"turn {waiting} waits for a timer never started"

    @invariant()
    def history_holds_what_was_delivered(self):
        """(e) the history: each fired turn's user text, then what was delivered of its reply
        (or the truncated prefix), in creation order; nothing of a live or hidden reply."""
        expected: list[tuple[str, int, str | None]] = []
        for rid in self.created:
            expected.append(("user", self.turn_of[rid], None))
            if self.kept.get(rid):
                expected.append(("assistant", self.turn_of[rid], self.kept[rid]))
        got = self.core.conversation.history()
        assert [(e["role"], e["turn_order"]) for e in got] == [(r, t) for r, t, _ in expected]
        for e, (role, order, text) in zip(got, expected, strict=True):
            if role == "assistant":
                assert e["text"] == text
            else:
                assert e["text"] in self.finals.get(order, set()), (e, self.finals.get(order))
                if "speaker" in e:  # a turn's speaker is the newest label given for it
                    assert e["speaker"] == self.labels.get(order), (e, self.labels.get(order))

    @invariant()
    def closes_after_termination(self):
        """(h) after the end of input, one CloseAll(1000) once no reply is live."""
        own = [code for code, by_end in self.closes if not by_end]
        assert own in ([], [1000]), own
        if own:
            assert self.terminated and not self.core.replies
        if self.terminated and not self.ended and not self.core.replies:
            assert own == [1000], "input ended and nothing is live, yet the session stays open"

    def teardown(self):
        if not hasattr(self, "core"):
            return
        if not self.ended and self.steps % 2:
            # Let every stream finish: nothing may be left waiting but a hidden speculation
            # whose end of turn has not come (after the end of input, nothing at all).
            for _ in range(100):
                if not self.streams:
                    break
                self.stream_end(min(self.streams), fail=False)
                self.check_all()
            assert all(r.state is RS.HIDDEN_ENDED for r in self.core.replies.values()), [
                (rid, r.state, r.streaming) for rid, r in self.core.replies.items()
            ]
            if self.terminated:
                assert not self.core.replies
        if not self.ended:
            self.end("shutdown", 1001)
        self.check_all()
        counts = Counter(self.terminal.values())
        assert sum(counts.values()) == len(self.created)

    def check_all(self):
        self.streams_belong_to_live_replies()
        self.policy_and_core_agree()
        self.timers_follow_the_waiting_turn()
        self.history_holds_what_was_delivered()
        self.closes_after_termination()


def _turn_fields(order: int, transcript: str, *, eot=False, fmt=False, utt="") -> dict[str, Any]:
    return {
        "type": "Turn",
        "turn_order": order,
        "transcript": transcript,
        "end_of_turn": eot,
        "turn_is_formatted": fmt,
        "utterance": utt,
    }


# No `explain` phase: it traces every line of every run, which makes this machine ten times
# slower; a failure still shrinks to its shortest steps.
SessionMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestSessionStateMachine = SessionMachine.TestCase


# ---- scenarios --------------------------------------------------------------------------------


def test_a_confirmed_speculation_shows_its_held_deltas_right_after_created():
    core = new_core(trigger="eager")
    question = "what is the capital of france"
    outs = core.on_message(1, turn(1, question, utt=question), 1.0)
    assert [type(o) for o in outs] == [StartStream]  # upstream only: clients see nothing
    rid = outs[0].response_id
    assert outs[0].body["messages"][-1] == {"role": "user", "content": question}
    assert core.on_delta(rid, "Paris", 1.1) == []
    assert core.on_delta(rid, " is", 1.2) == []

    outs = core.on_message(1, turn(1, "What is the capital of France?", eot=True), 1.5)
    assert of_type(outs, StartStream) == [] and of_type(outs, StopStream) == []
    assert published(outs) == [
        ("response.created", {"response_id": rid, "turn_order": 1, "model": "m"}),
        ("response.delta", {"response_id": rid, "turn_order": 1, "delta": "Paris is"}),
    ]
    assert published(core.on_delta(rid, " Paris.", 1.6)) == [
        ("response.delta", {"response_id": rid, "turn_order": 1, "delta": " Paris."})
    ]
    [(kind, done)] = published(core.on_done(rid, Completion(finish_reason="stop"), 2.0))
    assert kind == "response.done" and done["text"] == "Paris is Paris."
    assert done["timings"]["speculative_head_start_ms"] == 500.0
    assert done["timings"]["ttft_ms"] == 0.0 and done["timings"]["total_ms"] == 500.0
    assert core.conversation.history() == [
        {"turn_order": 1, "role": "user", "text": "What is the capital of France?"},
        {"turn_order": 1, "role": "assistant", "text": "Paris is Paris."},
    ]


def test_a_speculation_that_ended_before_its_final_is_shown_whole_at_promotion():
    core = new_core(trigger="eager")
    [start] = core.on_message(1, turn(1, "hi there", utt="hi there"), 1.0)
    rid = start.response_id
    assert core.on_delta(rid, "Hello!", 1.1) == []
    assert core.on_done(rid, Completion(finish_reason="stop"), 1.2) == []
    outs = core.on_message(1, turn(1, "Hi, there!", eot=True), 1.5)
    assert [k for k, _ in published(outs)] == [
        "response.created",
        "response.delta",
        "response.done",
    ]
    assert published(outs)[2][1]["text"] == "Hello!"
    assert core.replies == {}


def test_an_unconfirmed_speculation_leaves_no_trace_for_clients():
    core = new_core(trigger="eager")
    [start] = core.on_message(
        1, turn(1, "what is the capital of spain", utt="what is the capital of spain"), 1.0
    )
    spec = start.response_id
    assert core.on_delta(spec, "Madrid", 1.1) == []
    outs = core.on_message(1, turn(1, "What is the capital of France?", eot=True), 1.5)
    assert StopStream(spec) in outs  # aborted upstream
    [fresh] = of_type(outs, StartStream)
    assert fresh.response_id != spec
    assert fresh.body["messages"][-1]["content"] == "What is the capital of France?"
    assert published(outs) == [
        ("response.created", {"response_id": fresh.response_id, "turn_order": 1, "model": "m"})
    ]
    assert core.on_delta(spec, " late", 1.6) == []  # a report from the aborted stream
    assert core.on_done(spec, Completion(), 1.6) == []
    assert spec not in core.replies


def test_a_speculation_whose_turn_ends_empty_publishes_nothing_at_all():
    core = new_core(trigger="eager")
    [start] = core.on_message(1, turn(1, "um", utt="um"), 1.0)
    assert core.on_delta(start.response_id, "Yes?", 1.1) == []
    outs = core.on_message(1, turn(1, "", eot=True), 1.2)
    assert outs == [StopStream(start.response_id)]
    outs = core.on_message(1, frame(type="Termination"), 1.3)
    assert published(outs) == [] and outs[-1] == CloseAll(1000, outs[-1].reason)
    assert core.conversation.history() == []


def test_a_refused_session_update_changes_nothing():
    core = new_core()
    config, policy = core.config, core.policy
    patch = {"on_new_turn": "keep", "max_inflight": 2, "trigger": "soon"}
    outs = unlogged(core.on_message(1, frame(type="session.update", session=patch), 1.0))
    assert len(outs) == 1 and isinstance(outs[0], SendTo) and outs[0].conn == 1
    assert outs[0].message.type == "error"
    assert outs[0].message.fields["error"]["code"] == "invalid_config"
    assert "trigger" in outs[0].message.fields["error"]["message"]
    assert core.config is config and core.policy is policy
    assert (policy.trigger, policy.on_new_turn, policy.max_inflight) == ("end_of_turn", "cancel", 4)
    # the session still runs under the old config: a new turn interrupts the live reply
    [start] = of_type(core.on_message(1, turn(1, "hi", eot=True), 1.1), StartStream)
    outs = core.on_message(1, turn(2, "wait", eot=False), 1.2)
    assert [k for k, _ in published(outs)] == ["response.cancelled"]
    assert StopStream(start.response_id) in outs


def test_the_formatted_final_fires_the_turn_and_cancels_its_timer():
    core = new_core(trigger="formatted")
    outs = core.on_message(1, turn(1, "what time is it", eot=True), 1.0)
    assert outs == [StartTimer(1, 300)]
    outs = core.on_message(1, turn(1, "What time is it?", eot=True, fmt=True), 1.1)
    [start] = of_type(outs, StartStream)
    assert start.body["messages"][-1]["content"] == "What time is it?"
    assert [k for k, _ in published(outs)] == ["response.created"]
    assert CancelTimer(1) in outs
    assert core.on_timer(1, 1.3) == []  # it fired while being cancelled: moot


def test_the_format_timer_fires_the_unformatted_final_and_the_copy_replaces_it():
    core = new_core(trigger="formatted")
    assert core.on_message(1, turn(1, "what time is it", eot=True), 1.0) == [StartTimer(1, 300)]
    outs = core.on_timer(1, 1.3)
    [start] = of_type(outs, StartStream)
    assert start.body["messages"][-1]["content"] == "what time is it"
    assert [k for k, _ in published(outs)] == ["response.created"]
    assert of_type(outs, CancelTimer) == []  # it ran out: nothing to cancel
    outs = core.on_message(1, turn(1, "What time is it?", eot=True, fmt=True), 1.4)
    assert outs == []  # a late formatted copy fires nothing
    core.on_done(start.response_id, Completion(), 1.5)
    assert core.conversation.history() == [
        {"turn_order": 1, "role": "user", "text": "What time is it?"}
    ]


def test_a_newer_turn_fires_the_waiting_one_first_and_cancels_its_timer():
    core = new_core(trigger="formatted", on_new_turn="keep")
    core.on_message(1, turn(1, "one", eot=True), 1.0)
    outs = core.on_message(1, turn(2, "two", eot=True), 1.1)
    created = [f["turn_order"] for k, f in published(outs) if k == "response.created"]
    assert created == [1]
    assert CancelTimer(1) in outs and StartTimer(2, 300) in outs


def test_termination_closes_once_the_last_reply_ends():
    core = new_core()
    [start] = of_type(core.on_message(1, turn(1, "hi", eot=True), 1.0), StartStream)
    outs = core.on_message(1, frame(type="Termination"), 1.1)
    assert of_type(outs, CloseAll) == []  # the reply in flight finishes first
    assert core.on_message(1, turn(2, "more", eot=True), 1.2) == []  # input has ended
    core.on_delta(start.response_id, "Hello", 1.3)
    outs = core.on_done(start.response_id, Completion(), 1.4)
    assert [k for k, _ in published(outs)] == ["response.done"]
    assert of_type(outs, CloseAll) == [CloseAll(1000, "session ended")]
    assert of_type(core.on_message(1, frame(type="Termination"), 1.5), CloseAll) == []


def test_termination_fires_a_turn_that_waits_for_its_formatted_copy():
    core = new_core(trigger="formatted")
    core.on_message(1, turn(1, "bye", eot=True), 1.0)
    outs = core.on_message(1, frame(type="Termination"), 1.1)
    assert [k for k, _ in published(outs)] == ["response.created"]
    assert CancelTimer(1) in outs and of_type(outs, CloseAll) == []


def test_shutdown_ends_every_reply_and_closes_with_1001():
    core = new_core(trigger="eager", on_new_turn="keep", max_inflight=1)
    core.on_message(1, turn(1, "one", eot=True), 1.0)  # streaming
    core.on_message(1, turn(2, "two", eot=True), 1.1)  # queued
    [spec] = core.on_message(1, turn(3, "three", utt="three"), 1.2)  # hidden
    outs = core.end("shutdown", 1001, 2.0)
    cancelled = [(f["response_id"], f["reason"]) for k, f in published(outs)]
    assert cancelled == [("r_1", "shutdown"), ("r_2", "shutdown")]
    assert StopStream("r_1") in outs and StopStream(spec.response_id) in outs
    assert StopStream("r_2") not in outs  # it never started
    assert of_type(outs, StartStream) == []  # the freed slot starts nothing
    assert outs[-1] == CloseAll(1001, "server shutting down")
    assert core.replies == {} and core.end("shutdown", 1001, 2.1) == []


def test_nothing_fires_after_end_client():
    core = new_core(trigger="formatted")
    assert core.on_message(1, turn(1, "hi", eot=True), 1.0) == [StartTimer(1, 300)]
    outs = core.end("client", 1000, 1.1)
    assert CancelTimer(1) in outs and outs[-1] == CloseAll(1000, "")
    outs = core.on_message(1, frame(type="session.update", session={"trigger": "eager"}), 1.2)
    assert of_type(outs, StartStream) == []
    assert [k for k, _ in published(outs) if k.startswith("response.")] == []
    assert core.replies == {}


def test_a_confirmed_speculation_shows_its_held_tool_call_deltas():
    core = new_core(trigger="eager")
    [start] = core.on_message(1, turn(1, "call bob", utt="call bob"), 1.0)
    rid = start.response_id
    first = {"index": 0, "id": "c1", "function": {"name": "call", "arguments": ""}}
    assert core.on_tool_delta(rid, first) == []  # hidden: nothing shown yet
    outs = core.on_message(1, turn(1, "Call Bob.", eot=True), 1.2)
    assert [k for k, _ in published(outs)] == ["response.created", "response.tool_call.delta"]
