"""`python -m realtime demo`: works at any token delay, and says why when it is not OK.

With `--token-delay 0` the emulator sends a whole reply in one burst, so the reply the script's
user speaks over has usually ended before the service hears them: the demo then truncates it
to what was heard (`response.truncate`) instead of expecting a cancellation it cannot get.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from realtime.demo import BargeIn, Printer, verdict


def run_demo(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime", "demo", "--speed", "4", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("delay", ["0", "0.001"])
def test_demo_is_ok_with_instant_tokens(delay: str):
    result = run_demo("--token-delay", delay)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == "5 replies, 1 interrupted, 0 failed: ok", result.stdout
    # the reply spoken over was cut one way or the other, and the demo says which
    assert (
        "truncated to what was heard" in result.stdout
        or "[interrupted: the user spoke again" in result.stdout
    ), result.stdout
    assert "Traceback" not in result.stderr


# ---- the verdict, on recorded runs --------------------------------------------------------


def printer_with(*messages: dict[str, object]) -> Printer:
    printer = Printer(io.StringIO())
    for m in messages:
        printer.on_message(m)
    return printer


def replies(n: int, *, but: dict[str, dict[str, object]] | None = None) -> list[dict[str, object]]:
    """n replies that end `done`, except those named in `but` (response_id -> terminal)."""
    out: list[dict[str, object]] = []
    for i in range(n):
        rid = f"r_{i}"
        out.append({"type": "response.created", "response_id": rid, "turn_order": i})
        out.append({"type": "response.delta", "response_id": rid, "turn_order": i, "delta": "a b"})
        end = (but or {}).get(rid)
        if end is None:
            end = {"type": "response.done", "text": "a b", "timings": {}}
        out.append({"response_id": rid, "turn_order": i, **end})
    return out


def barge_on(rid: str, heard: str = "a") -> BargeIn:
    barge = BargeIn()
    barge.response_id, barge.heard = rid, heard
    return barge


def test_verdict_ok_when_the_barge_in_cancelled_the_reply():
    cancelled = {"type": "response.cancelled", "reason": "interrupted", "delivered_text": "a"}
    printer = printer_with(*replies(5, but={"r_2": cancelled}))
    assert verdict(printer, barge_on("r_2")) == []


def test_verdict_ok_when_a_finished_reply_was_truncated_to_what_was_heard():
    shown = io.StringIO()
    printer = Printer(shown)
    for m in [*replies(5), {"type": "response.truncated", "response_id": "r_2", "text": "a"}]:
        printer.on_message(m)
    assert verdict(printer, barge_on("r_2", heard="a")) == []
    assert "truncated to what was heard" in shown.getvalue()
    assert verdict(printer, barge_on("r_2", heard="a b")) != []  # not what the user heard


@pytest.mark.parametrize(
    ("messages", "barge", "says"),
    [
        (replies(5), barge_on("r_2"), "not truncated to what was heard"),
        (replies(5), BargeIn(), "barge-in never came"),
        (replies(4), barge_on("r_2"), "only 4 of 5"),
        (replies(5)[:-1], barge_on("r_2"), "never ended (r_4)"),
        (
            replies(5, but={"r_2": {"type": "response.failed", "error": {"message": "x"}}}),
            barge_on("r_1"),
            "1 replies failed",
        ),
        (
            replies(5, but={"r_2": {"type": "response.cancelled", "reason": "client"}}),
            barge_on("r_2"),
            "cancelled as 'client'",
        ),
        (
            replies(5, but={"r_3": {"type": "response.cancelled", "reason": "interrupted"}}),
            barge_on("r_2"),
            "cancelled with no barge-in",
        ),
    ],
)
def test_verdict_names_what_went_wrong(messages, barge, says):
    problems = verdict(printer_with(*messages), barge)
    assert any(says in p for p in problems), problems


# ---- the meeting demo -----------------------------------------------------------------------


def test_meeting_demo_prints_rolling_summaries_with_speakers():
    result = run_demo("--meeting", "--token-delay", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"12 turns, \d+ summaries, 0 failed: ok", last), out
    summaries = out.split("  summary ")[1:]
    assert len(summaries) >= 2
    # speakers reach the prompt; the relabel of turn 7 (B -> C) is sent and shown
    assert "| B: The beta build is ready" in summaries[0]
    assert "(turn 7 relabelled B -> C)" in out
    if len(summaries) == 4:  # at the cadence (a slow machine may coalesce summaries)
        assert "| C: Support can run the regression tests" in summaries[2]
    # each summary refines the one before it: the beginning of the meeting is never forgotten
    for s in summaries:
        assert "| A: Good morning everyone" in s
    assert "Thanks all, we meet again" in summaries[-1]
    assert "Traceback" not in result.stderr


def test_the_meeting_verdict_names_what_went_wrong():
    from realtime.demo import MeetingPrinter, meeting_verdict

    printer = MeetingPrinter(io.StringIO())
    printer.on_message(
        {"type": "response.done", "response_id": "r_0", "turn_order": 5, "text": "x"}
    )
    problems = meeting_verdict(printer, 12, 1011)
    assert any("only 1 summaries" in p for p in problems)
    assert any("last turn reached no summary" in p for p in problems)
    assert any("closed with 1011" in p for p in problems)
