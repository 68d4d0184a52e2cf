"""The turn policy, with plain calls: the response table, every trigger and mode, invariants."""

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from realtime.core.config import PRESETS, SessionConfig
from realtime.core.turns import (
    MAX_SPECULATIONS_PER_TURN,
    TRANSITIONS,
    Cancel,
    Discard,
    Fire,
    IllegalTransition,
    Promote,
    ReplaceText,
    REvent,
    RState,
    Start,
    StartTimer,
    TurnEvent,
    TurnPolicy,
    normalize,
    transition,
)


def T(order, text, eot=False, fmt=False, utt="", words=None):
    """A Turn event; the word count defaults to the transcript's."""
    n = len(text.split()) if words is None else words
    return TurnEvent(order, text, eot, fmt, utt, n)


def policy(**kw):
    return TurnPolicy(**kw)


def fires(actions):
    return [a for a in actions if isinstance(a, Fire)]


# ---- the response table ---------------------------------------------------------------------

# Written out independently of TRANSITIONS, from the brief: the test checks the table too.
EXPECTED = {
    (RState.QUEUED, REvent.START): RState.RUNNING,
    (RState.QUEUED, REvent.CANCEL): RState.FINISHED,
    (RState.QUEUED, REvent.FINISH): RState.FINISHED,
    (RState.RUNNING, REvent.CANCEL): RState.FINISHED,
    (RState.RUNNING, REvent.FINISH): RState.FINISHED,
    (RState.SPECULATIVE, REvent.PROMOTE): RState.RUNNING,
    (RState.SPECULATIVE, REvent.DISCARD): RState.FINISHED,
    (RState.SPECULATIVE, REvent.FINISH): RState.FINISHED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RState, REvent)))
def test_every_state_event_pair(state, event):
    if (state, event) in EXPECTED:
        assert transition(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            transition(state, event)


def test_table_has_no_extra_pairs_and_finished_is_terminal():
    assert TRANSITIONS == EXPECTED
    assert not any(s is RState.FINISHED for s, _ in TRANSITIONS)


def test_normalize_is_case_and_punctuation_blind():
    assert normalize("Hi, my name is  Sonny.") == normalize("hi my name is sonny")
    assert normalize("What's up?") == "what s up"
    assert normalize("  ") == ""


# ---- trigger end_of_turn --------------------------------------------------------------------


def test_end_of_turn_fires_once_and_formatted_copy_replaces_text():
    p = policy()
    assert p.on_turn(T(0, "hi my")) == []
    assert p.on_turn(T(0, "hi my name", utt="hi my name")) == []  # utterance: eager only
    out = p.on_turn(T(0, "hi my name is sonny", eot=True))
    assert out == [Fire("r_1", 0, "hi my name is sonny", speculative=False, queued=False)]
    assert p.on_turn(T(0, "Hi, my name is Sonny.", eot=True, fmt=True)) == [
        ReplaceText(0, "Hi, my name is Sonny.")
    ]
    assert p.on_turn(T(0, "Hi, my name is Sonny.", eot=True, fmt=True)) == []  # duplicate
    assert p.on_turn(T(0, "hi my name is sonny", eot=True)) == []  # duplicate unformatted final
    assert [(i.response_id, i.turn_order, i.state) for i in p.live()] == [("r_1", 0, "running")]


def test_pro_model_single_message_with_both_flags_fires():
    p = policy()
    out = p.on_turn(T(0, "My name is Sonny.", eot=True, fmt=True, utt="My name is Sonny."))
    assert fires(out) == [Fire("r_1", 0, "My name is Sonny.", False, False)]


def test_empty_transcript_never_fires():
    p = policy()
    assert p.on_turn(T(0, "", eot=True)) == []
    assert p.on_turn(T(0, "  ", eot=True, fmt=True)) == []
    assert p.live() == []


def test_older_turn_events_are_ignored_except_late_formatted_copy():
    p = policy(on_new_turn="keep")
    p.on_turn(T(0, "first turn", eot=True))
    p.on_turn(T(1, "second", eot=True))
    assert p.on_turn(T(0, "first turn again", eot=True)) == []
    assert p.on_turn(T(0, "a late partial")) == []
    assert p.on_turn(T(0, "First turn.", eot=True, fmt=True)) == [ReplaceText(0, "First turn.")]
    # a turn that never fired gets no ReplaceText
    p.on_turn(T(3, "four", eot=False))
    p.on_turn(T(4, "five", eot=True))
    assert p.on_turn(T(3, "Four.", eot=True, fmt=True)) == []


def test_a_turn_that_never_ended_does_not_fire_when_a_newer_turn_starts():
    p = policy()
    p.on_turn(T(0, "hello there"))
    out = p.on_turn(T(1, "again", eot=True))
    assert [(f.turn_order, f.text) for f in fires(out)] == [(1, "again")]


# ---- trigger formatted ----------------------------------------------------------------------


def test_formatted_fires_with_formatted_text_and_ignores_the_timeout():
    p = policy(trigger="formatted")
    assert p.on_turn(T(0, "hi there", eot=True)) == [StartTimer(0, 300)]
    out = p.on_turn(T(0, "Hi there.", eot=True, fmt=True))
    assert out == [Fire("r_1", 0, "Hi there.", False, False)]
    assert p.on_format_timeout(0) == []
    assert p.on_turn(T(0, "Hi there.", eot=True, fmt=True)) == []


def test_formatted_timeout_fires_unformatted_then_copy_replaces():
    p = policy(trigger="formatted", format_wait_ms=250)
    assert p.on_turn(T(0, "hi there", eot=True)) == [StartTimer(0, 250)]
    assert p.on_turn(T(0, "hi there", eot=True)) == []  # duplicate final: no second timer
    assert p.on_format_timeout(7) == []  # not this turn
    assert p.on_format_timeout(0) == [Fire("r_1", 0, "hi there", False, False)]
    assert p.on_format_timeout(0) == []
    assert p.on_turn(T(0, "Hi there!", eot=True, fmt=True)) == [ReplaceText(0, "Hi there!")]


def test_formatted_with_zero_wait_fires_at_the_unformatted_final():
    p = policy(trigger="formatted", format_wait_ms=0)
    assert p.on_turn(T(0, "hi there", eot=True)) == [Fire("r_1", 0, "hi there", False, False)]


def test_formatted_waiting_turn_fires_before_a_newer_turn():
    p = policy(trigger="formatted", on_new_turn="keep")
    p.on_turn(T(0, "one", eot=True))
    out = p.on_turn(T(1, "two"))
    assert out == [Fire("r_1", 0, "one", False, False)]
    assert p.on_format_timeout(0) == []
    assert p.on_turn(T(0, "One.", eot=True, fmt=True)) == [ReplaceText(0, "One.")]


def test_formatted_waiting_turn_fired_by_newer_turn_is_then_interrupted_under_cancel():
    p = policy(trigger="formatted")
    p.on_turn(T(0, "one", eot=True))
    out = p.on_turn(T(1, "two more"))
    assert out == [Fire("r_1", 0, "one", False, False), Cancel("r_1", "interrupted")]


# ---- trigger eager --------------------------------------------------------------------------


def test_eager_promotes_a_confirmed_speculation():
    p = policy(trigger="eager")
    assert p.on_turn(T(0, "hi my name")) == []  # no utterance yet
    out = p.on_turn(T(0, "hi my name is sonny", utt="Hi my name is sonny"))
    assert out == [Fire("r_1", 0, "Hi my name is sonny", speculative=True, queued=False)]
    assert [i.state for i in p.live()] == ["speculative"]
    assert not p.live()[0].visible
    out = p.on_turn(T(0, "Hi, my name is Sonny!", eot=True))
    assert out == [Promote("r_1", 0, "Hi, my name is Sonny!")]
    assert [i.state for i in p.live()] == ["running"]
    assert p.on_turn(T(0, "Hi, my name is Sonny.", eot=True, fmt=True)) == [
        ReplaceText(0, "Hi, my name is Sonny.")
    ]


def test_eager_mismatch_discards_and_fires_the_final():
    p = policy(trigger="eager")
    p.on_turn(T(0, "book a table", utt="book a table"))
    out = p.on_turn(T(0, "book a table for two", eot=True))
    assert out == [Discard("r_1"), Fire("r_2", 0, "book a table for two", False, False)]


def test_eager_newer_utterance_replaces_the_speculation():
    p = policy(trigger="eager")
    p.on_turn(T(0, "book a table", utt="book a table"))
    assert p.on_turn(T(0, "book a table", utt="Book a table.")) == []  # same words
    out = p.on_turn(T(0, "book a table for two", utt="for two"))
    assert out == [Discard("r_1"), Fire("r_2", 0, "book a table for two", True, False)]
    assert p.on_turn(T(0, "book a table for two", eot=True)) == [
        Promote("r_2", 0, "book a table for two")
    ]


def test_eager_speculation_text_is_the_utterance_when_the_transcript_lags():
    p = policy(trigger="eager")
    out = p.on_turn(T(0, "", utt="Hello there."))
    assert fires(out)[0].text == "Hello there."


def test_eager_final_first_fires_plainly():
    p = policy(trigger="eager")
    assert p.on_turn(T(0, "hello", eot=True, utt="hello")) == [
        Fire("r_1", 0, "hello", False, False)
    ]


def test_eager_caps_speculations_per_turn():
    p = policy(trigger="eager")
    words = ["a", "a b", "a b c", "a b c d", "a b c d e"]
    spec = [f for w in words for f in fires(p.on_turn(T(0, w, utt=w)))]
    assert len(spec) == MAX_SPECULATIONS_PER_TURN
    assert p.live() == []  # the last one was discarded when the words changed again
    out = p.on_turn(T(0, "a b c d e", eot=True))
    assert fires(out) == [Fire(fires(out)[0].response_id, 0, "a b c d e", False, False)]


def test_eager_empty_final_discards_the_speculation():
    p = policy(trigger="eager")
    p.on_turn(T(0, "hm", utt="hm"))
    assert p.on_turn(T(0, "", eot=True)) == [Discard("r_1")]


def test_eager_speculation_of_an_unfinished_turn_is_discarded_by_a_newer_turn():
    p = policy(trigger="eager", on_new_turn="keep")
    p.on_turn(T(0, "hm", utt="hm"))
    out = p.on_turn(T(1, "next", eot=True))
    assert out == [Discard("r_1"), Fire("r_2", 1, "next", False, False)]


def test_speculation_is_not_visible_to_barge_in_or_client_cancel():
    p = policy(trigger="eager")
    p.on_turn(T(0, "hello", utt="hello"))
    assert p.on_speech_started() == []
    assert p.on_cancel_request() == []
    assert [i.state for i in p.live()] == ["speculative"]


# ---- on_new_turn = cancel -------------------------------------------------------------------


def test_cancel_speech_started_interrupts_visible_responses():
    p = policy(on_new_turn="cancel")
    p.on_turn(T(0, "one", eot=True))
    assert p.on_speech_started() == [Cancel("r_1", "interrupted")]
    assert p.live() == []
    assert p.on_speech_started() == []


def test_cancel_newer_turn_with_enough_words_interrupts():
    p = policy(on_new_turn="cancel", interrupt_min_words=3)
    p.on_turn(T(0, "one", eot=True))
    assert p.on_turn(T(0, "One.", eot=True, fmt=True, words=5)) == [ReplaceText(0, "One.")]
    assert p.on_turn(T(1, "uh huh", words=2)) == []
    assert p.on_turn(T(1, "uh huh wait", words=3)) == [Cancel("r_1", "interrupted")]


def test_cancel_newer_turn_firing_cancels_what_barge_in_left():
    p = policy(on_new_turn="cancel", interrupt_min_words=10)
    p.on_turn(T(0, "one", eot=True))
    out = p.on_turn(T(1, "two words", eot=True))
    assert out == [Cancel("r_1", "interrupted"), Fire("r_2", 1, "two words", False, False)]


def test_cancel_interrupts_queued_responses_too():
    p = policy(on_new_turn="cancel", interrupt_min_words=50, max_inflight=1)
    p.configure(
        trigger="end_of_turn",
        on_new_turn="keep",
        interrupt_min_words=50,
        max_inflight=1,
        format_wait_ms=300,
    )
    p.on_turn(T(0, "one", eot=True))
    p.on_turn(T(1, "two", eot=True))
    assert [i.state for i in p.live()] == ["running", "queued"]
    p.configure(
        trigger="end_of_turn",
        on_new_turn="cancel",
        interrupt_min_words=1,
        max_inflight=1,
        format_wait_ms=300,
    )
    assert p.on_speech_started() == [Cancel("r_1", "interrupted"), Cancel("r_2", "interrupted")]


# ---- on_new_turn = supersede ----------------------------------------------------------------


def test_supersede_ignores_barge_in_and_cancels_when_the_newer_turn_fires():
    p = policy(on_new_turn="supersede")
    p.on_turn(T(0, "one", eot=True))
    assert p.on_speech_started() == []
    assert p.on_turn(T(1, "two three four")) == []
    out = p.on_turn(T(1, "two three four", eot=True))
    assert out == [Cancel("r_1", "superseded"), Fire("r_2", 1, "two three four", False, False)]


def test_supersede_on_promote():
    p = policy(on_new_turn="supersede", trigger="eager")
    p.on_turn(T(0, "one", eot=True))
    p.on_turn(T(1, "two", utt="two"))
    assert [i.state for i in p.live()] == ["running", "speculative"]
    out = p.on_turn(T(1, "Two.", eot=True))
    assert out == [Cancel("r_1", "superseded"), Promote("r_2", 1, "Two.")]


# ---- on_new_turn = keep ---------------------------------------------------------------------


def test_keep_queues_beyond_max_inflight_and_starts_on_finish():
    p = policy(on_new_turn="keep", max_inflight=2)
    assert p.on_speech_started() == []
    outs = [p.on_turn(T(i, f"turn {i}", eot=True)) for i in range(4)]
    assert [f.queued for o in outs for f in fires(o)] == [False, False, True, True]
    assert [i.state for i in p.live()] == ["running", "running", "queued", "queued"]
    assert p.on_response_finished("r_2") == [Start("r_3")]
    assert p.on_response_finished("nope") == []
    assert p.on_response_finished("r_2") == []  # already forgotten
    assert [i.state for i in p.live()] == ["running", "running", "queued"]


def test_keep_full_queue_supersedes_the_oldest_queued():
    p = policy(on_new_turn="keep", max_inflight=1)
    p.on_turn(T(0, "a", eot=True))
    p.on_turn(T(1, "b", eot=True))
    out = p.on_turn(T(2, "c", eot=True))
    assert out == [Cancel("r_2", "superseded"), Fire("r_3", 2, "c", False, True)]
    assert [(i.response_id, i.state) for i in p.live()] == [("r_1", "running"), ("r_3", "queued")]


def test_keep_speculation_does_not_count_and_promote_needs_a_slot():
    p = policy(on_new_turn="keep", max_inflight=1, trigger="eager")
    p.on_turn(T(0, "a", eot=True))
    out = p.on_turn(T(1, "b", utt="b"))
    assert out == [Fire("r_2", 1, "b", speculative=True, queued=False)]
    # no free slot: the speculation cannot run visibly, so a queued request replaces it
    out = p.on_turn(T(1, "b", eot=True))
    assert out == [Discard("r_2"), Fire("r_3", 1, "b", False, True)]
    assert p.on_response_finished("r_1") == [Start("r_3")]
    p.on_turn(T(2, "c", utt="c"))
    p.on_response_finished("r_3")
    assert p.on_turn(T(2, "c", eot=True)) == [Promote("r_4", 2, "c")]


# ---- client cancel, termination, shutdown, configure ---------------------------------------


def test_client_cancel_cancels_every_visible_response():
    p = policy(on_new_turn="keep", max_inflight=1)
    p.on_turn(T(0, "a", eot=True))
    p.on_turn(T(1, "b", eot=True))
    assert p.on_cancel_request() == [Cancel("r_1", "client"), Cancel("r_2", "client")]
    assert p.live() == []


def test_termination_fires_a_waiting_turn_then_ignores_input():
    p = policy(trigger="formatted")
    p.on_turn(T(0, "bye", eot=True))
    assert p.on_termination() == [Fire("r_1", 0, "bye", False, False)]
    assert p.on_termination() == []
    assert p.on_turn(T(1, "more", eot=True)) == []
    assert p.on_format_timeout(0) == []
    assert p.on_speech_started() == []
    assert [i.response_id for i in p.live()] == ["r_1"]  # in flight: it finishes


def test_termination_discards_speculation_and_queued_responses_still_start():
    p = policy(trigger="eager", on_new_turn="keep", max_inflight=1)
    p.on_turn(T(0, "a", eot=True))
    p.on_turn(T(1, "b", eot=True))
    p.on_turn(T(2, "c", utt="c"))
    assert p.on_termination() == [Discard("r_3")]
    assert p.on_response_finished("r_1") == [Start("r_2")]


def test_shutdown_cancels_visible_and_discards_speculative():
    p = policy(trigger="eager", on_new_turn="keep", max_inflight=1)
    p.on_turn(T(0, "a", eot=True))
    p.on_turn(T(1, "b", eot=True))
    p.on_turn(T(2, "c", utt="c"))
    out = p.on_shutdown()
    assert out == [Cancel("r_1", "shutdown"), Cancel("r_2", "shutdown"), Discard("r_3")]
    assert p.live() == []
    assert p.on_turn(T(2, "c", eot=True)) == []
    assert p.on_shutdown() == []


def test_configure_resizes_the_queue_and_settles_pending_turns():
    p = policy(on_new_turn="keep", max_inflight=2)
    for i in range(4):
        p.on_turn(T(i, f"t{i}", eot=True))
    kw = {"trigger": "end_of_turn", "on_new_turn": "keep", "format_wait_ms": 300}
    assert p.configure(interrupt_min_words=1, max_inflight=3, **kw) == [Start("r_3")]
    p.on_turn(T(4, "t4", eot=True))
    p.on_turn(T(5, "t5", eot=True))
    out = p.configure(interrupt_min_words=1, max_inflight=1, **kw)
    assert out == [Cancel("r_4", "superseded"), Cancel("r_5", "superseded")]  # oldest first
    assert [i.state for i in p.live()] == ["running"] * 3 + ["queued"]
    with pytest.raises(ValueError, match="trigger"):
        p.configure(interrupt_min_words=1, max_inflight=1, **{**kw, "trigger": "x"})
    assert p.max_inflight == 1  # a rejected configure changes nothing


def test_configure_away_from_formatted_or_eager_settles_the_turn():
    p = policy(trigger="formatted")
    p.on_turn(T(0, "hello", eot=True))
    kw = {"on_new_turn": "cancel", "interrupt_min_words": 1, "max_inflight": 4}
    out = p.configure(trigger="end_of_turn", format_wait_ms=300, **kw)
    assert out == [Fire("r_1", 0, "hello", False, False)]
    p = policy(trigger="eager")
    p.on_turn(T(0, "hello", utt="hello"))
    assert p.configure(trigger="end_of_turn", format_wait_ms=300, **kw) == [Discard("r_1")]


def test_custom_id_factory_is_used():
    ids = iter(["x", "y"])
    p = TurnPolicy(new_id=lambda: next(ids))
    assert fires(p.on_turn(T(0, "a", eot=True)))[0].response_id == "x"


# ---- the matrix: every trigger x mode, and every preset -------------------------------------


def conversation(p, formatted_copy=True):
    """Two turns as AssemblyAI sends them: partials (with an utterance), final, formatted."""
    actions = []
    for order, words in ((0, "what is the capital of france"), (1, "and of spain")):
        parts = words.split()
        for n in range(1, len(parts)):
            actions += p.on_turn(T(order, " ".join(parts[:n])))
        actions += p.on_turn(T(order, words, utt=words.capitalize()))
        actions += p.on_turn(T(order, words, eot=True))
        if p.trigger == "formatted" and not formatted_copy:
            actions += p.on_format_timeout(order)
        if formatted_copy:
            actions += p.on_turn(T(order, words.capitalize() + "?", eot=True, fmt=True))
    return actions


def visible_turns(actions):
    return [a.turn_order for a in actions if isinstance(a, Promote | Fire) and not _spec(a)]


def _spec(a):
    return isinstance(a, Fire) and a.speculative


@pytest.mark.parametrize("formatted_copy", [True, False])
@pytest.mark.parametrize("mode", ["cancel", "supersede", "keep"])
@pytest.mark.parametrize("trigger", ["end_of_turn", "formatted", "eager"])
def test_matrix_one_visible_response_per_turn(trigger, mode, formatted_copy):
    p = policy(trigger=trigger, on_new_turn=mode)
    actions = conversation(p, formatted_copy)
    assert visible_turns(actions) == [0, 1]
    cancels = [a for a in actions if isinstance(a, Cancel)]
    expected = {"cancel": ["interrupted"], "supersede": ["superseded"], "keep": []}[mode]
    assert [c.reason for c in cancels] == expected
    replaced = [a for a in actions if isinstance(a, ReplaceText)]
    if trigger == "formatted" and formatted_copy:
        assert replaced == []  # it fired with the formatted text
        texts = [a.text for a in actions if isinstance(a, Fire)]
        assert texts == ["What is the capital of france?", "And of spain?"]
    elif formatted_copy:
        assert [r.turn_order for r in replaced] == [0, 1]
    if trigger == "eager":
        assert [a for a in actions if isinstance(a, Promote)]
        assert not [a for a in actions if isinstance(a, Discard)]
    assert len(p.live()) == (2 if mode == "keep" else 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_drive_the_policy(preset):
    c = SessionConfig().update({"preset": preset})
    p = TurnPolicy(
        trigger=c.trigger,
        on_new_turn=c.on_new_turn,
        interrupt_min_words=c.interrupt_min_words,
        max_inflight=c.max_inflight,
        format_wait_ms=c.format_wait_ms,
    )
    p.on_turn(T(0, "first", eot=True))
    barge = p.on_speech_started()
    out = p.on_turn(T(1, "second", eot=True))
    reasons = [a.reason for a in barge + out if isinstance(a, Cancel)]
    assert (
        reasons
        == {
            "assistant": ["interrupted"],
            "per_turn": [],
            "summary": ["superseded"],
        }[preset]
    )
    assert len(fires(out)) == 1


# ---- random event streams -------------------------------------------------------------------

WORDS = st.sampled_from(["", "hi", "Hi.", "hi there", "Hi, there!", "book it", "no"])


class PolicyMachine(RuleBasedStateMachine):
    """Drives a policy with random inputs, plays the session's part, checks invariants."""

    @initialize(  # eager and keep weighted up: they have the most states to reach
        trigger=st.sampled_from(["end_of_turn", "formatted", "eager", "eager"]),
        mode=st.sampled_from(["cancel", "supersede", "keep", "keep"]),
        max_inflight=st.integers(1, 3),
        min_words=st.integers(1, 3),
        wait=st.sampled_from([0, 300]),
    )
    def setup(self, trigger, mode, max_inflight, min_words, wait):
        self.p = TurnPolicy(
            trigger=trigger,
            on_new_turn=mode,
            interrupt_min_words=min_words,
            max_inflight=max_inflight,
            format_wait_ms=wait,
        )
        self.turn = 0
        self.kind = {}  # response id -> "visible" | "speculative"
        self.state = {}  # response id -> "queued" | "running" | "speculative"
        self.terminal = {}  # response id -> count of Cancel/Discard
        self.promoted = set()
        self.discarded = set()
        self.created_turns = []  # turn_order of each visible creation, in order
        self.stopped = False
        self.calls = 0

    def apply(self, actions):
        self.calls += 1
        for a in actions:
            rid = getattr(a, "response_id", None)
            if rid is not None and not isinstance(a, Fire):
                assert rid in self.kind, a
                assert self.terminal.get(rid, 0) == 0, f"{a} after a terminal action"
            if isinstance(a, Fire):
                assert not self.stopped, "Fire after termination/shutdown"
                assert a.response_id not in self.kind
                self.kind[a.response_id] = "speculative" if a.speculative else "visible"
                if a.speculative:
                    self.state[a.response_id] = "speculative"
                else:
                    self.created_turns.append(a.turn_order)
                    if not a.queued:
                        self._take_slot()
                    self.state[a.response_id] = "queued" if a.queued else "running"
            elif isinstance(a, Promote):
                assert not self.stopped, "Promote after termination/shutdown"
                assert self.state[a.response_id] == "speculative"
                assert a.response_id not in self.discarded
                self._take_slot()
                self.promoted.add(a.response_id)
                self.kind[a.response_id] = "visible"
                self.state[a.response_id] = "running"
                self.created_turns.append(a.turn_order)
            elif isinstance(a, Start):
                assert self.state[a.response_id] == "queued"
                self._take_slot()
                self.state[a.response_id] = "running"
            elif isinstance(a, Discard):
                assert self.state[a.response_id] == "speculative"
                assert a.response_id not in self.promoted
                self.discarded.add(a.response_id)
                self._terminal(a.response_id)
            elif isinstance(a, Cancel):
                assert self.kind[a.response_id] == "visible"
                assert a.reason in ("interrupted", "superseded", "client", "shutdown")
                self._terminal(a.response_id)
                # the session reports the cancel's completion; the policy already forgot it
                assert self.p.on_response_finished(a.response_id) == []

    def _take_slot(self):
        # Nothing starts running while max_inflight are running. (configure() may lower the
        # limit below what already runs: those run on, so the check is at each start.)
        running = sum(1 for s in self.state.values() if s == "running")
        assert running < self.p.max_inflight, "more than max_inflight running"

    def _terminal(self, rid):
        self.terminal[rid] = self.terminal.get(rid, 0) + 1
        self.state.pop(rid, None)

    @rule(
        step=st.sampled_from([-1, 0, 0, 0, 1]),
        text=WORDS,
        eot=st.booleans(),
        fmt=st.booleans(),
        utt=WORDS,
        words=st.integers(0, 4),
    )
    def turn_event(self, step, text, eot, fmt, utt, words):
        self.turn = max(0, self.turn + step)
        self.apply(self.p.on_turn(TurnEvent(self.turn, text, eot, fmt, utt, words)))

    @rule(text=WORDS, final=WORDS, same=st.booleans(), formatted_copy=st.booleans())
    def spoken_turn(self, text, final, same, formatted_copy):
        """A well-formed turn: partial with an utterance, final (often the same words, so that
        speculations get promoted), maybe a formatted copy."""
        if same:
            final = text.upper() + "."
        self.turn += 1
        events = [
            TurnEvent(self.turn, text, False, False, text, len(text.split())),
            TurnEvent(self.turn, final, True, False, "", len(final.split())),
        ]
        if formatted_copy:
            events.append(TurnEvent(self.turn, final.upper(), True, True, "", 1))
        for ev in events:
            self.apply(self.p.on_turn(ev))

    @rule()
    def speech_started(self):
        self.apply(self.p.on_speech_started())

    @rule(back=st.integers(0, 1))
    def format_timeout(self, back):
        self.apply(self.p.on_format_timeout(self.turn - back))

    @rule()
    def client_cancel(self):
        self.apply(self.p.on_cancel_request())

    @precondition(lambda self: self.state)
    @rule(data=st.data())
    def finish(self, data):
        rid = data.draw(st.sampled_from(sorted(self.state)))
        self.state.pop(rid)
        self.terminal[rid] = self.terminal.get(rid, 0)  # the session's own terminal
        self.kind[rid] = "gone"
        self.apply(self.p.on_response_finished(rid))

    @rule(
        trigger=st.sampled_from(["end_of_turn", "formatted", "eager"]),
        mode=st.sampled_from(["cancel", "supersede", "keep"]),
        max_inflight=st.integers(1, 3),
    )
    def configure(self, trigger, mode, max_inflight):
        self.apply(
            self.p.configure(
                trigger=trigger,
                on_new_turn=mode,
                interrupt_min_words=1,
                max_inflight=max_inflight,
                format_wait_ms=300,
            )
        )

    # The end of input comes late in a stream, so that the streams explore states first.
    @precondition(lambda self: self.calls > 15)
    @rule()
    def termination(self):
        self.apply(self.p.on_termination())
        self.stopped = True

    @precondition(lambda self: self.calls > 15)
    @rule()
    def shutdown(self):
        self.apply(self.p.on_shutdown())
        self.stopped = True
        assert self.p.live() == []

    @invariant()
    def invariants(self):
        assert all(n <= 1 for n in self.terminal.values())
        assert self.created_turns == sorted(set(self.created_turns)), "created out of turn order"
        live = {i.response_id: i.state for i in self.p.live()}
        assert live == self.state, "the policy and the session disagree on live responses"
        queued = sum(1 for s in live.values() if s == "queued")
        assert queued <= self.p.max_inflight
        assert not (self.promoted & self.discarded)


PolicyMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestPolicyStateMachine = PolicyMachine.TestCase
