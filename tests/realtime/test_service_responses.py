"""End to end over loopback: the response guarantees of PROTOCOL.md, triggers and modes."""

from __future__ import annotations

import asyncio
import time

from support.service import Service, assert_guarantees, turn

from gateway_client.emulator import Fault


async def test_turn_streams_a_reply_whose_deltas_join_to_the_text(service: Service):
    c = await service.connect()
    await c.send(turn(0, "what is the capital of france"))
    done = (await c.wait_type("response.done"))[0]
    assert "what is the capital of france" in done["text"]
    assert done["turn_order"] == 0
    assert done["request_id"]
    assert set(done["timings"]) >= {"queued_ms", "ttft_ms", "total_ms", "speculative_head_start_ms"}
    assert done["usage"]["total_tokens"] > 0
    deltas = [m for m in c.of(done["response_id"]) if m["type"] == "response.delta"]
    assert len(deltas) > 3
    assert_guarantees(c.messages)
    # The request carried the instructions as the system message and the turn as the user one.
    body = service.emulator.requests[-1].body
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "what is the capital of france"}
    await c.close()


async def test_history_carries_earlier_turns_and_replies(service: Service):
    c = await service.connect()
    await c.send(turn(0, "my name is sonny"))
    first = (await c.wait_type("response.done"))[0]
    await c.send(turn(1, "what is my name"))
    await c.wait_type("response.done", 2)
    messages = service.emulator.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "my name is sonny"
    assert messages[2]["content"] == first["text"]
    await c.close()


async def test_barge_in_cancels_the_stream_and_aborts_the_upstream_request(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect()
    await c.send(turn(0, "tell me a long story " + "please " * 30))
    await c.wait_type("response.delta", 2)
    await c.send(turn(1, "stop", final=False))  # a newer turn with one word: barge-in
    cancelled = (await c.wait_type("response.cancelled"))[0]
    assert cancelled["reason"] == "interrupted"
    gone = await service.emulator.wait_disconnect(timeout=5.0)
    assert gone.disconnected and not gone.completed
    await asyncio.sleep(0.2)  # anything still in flight would arrive now
    assert_guarantees(c.messages)
    rid = cancelled["response_id"]
    after = c.messages[c.messages.index(cancelled) + 1 :]
    assert not [m for m in after if m.get("response_id") == rid]
    await c.close()


async def test_speech_started_is_a_barge_in(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect()
    await c.send(turn(0, "count to fifty " + "and more " * 20))
    await c.wait_type("response.delta")
    await c.send({"type": "SpeechStarted", "timestamp": 1216})
    cancelled = (await c.wait_type("response.cancelled"))[0]
    assert cancelled["reason"] == "interrupted"
    await service.emulator.wait_disconnect(timeout=5.0)
    await c.close()


async def test_interrupt_min_words_ignores_short_partials(service: Service):
    service.emulator.token_delay = 0.02
    c = await service.connect(session={"interrupt_min_words": 3})
    await c.send(turn(0, "tell me about the weather " + "today " * 10))
    await c.wait_type("response.delta")
    await c.send(turn(1, "uh", final=False))  # one word: below the threshold
    done = (await c.wait_terminals(1))[0]
    assert done["type"] == "response.done"
    await c.close()


async def test_response_cancel_from_the_client(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect()
    await c.send(turn(0, "a long answer " * 20))
    await c.wait_type("response.delta")
    await c.send({"type": "response.cancel"})
    cancelled = (await c.wait_type("response.cancelled"))[0]
    assert cancelled["reason"] == "client"
    await service.emulator.wait_disconnect(timeout=5.0)
    assert_guarantees(c.messages)
    await c.close()


async def test_formatted_duplicate_fires_once_and_replaces_history(service: Service):
    c = await service.connect()
    await c.send(turn(0, "hi my name is sonny"))
    await c.send(turn(0, "Hi, my name is Sonny.", formatted=True))
    await c.wait_type("response.done")
    await asyncio.sleep(0.1)
    assert len([m for m in c.messages if m["type"] == "response.created"]) == 1
    assert len(service.emulator.requests) == 1
    await c.send(turn(1, "what is my name"))
    await c.wait_type("response.done", 2)
    history = service.emulator.requests[-1].body["messages"]
    assert history[1]["content"] == "Hi, my name is Sonny."
    await c.close()


async def test_trigger_formatted_waits_for_the_formatted_copy(service: Service):
    c = await service.connect(session={"trigger": "formatted", "format_wait_ms": 2000})
    await c.send(turn(0, "hi my name is sonny"))
    await asyncio.sleep(0.1)
    assert not service.emulator.requests
    await c.send(turn(0, "Hi, my name is Sonny.", formatted=True))
    done = (await c.wait_type("response.done"))[0]
    assert "Hi, my name is Sonny." in done["text"]
    await c.close()


async def test_trigger_formatted_falls_back_to_the_raw_final(service: Service):
    c = await service.connect(session={"trigger": "formatted", "format_wait_ms": 50})
    await c.send(turn(0, "no formatting here"))
    done = (await c.wait_type("response.done"))[0]
    assert "no formatting here" in done["text"]
    await c.close()


async def test_eager_speculation_is_promoted_when_the_final_matches(service: Service):
    c = await service.connect(session={"trigger": "eager"})
    await c.send(turn(0, "what time is it", final=False, utterance="What time is it?"))
    await asyncio.sleep(0.3)  # the speculative reply streams upstream, unseen
    assert not [m for m in c.messages if m["type"].startswith("response.")]
    assert len(service.emulator.requests) == 1
    await c.send(turn(0, "what time is it"))
    done = (await c.wait_type("response.done"))[0]
    assert "What time is it?" in done["text"]
    assert done["timings"]["speculative_head_start_ms"] > 0
    assert len(service.emulator.requests) == 1  # the speculation was used, not re-sent
    assert_guarantees(c.messages)
    await c.close()


async def test_eager_speculation_is_replaced_when_the_final_differs(service: Service):
    service.emulator.token_delay = 0.02
    c = await service.connect(session={"trigger": "eager"})
    await c.send(turn(0, "book a table", final=False, utterance="Book a table."))
    await asyncio.sleep(0.15)
    await c.send(turn(0, "book a table for two tonight"))
    done = (await c.wait_type("response.done"))[0]
    assert "book a table for two tonight" in done["text"]
    # No held-back text of the replaced speculation reached the client.
    assert "Book a table." not in "".join(m.get("delta", "") for m in c.messages)
    assert len([m for m in c.messages if m["type"] == "response.created"]) == 1
    assert len(service.emulator.requests) == 2
    assert_guarantees(c.messages)
    await c.close()


async def test_supersede_cancels_the_older_response_when_the_newer_turn_fires(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect(session={"on_new_turn": "supersede"})
    await c.send(turn(0, "first question " * 10))
    await c.wait_type("response.delta")
    await c.send(turn(1, "second", final=False))  # partials do not cancel in supersede mode
    await asyncio.sleep(0.1)
    assert not [m for m in c.messages if m["type"] == "response.cancelled"]
    await c.send(turn(1, "second question"))
    cancelled = (await c.wait_type("response.cancelled"))[0]
    assert cancelled["reason"] == "superseded" and cancelled["turn_order"] == 0
    await c.wait_type("response.done")
    assert_guarantees(c.messages)
    await c.close()


async def test_keep_runs_responses_concurrently_in_turn_order(service: Service):
    service.emulator.token_delay = 0.01
    c = await service.connect(session={"preset": "per_turn"})
    for i in range(6):
        await c.send(turn(i, f"question number {i}"))
    terminals = await c.wait_terminals(6, timeout=20)
    assert all(t["type"] == "response.done" for t in terminals)
    created = [m["turn_order"] for m in c.messages if m["type"] == "response.created"]
    assert created == sorted(created) == list(range(6))
    # per_turn: each request holds only its own turn, no history.
    for req in service.emulator.requests:
        assert [m["role"] for m in req.body["messages"]] in (["system", "user"], ["user"])
    assert_guarantees(c.messages)
    await c.close()


async def test_keep_beyond_max_inflight_drops_the_oldest_queued(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect(session={"preset": "per_turn", "max_inflight": 1})
    for i in range(4):
        await c.send(turn(i, f"question number {i} " + "more " * 5))
    await c.wait_terminals(4, timeout=20)
    superseded = [
        m for m in c.messages if m["type"] == "response.cancelled" and m["reason"] == "superseded"
    ]
    assert superseded, c.types()
    assert all(m["delivered_text"] == "" for m in superseded)
    # A dropped queued request was never sent upstream.
    assert len(service.emulator.requests) == 4 - len(superseded)
    assert_guarantees(c.messages)
    await c.close()


async def test_gateway_error_becomes_response_failed_with_status(service: Service):
    service.emulator.faults.append(Fault("status", status=503, times=5))
    c = await service.connect()
    await c.send(turn(0, "hello"))
    failed = (await c.wait_type("response.failed"))[0]
    assert failed["error"]["code"] == "gateway_error"
    assert failed["error"]["status"] == 503
    assert failed["delivered_text"] == ""
    await c.close()


async def test_session_fallbacks_are_tried_before_failing(service: Service):
    c = await service.connect(
        session={"model": "no-such-model", "fallbacks": [{"model": "gpt-4.1"}]}
    )
    await c.send(turn(0, "hello there"))
    done = (await c.wait_type("response.done"))[0]
    assert "hello there" in done["text"]
    await c.close()


async def test_a_failing_gateway_in_one_session_leaves_another_untouched(service: Service):
    service.emulator.faults.append(Fault("drop", after_chunks=2, model="gpt-5-mini", times=10))
    bad = await service.connect(session={"model": "gpt-5-mini"})
    good = await service.connect()
    await bad.send(turn(0, "this one breaks " * 5))
    await good.send(turn(0, "this one works"))
    failed = (await bad.wait_terminals(1))[0]
    done = (await good.wait_terminals(1))[0]
    assert failed["type"] == "response.failed"
    assert done["type"] == "response.done" and "this one works" in done["text"]
    assert_guarantees(bad.messages)
    assert_guarantees(good.messages)
    await bad.close()
    await good.close()


async def test_truncate_keeps_only_what_was_heard(service: Service):
    c = await service.connect()
    await c.send(turn(0, "tell me about paris"))
    done = (await c.wait_type("response.done"))[0]
    heard = done["text"][:8]
    await c.send({"type": "response.truncate", "response_id": done["response_id"], "text": heard})
    ack = (await c.wait_type("response.truncated"))[0]
    assert ack["text"] == heard
    await c.send(
        {"type": "response.truncate", "response_id": done["response_id"], "text": "not a prefix"}
    )
    err = (await c.wait_type("error"))[0]
    assert err["error"]["code"] == "invalid_event"
    await c.send(turn(1, "and then"))
    await c.wait_type("response.done", 2)
    assistant = [
        m for m in service.emulator.requests[-1].body["messages"] if m["role"] == "assistant"
    ]
    assert assistant[0]["content"] == heard
    await c.close()


async def test_a_cancelled_reply_is_kept_in_history_only_as_delivered(service: Service):
    service.emulator.token_delay = 0.05
    c = await service.connect()
    await c.send(turn(0, "a long story " * 10))
    await c.wait_type("response.delta", 3)
    await c.send(turn(1, "wait", final=False))
    cancelled = (await c.wait_type("response.cancelled"))[0]
    await c.send(turn(1, "wait what"))
    await c.wait_type("response.done")
    assistant = [
        m for m in service.emulator.requests[-1].body["messages"] if m["role"] == "assistant"
    ]
    assert assistant and assistant[0]["content"] == cancelled["delivered_text"]
    await c.close()


async def test_a_gateway_deadline_becomes_response_failed_and_closes_upstream(
    service: Service,
):
    from gateway_client import GatewayClient

    service.emulator.faults.append(Fault("slow_first_token", delay=5.0))
    async with GatewayClient(
        base_url=service.emulator.base_url, api_key=None, max_retries=0, first_token_timeout=0.3
    ) as impatient:
        service.server.deps.gateway = impatient
        c = await service.connect()
        await c.send(turn(0, "anyone there"))
        failed = (await c.wait_type("response.failed"))[0]
        assert failed["error"]["code"] == "gateway_timeout"
        gone = await service.emulator.wait_disconnect(timeout=5.0)
        assert not gone.completed
        await c.close()


async def test_tool_calls_stream_as_tool_call_deltas_and_end_in_done(service: Service):
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    c = await service.connect(
        session={
            "tools": [weather],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    await c.send(turn(0, "what is the weather in paris"))
    done = (await c.wait_type("response.done"))[0]
    calls = done["tool_calls"]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    fragments = [m for m in c.of(done["response_id"]) if m["type"] == "response.tool_call.delta"]
    assert fragments and fragments[0]["name"] == "get_weather"
    assert "".join(f["arguments"] or "" for f in fragments) == calls[0]["function"]["arguments"]
    assert "city" in calls[0]["function"]["arguments"]
    body = service.emulator.requests[-1].body
    assert body["tools"] == [weather] and body["tool_choice"]["function"]["name"] == "get_weather"
    await c.close()


async def test_a_spent_gateway_window_holds_the_next_request_for_that_model(settings):
    import aiohttp

    from gateway_client import GatewayClient
    from gateway_client.emulator import GatewayEmulator
    from realtime.server import Server

    async with (
        GatewayEmulator(rate_limit=1) as emu,  # answers X-RateLimit-Remaining: 0 at once
        GatewayClient(base_url=emu.base_url, api_key=None) as gw,
        Server(settings, gw) as server,
        aiohttp.ClientSession() as http,
    ):
        c = await Service(server, emu, http).connect()
        await c.send(turn(0, "first"))
        await c.wait_type("response.done")
        # The next request for that model would wait for the window, not draw a 429.
        assert server.limiter.window("gpt-4.1").delay(time.monotonic()) > 0
        assert server.limiter.window("gpt-5-mini").delay(time.monotonic()) == 0
        await c.close()
