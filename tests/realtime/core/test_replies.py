"""The reply lifecycle table, with plain calls: every (state, event) pair, and the timings."""

from __future__ import annotations

import itertools

import pytest

from realtime.core.replies import (
    RE,
    RS,
    TERMINAL,
    TRANSITIONS,
    Completion,
    Failure,
    IllegalTransition,
    Reply,
)

# Written out independently of TRANSITIONS, from the module's contract: the test checks the
# table too. A speculation (HIDDEN) streams and may end before the end of turn decides on it;
# a visible reply ends in exactly one of DONE, CANCELLED, FAILED.
EXPECTED = {
    (RS.HIDDEN, RE.DELTA): RS.HIDDEN,
    (RS.HIDDEN, RE.FINISH): RS.HIDDEN_ENDED,
    (RS.HIDDEN, RE.FAIL): RS.HIDDEN_ENDED,
    (RS.HIDDEN, RE.PROMOTE): RS.VISIBLE,
    (RS.HIDDEN, RE.CANCEL): RS.DISCARDED,
    (RS.HIDDEN, RE.DISCARD): RS.DISCARDED,
    (RS.HIDDEN_ENDED, RE.PROMOTE): RS.VISIBLE,
    (RS.HIDDEN_ENDED, RE.CANCEL): RS.DISCARDED,
    (RS.HIDDEN_ENDED, RE.DISCARD): RS.DISCARDED,
    (RS.VISIBLE, RE.DELTA): RS.VISIBLE,
    (RS.VISIBLE, RE.FINISH): RS.DONE,
    (RS.VISIBLE, RE.FAIL): RS.FAILED,
    (RS.VISIBLE, RE.CANCEL): RS.CANCELLED,
}


def reply(state: RS = RS.VISIBLE, *, fired_at: float = 10.0) -> Reply:
    return Reply(id="r_1", turn_order=3, text_in="hi", model="m", fired_at=fired_at, state=state)


# ---- the table --------------------------------------------------------------------------------


def test_the_table_is_the_contract():
    assert TRANSITIONS == EXPECTED
    assert frozenset({RS.DONE, RS.CANCELLED, RS.FAILED, RS.DISCARDED}) == TERMINAL


def test_no_terminal_state_has_a_way_out():
    assert not any(state in TERMINAL for state, _ in TRANSITIONS)


def test_every_live_state_is_reachable_and_every_path_ends():
    """From HIDDEN, the table reaches every state, and every live state reaches a terminal."""
    seen, frontier = {RS.HIDDEN}, [RS.HIDDEN]
    while frontier:
        s = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is s and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(RS)
    for s in set(RS) - TERMINAL:
        assert any(src is s and dst in TERMINAL for (src, _), dst in TRANSITIONS.items())


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RS, RE)))
def test_every_state_event_pair(state, event):
    r = reply(state)
    if state in TERMINAL:
        assert r.move(event) is False  # absorbed: a late report after the terminal
        assert r.state is state
    elif (state, event) in EXPECTED:
        assert r.move(event) is True
        assert r.state is EXPECTED[(state, event)]
    else:
        with pytest.raises(IllegalTransition, match=f"cannot {event.value} while {state.value}"):
            r.move(event)
        assert r.state is state  # a refused event changes nothing


@pytest.mark.parametrize("state", list(RS))
def test_terminal_and_visible_flags(state):
    r = reply(state)
    assert r.terminal is (state in TERMINAL)
    # Visible: response.created was sent. A discarded speculation never was.
    assert r.visible is (state in (RS.VISIBLE, RS.DONE, RS.CANCELLED, RS.FAILED))


def test_a_speculation_walk_holds_its_outcome_until_promoted():
    r = reply(RS.HIDDEN)
    assert r.move(RE.DELTA) and r.move(RE.FINISH)
    assert r.state is RS.HIDDEN_ENDED
    with pytest.raises(IllegalTransition):
        r.move(RE.DELTA)  # its stream ended: no more text can come
    with pytest.raises(IllegalTransition):
        r.move(RE.FINISH)
    assert r.move(RE.PROMOTE) and r.state is RS.VISIBLE
    assert r.move(RE.FINISH) and r.state is RS.DONE
    assert not r.move(RE.CANCEL) and r.state is RS.DONE


def test_outcomes_are_plain_data():
    assert Completion() == Completion(None, None, None, None, None)
    assert Failure("gateway_error", "x", 503) == Failure("gateway_error", "x", 503)
    r = reply()
    r.delivered += ["Paris", " is"]
    assert r.delivered_text() == "Paris is"


# ---- timings ----------------------------------------------------------------------------------


def test_timings_of_a_plain_reply():
    r = reply(fired_at=10.0)
    r.sent_at, r.first_delta_at = 10.25, 10.75
    assert r.timings(12.5) == {
        "queued_ms": 250.0,
        "ttft_ms": 750.0,
        "total_ms": 2500.0,
        "speculative_head_start_ms": 0,
    }


def test_timings_of_a_promoted_speculation_count_from_the_promotion():
    r = reply(RS.HIDDEN, fired_at=10.0)
    r.sent_at, r.promoted_at, r.first_delta_at = 10.125, 10.5, 10.5
    t = r.timings(11.0)
    assert t == {
        "queued_ms": 125.0,  # from the request's start, like any reply
        "ttft_ms": 0.0,  # held deltas go out at the promotion
        "total_ms": 500.0,  # what the user waited, from the end of turn
        "speculative_head_start_ms": 500.0,
    }


def test_timings_without_a_send_or_a_delta_run_to_the_end():
    r = reply(fired_at=10.0)
    assert r.timings(10.5) == {
        "queued_ms": 500.0,
        "ttft_ms": 500.0,
        "total_ms": 500.0,
        "speculative_head_start_ms": 0,
    }


def test_timings_are_rounded_to_microseconds():
    r = reply(fired_at=1.0)
    r.sent_at = 1.0 + 1 / 3
    t = r.timings(2.0)
    assert t["queued_ms"] == 333.333 and t["total_ms"] == 1000.0


def test_timings_with_a_clock_at_zero():
    """An instant of 0.0 is an instant, not "unset"."""
    r = reply(fired_at=0.0)
    r.sent_at, r.first_delta_at = 0.0, 0.25
    assert r.timings(1.0) == {
        "queued_ms": 0.0,
        "ttft_ms": 250.0,
        "total_ms": 1000.0,
        "speculative_head_start_ms": 0,
    }
    s = reply(RS.HIDDEN, fired_at=-0.5)
    s.promoted_at = s.first_delta_at = 0.0
    assert s.timings(1.0) == {
        "queued_ms": 1500.0,
        "ttft_ms": 0.0,
        "total_ms": 1000.0,
        "speculative_head_start_ms": 500.0,
    }
