"""A meeting over real sockets with the gateway emulator: summaries at the configured cadence,
at most one in flight, each refining the previous one (PROTOCOL.md "Long conversations").

The emulator's model answers "You said: <the last user message>", so each summary's text is
known, and the next summary request must carry it."""

from __future__ import annotations

import asyncio
from typing import Any

from support.service import Service, assert_guarantees, turn

PROMPT = "Summary so far: {{summary}}\nSince then:\n{{history}}"
BUDGET = 4000  # tokens; the emulator echoes its prompt, so unbounded summaries would nest
SPEAKERS = ("A", "B", "C")


def spoken(order: int, text: str, speaker: str) -> dict[str, Any]:
    return {**turn(order, text), "speaker_label": speaker}


def in_flight_at_most_one(messages: list[dict[str, Any]]) -> None:
    live: set[str] = set()
    for m in messages:
        if m["type"] == "response.created":
            assert not live, f"{m['response_id']} created while {live} runs"
            live.add(m["response_id"])
        elif m["type"] in ("response.done", "response.cancelled", "response.failed"):
            live.discard(m["response_id"])


async def test_a_meeting_is_summarized_at_its_cadence_one_summary_at_a_time(service: Service):
    service.emulator.token_delay = 0.001
    c = await service.connect(
        session={
            "preset": "summary",
            "instructions": "",
            "prompt": PROMPT,
            "summary_every": {"turns": 5, "seconds": 30},
            "max_context_tokens": BUDGET,
        }
    )
    n = 300
    for i in range(n):
        await c.send(spoken(i, f"point {i} raised by the team", SPEAKERS[i % 3]))
        await asyncio.sleep(0.005)
    await c.send({"type": "response.create", "reason": "the meeting ends"})
    await c.send({"type": "Termination"})
    assert await c.wait_closed(timeout=30) == 1000
    messages = c.messages
    assert_guarantees(messages)
    in_flight_at_most_one(messages)
    assert not [m for m in messages if m["type"] in ("response.failed", "error")]
    done = [m for m in messages if m["type"] == "response.done"]
    requests = [r.body for r in service.emulator.requests]
    assert len(requests) == len(done) >= 2
    prompts = [str(body["messages"][-1]["content"]) for body in requests]
    # the turns of each request: after the last "Since then:" (the summary quotes older ones)
    news = [p.rsplit("Since then:\n", 1)[1] for p in prompts]
    # the cadence: the first summary fires at the fifth turn, with turns 0..4 only
    assert "point 4 raised" in prompts[0] and "point 5 raised" not in prompts[0]
    assert prompts[0].startswith("Summary so far: (none yet")
    # every turn is folded into exactly one summary request, in order
    seen = [i for p in news for i in range(n) if f": point {i} raised" in p]
    assert seen == list(range(n))
    # a summary fires with at least five new turns, but for the last (the meeting's end)
    for p in news[:-1]:
        assert p.count(" raised by the team") >= 5
    # each request refines the summary before it (or its start: a summary over half the
    # budget is cut, keeping its start)
    for before, after in zip(done, prompts[1:], strict=False):
        carried = after.rsplit("\nSince then:\n", 1)[0].removeprefix("Summary so far: ")
        assert len(carried) >= min(len(before["text"]), 1000)
        assert before["text"].startswith(carried)
    # speakers reach the prompt
    assert "A: point 0 raised" in news[0] and "B: point 1 raised" in news[0]
    # no request ever outgrows the budget (8 characters per token is the estimator's ceiling)
    assert max(len(p) for p in prompts) <= BUDGET * 8
    # and /metrics counts every summary step that became the summary
    metrics = service.server.metrics
    assert metrics.summaries_started_total.value("meeting") == len(done)
    assert metrics.summaries_total.value("meeting", "done") == len(done)
    assert metrics.summary_chars.count() == len(done) == metrics.summary_latency_ms.count()


async def test_the_seconds_threshold_and_response_create(service: Service):
    c = await service.connect(
        session={
            "preset": "summary",
            "instructions": "",
            "prompt": PROMPT,
            "summary_every": {"turns": 100, "seconds": 1},
        }
    )
    await c.send(spoken(0, "we start the review", "A"))
    created = (await c.wait_type("response.created", timeout=5))[0]
    assert created["turn_order"] == 0  # after about a second, with one new turn
    first = (await c.wait_type("response.done"))[0]
    await c.send(spoken(1, "the budget is approved", "B"))
    revision = [{"turn_order": 1, "speaker_label": "C", "words": []}]
    await c.send({"type": "SpeakerRevision", "revisions": revision})
    await c.send({"type": "response.create", "reason": "summarize now"})
    second = (await c.wait_type("response.done", n=2))[1]
    assert "C: the budget is approved" in second["text"] and first["text"] in second["text"]
    sid = c.messages[0]["session_id"]
    joined = await service.connect(f"role=viewer&session_id={sid}")
    assert joined.messages[0]["summary"] == second["text"]
    assert c.messages[0]["summary"] is None  # the session had none when it was created
    users = [h for h in joined.messages[0]["history"] if h["role"] == "user"]
    assert [h.get("speaker") for h in users] == ["A", "C"]
    await joined.close()
    await c.close()


async def test_an_assistant_with_summarize_still_knows_turn_one(service: Service):
    service.emulator.token_delay = 0.001
    c = await service.connect(
        session={"context_strategy": "summarize", "max_context_turns": 3, "on_new_turn": "keep"}
    )

    def is_fold(body: dict[str, Any]) -> bool:
        return "maintain the memory" in str(body["messages"][0]["content"])

    remembered_at = None
    turns = 500
    for i in range(turns):
        text = "my name is Zed" if i == 1 else f"question number {i}"
        await c.send(turn(i, text))
        await c.wait_terminals(i + 1, timeout=10)
        last = next(r.body for r in reversed(service.emulator.requests) if not is_fold(r.body))
        notes = [m for m in last["messages"] if "Summary of the earlier" in str(m["content"])]
        if i > 10 and notes and "my name is Zed" in notes[0]["content"]:
            remembered_at = remembered_at or i
            # turn 1 itself is long out of the window: only the note carries it
            assert sum("my name is Zed" in str(m["content"]) for m in last["messages"]) == 1
    assert remembered_at is not None
    # at turn 500 the note still carries the fact from turn 1
    assert notes and "my name is Zed" in notes[0]["content"], notes
    await c.close()
    assert_guarantees(c.messages)
    created = [m for m in c.messages if m["type"] == "response.created"]
    assert len(created) == turns  # the folds are invisible to clients
    assert any(is_fold(r.body) for r in service.emulator.requests)
