"""End to end over loopback: what a connection that joins a live session is told."""

from __future__ import annotations

from support.service import Service, assert_guarantees, turn


async def test_a_viewer_joining_mid_reply_sees_the_whole_reply(service: Service):
    """The snapshot carries the reply in progress; its text plus the later deltas is the
    reply's done text (a caption display never shows a truncated reply)."""
    service.emulator.token_delay = 0.02
    service.emulator.reply_words = 40
    owner = await service.connect()
    sid = owner.messages[0]["session_id"]
    await owner.send(turn(0, "tell me a long story"))
    await owner.wait_type("response.delta", 3)
    viewer = await service.connect(f"role=viewer&session_id={sid}")
    joiner = await service.connect(f"session_id={sid}")
    done = (await owner.wait_type("response.done"))[0]
    for late in (viewer, joiner):
        await late.wait_type("response.done")
        snapshot = late.messages[0]["history"]
        assert snapshot[0] == {"turn_order": 0, "role": "user", "text": "tell me a long story"}
        live = snapshot[1]
        assert live["status"] == "in_progress" and live["response_id"] == done["response_id"]
        deltas = "".join(m["delta"] for m in late.of(done["response_id"]) if "delta" in m)
        assert live["text"] + deltas == done["text"]
        assert not any(m["type"] == "response.created" for m in late.messages)
    assert_guarantees(owner.messages)
    for c in (viewer, joiner, owner):
        await c.close()


async def test_a_second_participant_gets_the_history(service: Service):
    owner = await service.connect()
    sid = owner.messages[0]["session_id"]
    await owner.send(turn(0, "my name is sonny"))
    done = (await owner.wait_type("response.done"))[0]
    second = await service.connect(f"session_id={sid}")
    history = second.messages[0]["history"]
    assert history == [
        {"turn_order": 0, "role": "user", "text": "my name is sonny"},
        {"turn_order": 0, "role": "assistant", "text": done["text"]},
    ]
    await second.close()
    await owner.close()


async def test_an_unknown_config_field_is_named_in_ignored(service: Service):
    c = await service.connect()
    await c.send({"type": "session.update", "session": {"temprature": 0.2, "max_tokens": 50}})
    updated = (await c.wait_type("session.updated"))[0]
    assert updated["ignored"] == ["temprature"]
    assert updated["session"]["max_tokens"] == 50
    await c.close()


async def test_a_reply_waiting_for_the_rate_window_says_so_and_cancels_cleanly(
    service: Service,
):
    """With a per-model window spent, the next reply sends response.queued (wait_ms) after
    response.created and before any delta; cancelling it while it waits takes no slot."""
    service.server.limiter.per_model_per_minute = 1
    c = await service.connect()
    await c.send(turn(0, "first"))
    await c.wait_type("response.done")
    await c.send(turn(1, "second"))
    queued = (await c.wait_type("response.queued"))[0]
    assert 50_000 <= queued["wait_ms"] <= 60_000
    created = (await c.wait_type("response.created", 2))[1]
    assert queued["response_id"] == created["response_id"]
    await c.send({"type": "response.cancel"})
    cancelled = (await c.wait_type("response.cancelled"))[0]
    assert cancelled["response_id"] == created["response_id"] and cancelled["reason"] == "client"
    kinds = [m["type"] for m in c.of(created["response_id"])]
    assert kinds == ["response.created", "response.queued", "response.cancelled"]
    assert service.server.limiter.in_flight == 0
    assert_guarantees(c.messages)
    await c.close()


async def test_an_eu_server_refuses_models_its_gateway_does_not_serve(service: Service):
    """With the EU gateway (model_prefixes), session.update may not choose a model it lacks,
    as a fallback or a summary model either; nothing of the refused update applies."""
    service.server.deps.model_prefixes = ("claude-", "gemini-")
    c = await service.connect()
    for patch in (
        {"model": "gpt-4.1"},
        {"model": "claude-sonnet-4-6", "fallbacks": ["gpt-5"]},
        {"model": "claude-sonnet-4-6", "summary_model": "gpt-5-mini"},
    ):
        await c.send({"type": "session.update", "session": patch})
    errors = await c.wait_type("error", 3)
    assert [e["error"]["code"] for e in errors] == ["invalid_config"] * 3
    assert "not served by this server's gateway region" in errors[0]["error"]["message"]
    await c.send({"type": "session.update", "session": {"model": "claude-sonnet-4-6"}})
    updated = (await c.wait_type("session.updated"))[0]
    assert updated["session"]["model"] == "claude-sonnet-4-6"
    await c.close()
