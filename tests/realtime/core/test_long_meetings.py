"""Long meetings in the pure core: speakers, SpeakerRevision, the incremental summary and its
cadence (PROTOCOL.md "Long conversations"). Plain calls, no event loop: the test plays the
adapter's part (streams, timers)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from realtime.core.config import ConfigError, SessionConfig
from realtime.core.context import NO_SUMMARY, Conversation, speaker_line
from realtime.core.inbound import (
    ProtocolError,
    ResponseCreate,
    SpeakerRevision,
    TurnMessage,
    parse_client_frame,
)
from realtime.core.replies import Completion, Failure
from realtime.core.session import (
    CancelTimer,
    CloseAll,
    Publish,
    SendTo,
    SessionCore,
    StartStream,
    StartTimer,
    StopStream,
)

HISTORY_PROMPT = "Transcript:\n{{history}}"


def new_core(**overrides: Any) -> SessionCore:
    counter = itertools.count(1)
    config = SessionConfig.from_defaults(model="m", **overrides)
    return SessionCore("s_test", config, new_id=lambda prefix: f"{prefix}{next(counter)}")


def frame(**fields: Any) -> Any:
    return parse_client_frame(orjson.dumps(fields))


def final(order: int, text: str, speaker: str | None = None) -> Any:
    fields: dict[str, Any] = {
        "type": "Turn",
        "turn_order": order,
        "transcript": text,
        "end_of_turn": True,
        "turn_is_formatted": True,
    }
    if speaker is not None:
        fields["speaker_label"] = speaker
    return frame(**fields)


def starts(outputs: list[Any]) -> list[StartStream]:
    return [o for o in outputs if isinstance(o, StartStream)]


def user_content(start: StartStream) -> str:
    return str(start.body["messages"][-1]["content"])


# ---- parsing ----------------------------------------------------------------------------------


def test_speaker_label_and_speaker_revision_parse():
    m = final(3, "hello", "B")
    assert isinstance(m, TurnMessage) and m.event.speaker == "B"
    assert final(3, "hello").event.speaker is None
    rev = frame(
        type="SpeakerRevision",
        revisions=[
            {
                "turn_order": 3,
                "speaker_label": "B",
                "words": [{"text": "Hello", "speaker": "B", "start": 1200, "end": 1450}],
            },
            {"turn_order": 4, "speaker_label": "A"},
        ],
    )
    assert rev == SpeakerRevision(((3, "B"), (4, "A")))
    for bad in ({"revisions": "x"}, {"revisions": [1]}, {"revisions": [{"turn_order": 1}]}):
        with pytest.raises(ProtocolError) as err:
            frame(type="SpeakerRevision", **bad)
        assert err.value.code == "invalid_event"
    assert frame(type="response.create") == ResponseCreate(None)
    assert frame(type="response.create", reason="end") == ResponseCreate("end")


# ---- speakers in the history and the prompt ---------------------------------------------------


def test_speaker_line_rendering():
    assert speaker_line("hi", "A") == "A: hi"
    assert speaker_line("hi", "UNKNOWN") == "?: hi"
    assert speaker_line("hi", "PENDING") == "?: hi"
    assert speaker_line("hi", None) == "hi"


def test_conversation_keeps_and_relabels_speakers():
    conv = Conversation()
    conv.add_user(0, "hello all", "A")
    conv.add_user(1, "hi", "UNKNOWN")
    conv.add_user(2, "no labels")
    history = conv.history()
    assert history[0]["speaker"] == "A"
    assert "speaker" not in history[1] and "speaker" not in history[2]
    assert conv.relabel(1, "B") and not conv.relabel(9, "C")
    assert conv.history()[1]["speaker"] == "B"
    cfg = SessionConfig(instructions="", prompt=HISTORY_PROMPT)
    content = conv.build_messages(cfg, 2)[-1]["content"]
    assert content == "Transcript:\nA: hello all\nB: hi\nno labels"


def test_turn_speakers_reach_the_prompt_and_revisions_relabel_the_next_request():
    core = new_core(prompt=HISTORY_PROMPT, instructions="", on_new_turn="keep")
    out = core.on_message(1, final(0, "welcome everyone", "A"), 0.0)
    assert user_content(starts(out)[0]) == "Transcript:\nA: welcome everyone"
    out = core.on_message(1, final(1, "thanks", "UNKNOWN"), 1.0)
    assert user_content(starts(out)[0]) == "Transcript:\nA: welcome everyone\n?: thanks"
    revision = frame(
        type="SpeakerRevision",
        revisions=[
            {"turn_order": 0, "speaker_label": "C"},
            {"turn_order": 1, "speaker_label": "B"},
        ],
    )
    assert core.on_message(1, revision, 2.0) == []
    out = core.on_message(1, final(2, "let us start", "A"), 3.0)
    assert user_content(starts(out)[0]) == (
        "Transcript:\nC: welcome everyone\nB: thanks\nA: let us start"
    )
    joined = core.join(2, "viewer")[0]
    assert isinstance(joined, SendTo)
    history = joined.message.fields["history"]  # type: ignore[index]
    assert [h.get("speaker") for h in history if h["role"] == "user"] == ["C", "B", "A"]


def test_a_revision_before_the_turn_fires_is_kept_for_it():
    core = new_core(prompt=HISTORY_PROMPT, instructions="")
    revision = frame(type="SpeakerRevision", revisions=[{"turn_order": 0, "speaker_label": "B"}])
    core.on_message(1, revision, 0.0)
    out = core.on_message(1, final(0, "hello", "A"), 0.1)  # the turn's own label is newer
    assert user_content(starts(out)[0]) == "Transcript:\nA: hello"
    core.on_message(1, revision, 0.2)
    out = core.on_message(1, final(1, "next"), 0.3)
    assert user_content(starts(out)[0]) == "Transcript:\nB: hello\nnext"


def test_done_reply_keeps_speakers_out_of_assistant_lines():
    core = new_core(prompt=HISTORY_PROMPT, instructions="", on_new_turn="keep")
    out = core.on_message(1, final(0, "hello", "A"), 0.0)
    rid = starts(out)[0].response_id
    core.on_delta(rid, "reply", 0.1)
    out = core.on_done(rid, Completion("stop", None, None, None, None), 0.2)
    assert any(isinstance(o, Publish) and o.message.type == "response.done" for o in out)
    out = core.on_message(1, final(1, "bye", "B"), 0.3)
    assert user_content(starts(out)[0]) == "Transcript:\nA: hello\nB: bye"


# ---- the incremental summary and its cadence ------------------------------------------------

SPEAKERS = ("A", "B", "C")


class Meeting:
    """Plays the adapter for a meeting: streams the core starts (each answered with a summary
    text when the test says), and timers (run when the clock passes them)."""

    def __init__(self, **overrides: Any) -> None:
        config = {"preset": "summary", "instructions": "Summarize.", **overrides}
        self.core = new_core(**config)
        self.now = 0.0
        self.streams: dict[str, StartStream] = {}  # started, not ended
        self.started: list[StartStream] = []
        self.timers: dict[int, float] = {}
        self.published: list[Any] = []
        self.closed = False
        self.steps: list[tuple[int, int]] = []  # folded ranges, in order
        self.max_in_flight = 0

    def feed(self, outputs: list[Any]) -> None:
        for o in outputs:
            if isinstance(o, StartStream):
                self.streams[o.response_id] = o
                self.started.append(o)
            elif isinstance(o, StopStream):
                self.streams.pop(o.response_id, None)
            elif isinstance(o, StartTimer):
                self.timers[o.turn_order] = self.now + o.delay_ms / 1000
            elif isinstance(o, CancelTimer):
                self.timers.pop(o.key, None)
            elif isinstance(o, Publish):
                self.published.append(o.message)
            elif isinstance(o, CloseAll):
                self.closed = True
        self.max_in_flight = max(self.max_in_flight, len(self.streams))

    def advance(self, to: float) -> None:
        while True:
            due = sorted((at, key) for key, at in self.timers.items() if at <= to)
            if not due:
                break
            at, key = due[0]
            del self.timers[key]
            self.now = max(self.now, at)
            self.feed(self.core.on_timer(key, self.now))
        self.now = max(self.now, to)

    def send(self, message: Any) -> None:
        self.feed(self.core.on_message(1, message, self.now))

    def complete(self, text: str) -> str | None:
        """End the running stream (at most one) with `text`; its id."""
        assert len(self.streams) <= 1
        if not self.streams:
            return None
        rid = next(iter(self.streams))
        self.streams.pop(rid)
        before = self.core.conversation.folded_upto
        self.feed(self.core.on_delta(rid, text, self.now))
        self.feed(self.core.on_done(rid, Completion("stop", None, None, None, None), self.now))
        after = self.core.conversation.folded_upto
        if after != before:
            self.steps.append((before + 1, after))
        return rid

    def tokens(self, start: StartStream) -> int:
        conv = self.core.conversation
        return sum(conv.estimate_tokens(str(m["content"])) + 4 for m in start.body["messages"])


def said(i: int) -> str:
    return f"t{i} we discussed item number {i} and agreed to follow up on it next week."


def test_the_summary_preset_defaults():
    cfg = SessionConfig().update({"preset": "summary"})
    assert cfg.summary_every == {"turns": 5, "seconds": 30}
    assert "{{summary}}" in (cfg.prompt or "") and "{{history}}" in (cfg.prompt or "")
    assert (
        SessionConfig().update({"preset": "summary"}).update({"preset": "assistant"}).summary_every
        is None
    )
    assert cfg.update({"summary_every": {"turns": 3}}).summary_every == {
        "turns": 3,
        "seconds": None,
    }
    for bad in ({}, {"turns": 0}, {"seconds": 0.5}, {"turns": True}, {"x": 1}, [], 5):
        with pytest.raises(ConfigError) as err:
            cfg.update({"summary_every": bad})
        assert err.value.message.startswith("summary_every")
    created = new_core().join(1, "viewer")[0]
    assert isinstance(created, SendTo) and created.message.fields["summary"] is None  # type: ignore[index]


def test_cadence_fires_at_the_nth_turn_with_the_previous_summary():
    m = Meeting()
    for i in range(4):
        m.send(final(i, said(i), SPEAKERS[i % 3]))
        m.advance(m.now + 1)
    assert m.started == [] and -1 in m.timers  # the seconds timer runs, no request yet
    m.send(final(4, said(4), "B"))
    assert len(m.started) == 1
    first = user_content(m.started[0])
    assert NO_SUMMARY in first and f"A: {said(0)}" in first and f"B: {said(4)}" in first
    assert -1 not in m.timers
    created = [p for p in m.published if p.type == "response.created"]
    assert len(created) == 1 and created[0].fields["turn_order"] == 4
    m.complete("SUMMARY-ONE")
    assert m.core.conversation.summary == "SUMMARY-ONE" and m.steps == [(0, 4)]
    # the next request holds the summary and only the turns since
    for i in range(5, 10):
        m.send(final(i, said(i), "C"))
    second = user_content(m.started[-1])
    assert len(m.started) == 2 and "SUMMARY-ONE" in second
    assert said(4) not in second and said(5) in second and said(9) in second
    joined = m.core.join(2, "viewer")[0]
    assert joined.message.fields["summary"] == "SUMMARY-ONE"  # type: ignore[union-attr]


def test_cadence_fires_after_the_seconds_with_a_new_turn_only():
    m = Meeting()
    m.advance(100)
    assert m.started == [] and not m.timers  # no turn: nothing to summarize, no timer
    m.send(final(0, said(0), "A"))
    assert m.timers == {-1: pytest.approx(130.0)}
    m.advance(129.9)
    assert m.started == []
    m.advance(130.0)
    assert len(m.started) == 1 and said(0) in user_content(m.started[0])
    m.complete("S1")
    assert not m.timers  # no new turn: no timer
    m.advance(200)
    m.send(final(1, said(1), "B"))  # 70 s since the last summary: due at once
    assert len(m.started) == 2


def test_at_most_one_summary_in_flight_and_the_due_one_follows():
    m = Meeting(summary_every={"turns": 2})
    for i in range(2):
        m.send(final(i, said(i)))
    assert len(m.started) == 1
    for i in range(2, 9):  # seven more turns while it runs: nothing new starts
        m.send(final(i, said(i)))
    assert len(m.started) == 1 and m.max_in_flight == 1
    m.complete("FIRST")
    assert len(m.started) == 2  # the due one, coalescing turns 2..8
    step = user_content(m.started[1])
    assert "FIRST" in step and all(said(i) in step for i in range(2, 9))
    m.complete("SECOND")
    assert m.steps == [(0, 1), (2, 8)] and len(m.started) == 2


def test_response_create_forces_a_summary_and_termination_summarizes_the_rest():
    m = Meeting()
    m.send(final(0, said(0), "A"))
    m.send(frame(type="response.create", reason="summarize the meeting so far"))
    assert len(m.started) == 1
    m.complete("S1")
    m.send(frame(type="response.create"))  # nothing new: nothing fires
    assert len(m.started) == 1
    m.send(final(1, said(1), "B"))
    m.send(frame(type="Termination"))
    assert len(m.started) == 2 and said(1) in user_content(m.started[1]) and not m.closed
    m.complete("FINAL")
    assert m.closed and m.steps == [(0, 0), (1, 1)]
    assert m.core.conversation.summary == "FINAL"


def test_a_failed_or_cancelled_summary_folds_nothing_and_the_next_takes_its_turns():
    m = Meeting(summary_every={"turns": 2})
    m.send(final(0, said(0)))
    m.send(final(1, said(1)))
    rid = next(iter(m.streams))
    m.streams.pop(rid)
    m.feed(m.core.on_failed(rid, Failure("gateway_error", "boom", 500), m.now))
    assert m.core.conversation.folded_upto == -1 and len(m.started) == 1
    m.send(final(2, said(2)))
    assert len(m.started) == 2
    again = user_content(m.started[1])
    assert said(0) in again and said(2) in again
    m.send(frame(type="response.cancel"))
    assert any(p.type == "response.cancelled" for p in m.published) and not m.streams
    m.send(final(3, said(3)))  # four turns not folded: the threshold is reached
    m.send(final(4, said(4)))  # arrives while it runs: one new turn is not yet due
    m.complete("S")
    assert m.steps == [(0, 3)] and not m.streams  # turns only: the next turn fires it


def test_a_backlog_over_the_budget_is_folded_in_chunks_in_order():
    m = Meeting(summary_every={"seconds": 3600}, max_context_tokens=400)
    for i in range(40):  # ~20 tokens each: far over the budget together
        m.send(final(i, said(i), SPEAKERS[i % 3]))
    m.send(frame(type="response.create"))
    chunks = 0
    while m.streams:
        start = m.started[-1]
        assert m.tokens(start) <= 400
        m.complete(f"SUMMARY{chunks} " + "x" * 300)
        chunks += 1
    assert chunks > 3
    assert [a for a, _ in m.steps] == [0] + [b + 1 for _, b in m.steps[:-1]]
    assert m.steps[-1][1] == 39


def test_a_four_hour_meeting_stays_in_budget_and_folds_every_turn_once():
    budget = 1500
    m = Meeting(max_context_tokens=budget)
    rng = __import__("random").Random(11)
    summaries: list[str] = []
    for i in range(3000):
        m.advance(i * 4.8)  # 3,000 turns in 4 hours
        m.send(final(i, said(i) + " more" * rng.randrange(0, 40), SPEAKERS[rng.randrange(3)]))
        if i % 97 == 3:  # speakers relabelled now and then
            revision = [{"turn_order": i, "speaker_label": "C"}]
            m.send(frame(type="SpeakerRevision", revisions=revision))
        if m.streams and rng.random() < 0.7:  # a summary takes a few turns to come back
            text = f"SUMMARY-{len(summaries)} " + "word " * rng.randrange(50, 400)
            summaries.append(text)
            m.complete(text)
    m.send(frame(type="Termination"))
    while m.streams:
        m.complete(f"SUMMARY-{len(summaries)} end")
        summaries.append("end")
    assert m.closed and m.max_in_flight == 1
    assert all(m.tokens(s) <= budget for s in m.started)
    folded = [i for a, b in m.steps for i in range(a, b + 1)]
    assert folded == list(range(3000))  # every turn once, in order
    # every request after the first refines the summary that was current when it was built
    for start in m.started[1:]:
        assert "SUMMARY-" in user_content(start)
    assert m.core.summaries["done"] == len(m.steps)


def test_without_a_cadence_every_turn_is_a_summary_step():
    core = new_core(preset="summary", summary_every=None, on_new_turn="keep", instructions="")
    out = core.on_message(1, final(0, said(0), "A"), 0.0)
    first = starts(out)[0]
    out = core.on_message(1, final(1, said(1), "B"), 0.1)
    second = starts(out)[0]
    assert said(0) in user_content(second)  # nothing folded yet: both turns
    core.on_delta(first.response_id, "S0", 0.2)
    core.on_done(first.response_id, Completion("stop"), 0.3)
    assert core.conversation.summary == "S0" and core.conversation.folded_upto == 0
    core.on_delta(second.response_id, "stale", 0.4)
    core.on_done(second.response_id, Completion("stop"), 0.5)  # built before S0: not taken
    assert core.conversation.summary == "S0"
    out = core.on_message(1, final(2, said(2), "C"), 0.6)
    third = user_content(starts(out)[0])
    assert "S0" in third and said(0) not in third and f"B: {said(1)}" in third


# ---- memory for assistants: context_strategy summarize ----------------------------------------


def test_an_assistant_remembers_turn_one_at_turn_500_through_its_folded_memory():
    budget = 600
    core = new_core(context_strategy="summarize", summary_model="small", max_context_tokens=budget)
    conv = core.conversation
    folds: list[tuple[int, int]] = []
    fold_prompts: list[str] = []
    pending_fold: StartStream | None = None
    last: StartStream | None = None
    for i in range(500):
        text = "my name is Zed and I like green tea" if i == 1 else said(i)
        out = core.on_message(1, final(i, text), float(i))
        for s in starts(out):
            assert (
                sum(conv.estimate_tokens(str(m["content"])) + 4 for m in s.body["messages"])
                <= budget
            )
            if s.response_id.startswith("m_"):
                assert s.body["model"] == "small" and pending_fold is None
                pending_fold = s
                fold_prompts.append(user_content(s))
            else:
                last = s
                assert s.body["model"] == "m"
        assert last is not None
        rid = last.response_id
        core.on_delta(rid, f"ok {i}", float(i) + 0.1)  # the reply never waits for the fold
        core.on_done(rid, Completion("stop"), float(i) + 0.2)
        if pending_fold is not None and i % 3 == 0:  # the fold comes back a little later
            prompt = user_content(pending_fold)
            memory = "Zed likes green tea." if "Zed" in prompt else "nothing yet."
            before = conv.folded_upto
            fid, pending_fold = pending_fold.response_id, None
            core.on_delta(fid, memory, float(i) + 0.3)
            outs = core.on_done(fid, Completion("stop"), float(i) + 0.3)
            folds.append((before + 1, conv.folded_upto))
            for s in starts(outs):
                pending_fold = s
                fold_prompts.append(user_content(s))
    assert last is not None
    messages = last.body["messages"]
    notes = [
        m for m in messages if m["role"] == "system" and "Summary of the earlier" in m["content"]
    ]
    assert len(notes) == 1 and "Zed likes green tea." in notes[0]["content"]
    assert "my name is Zed" not in str(messages)  # turn 1 itself left the window long ago
    # every folded turn was folded once, in order, none skipped
    assert [a for a, _ in folds] == [0] + [b + 1 for _, b in folds[:-1]]
    assert folds[-1][1] > 400
    # no client ever heard of a fold
    assert all(r.startswith("r_") for r in core.replies)


def test_a_running_fold_is_stopped_at_the_end_and_folds_nothing_when_drop():
    core = new_core(context_strategy="summarize", max_context_tokens=256, max_context_turns=2)
    fold: list[StartStream] = []
    for i in range(4):
        out = core.on_message(1, final(i, said(i)), float(i))
        rid = next(s for s in starts(out) if s.response_id.startswith("r_")).response_id
        fold += [s for s in starts(out) if s.response_id.startswith("m_")]
        core.on_delta(rid, "ok", float(i))
        core.on_done(rid, Completion("stop"), float(i))
    assert len(fold) == 1  # one at a time: the first is still running
    end = core.end("client", 1000, 9.0)
    assert StopStream(fold[0].response_id) in end
    plain = new_core(max_context_tokens=256, max_context_turns=2)
    for i in range(4):
        out = plain.on_message(1, final(i, said(i)), float(i))
        assert not [s for s in starts(out) if s.response_id.startswith("m_")]


def test_context_strategy_config():
    cfg = SessionConfig()
    assert cfg.context_strategy == "drop" and cfg.summary_model is None
    c = cfg.update({"context_strategy": "summarize", "summary_model": "small"})
    assert (c.context_strategy, c.summary_model) == ("summarize", "small")
    assert c.update({"preset": "assistant"}).context_strategy == "summarize"
    for bad in ({"context_strategy": "forget"}, {"summary_model": ""}, {"summary_model": 3}):
        with pytest.raises(ConfigError):
            cfg.update(bad)


def test_a_summary_template_renders_the_summary_even_with_nothing_left_to_fold():
    conv = Conversation()
    conv.add_user(0, "hello", "A")
    conv.set_summary("SUM", 0)
    cfg = SessionConfig(instructions="", prompt="{{summary}} | {{turn}}")
    assert conv.build_messages(cfg, 0)[-1]["content"] == "SUM | hello"


def test_an_empty_summary_is_not_retried_at_once():
    m = Meeting(summary_every={"turns": 2})
    m.send(final(0, said(0)))
    m.send(final(1, said(1)))
    rid = next(iter(m.streams))
    m.streams.pop(rid)
    m.feed(m.core.on_done(rid, Completion("stop"), m.now))  # no text at all
    assert not m.streams and m.core.conversation.summary is None
    m.send(final(2, said(2)))  # the next turn retries, with every turn not folded
    assert len(m.started) == 2 and said(0) in user_content(m.started[1])
