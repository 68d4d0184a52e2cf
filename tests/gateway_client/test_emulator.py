"""The LLM Gateway emulator over real loopback sockets, with a raw aiohttp client.

Deadlines here only guard against hangs; lower bounds on gaps follow from the emulator's own
sleeps and never bound speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

import aiohttp
import jsonschema
import pytest

from gateway_client.emulator import Fault, GatewayEmulator
from gateway_client.emulator.faults import RateLimiter, parse_fault_header
from gateway_client.emulator.schema import example_value

GUARD = 10.0
KEY = "emu-test-key-0123456789abcdef"

Json = dict[str, Any]


def chat(text: str = "hello there", model: str = "gpt-4.1", **extra: Any) -> Json:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(
    emu: GatewayEmulator, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """POST a chat request; returns (status, headers, parsed JSON or raw text)."""
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with http.post(
            f"{emu.base_url}/chat/completions", data=data, headers=headers or {}
        ) as resp:
            text = await resp.text()
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            return resp.status, resp.headers, parsed


async def sse(
    emu: GatewayEmulator, body: Json, headers: dict[str, str] | None = None
) -> tuple[int, Any, list[Any]]:
    """POST a stream request; returns (status, headers, [event dicts | '[DONE]' | raw str])."""
    events: list[Any] = []
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        async with http.post(
            f"{emu.base_url}/chat/completions", json={**body, "stream": True}, headers=headers or {}
        ) as resp:
            try:
                async for raw_line in resp.content:
                    line = raw_line.decode().rstrip("\n")
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    try:
                        events.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
                    except ValueError:
                        events.append(payload)
            except aiohttp.ClientPayloadError:
                events.append("<dropped>")
            return resp.status, resp.headers, events


def content_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


# ---------------------------------------------------------------------- envelope and stream


async def test_envelope_has_gateway_and_openai_fields(emulator: GatewayEmulator) -> None:
    status, headers, data = await post(emulator, chat("what is two plus two", max_tokens=50))
    assert status == 200
    assert data["request_id"] == headers["x-request-id"] == emulator.requests[-1].request_id
    assert data["object"] == "chat.completion" and data["model"] == "gpt-4.1"
    assert isinstance(data["created"], int) and data["id"].startswith("chatcmpl-")
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "what is two plus two" in choice["message"]["content"]
    assert "tool_calls" not in choice["message"]
    assert data["request"] == {"model": "gpt-4.1", "max_tokens": 50}
    usage = data["usage"]
    assert usage["input_tokens"] == usage["prompt_tokens"] > 0
    assert usage["output_tokens"] == usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert data["http_status_code"] == 200 and data["llm_status_code"] == 200
    assert isinstance(data["response_time"], int) and data["response_time"] >= 0


async def test_stream_is_openai_chunk_format(emulator: GatewayEmulator) -> None:
    text = "first line\n  second   line"
    _, _, plain = await post(emulator, chat(text))
    status, headers, events = await sse(emulator, chat(text))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    first, *words, finish, usage = chunks
    assert first["request_id"] == headers["x-request-id"]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4.1" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    # one word per chunk, whitespace kept, so the join is the non-streamed content exactly
    assert all(len(w["choices"][0]["delta"]["content"].split()) == 1 for w in words)
    assert content_of(chunks) == plain["choices"][0]["message"]["content"]
    assert text in content_of(chunks)
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(words)
    rec = emulator.requests[-1]
    assert rec.stream and rec.completed and not rec.disconnected and rec.status == 200
    assert rec.chunks_sent == len(chunks) == len(rec.chunk_times)


async def test_prompt_is_one_user_message(emulator: GatewayEmulator) -> None:
    status, _, data = await post(emulator, {"model": "claude-sonnet-4-6", "prompt": "hi there"})
    assert status == 200
    assert "hi there" in data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] == "end_turn"
    assert "prompt" not in data["request"]


@pytest.mark.parametrize("emulator", [{"reply_words": 50}], indirect=True)
async def test_replies_are_deterministic_and_padded(emulator: GatewayEmulator) -> None:
    _, _, a = await post(emulator, chat("same words"))
    _, _, b = await post(emulator, chat("same words"))
    _, _, long = await post(emulator, chat("same words"), {"X-Emulator-Reply-Words": "120"})
    text = a["choices"][0]["message"]["content"]
    assert text == b["choices"][0]["message"]["content"]
    assert len(text.split()) == 50 and text.startswith("You said: same words")
    assert len(long["choices"][0]["message"]["content"].split()) == 120


# ---------------------------------------------------------------------- validation

CASES = [
    ({}, ["model is required", "one of messages or prompt required"]),
    ({"model": 7, "prompt": "x"}, ["model must be a non-empty string"]),
    (chat(model="no-such-model"), ["model no-such-model is not supported"]),
    (chat(max_tokens=0), ["max_tokens must be at least 1"]),
    (chat(max_tokens="10"), ["max_tokens must be an integer"]),
    (chat(max_tokens=2_000_000), ["max_tokens must be less than the model context length"]),
    (chat(temperature=2.5), ["temperature must be between 0 and 2"]),
    (chat(temperature="hot"), ["temperature must be a number"]),
    (chat(stop=["a", "b", "c", "d", "e"]), ["stop may hold at most 4"]),
    (chat(stream="yes"), ["stream must be a boolean"]),
    (chat(fallback_config={"depth": 3}), ["fallback_config depth cannot be greater than 2"]),
    (chat(model_region="us"), ["model_region can only be set to global"]),
    ({"model": "gpt-4.1", "messages": "hi"}, ["messages must be a non-empty array"]),
    (
        {"model": "gpt-4.1", "messages": [{"role": "robot", "content": "x"}]},
        ["messages[0].role must be one of"],
    ),
    ({"model": "gpt-4.1", "prompt": 5}, ["prompt must be a non-empty string"]),
    (chat(fallbacks=[{"temperature": 1}]), ["fallbacks[0].model is required"]),
    (
        chat(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        ["tool_choice names an unknown function: g"],
    ),
    (chat(response_format={"type": "xml"}), ["response_format is invalid"]),
    (
        chat(post_processing_steps=[{"type": "spellcheck"}]),
        ["post_processing_steps type spellcheck is not supported"],
    ),
    (chat(reasoning={"effort": "extreme"}), ["reasoning must be"]),
]


@pytest.mark.parametrize(("body", "expected"), CASES)
async def test_validation_errors(
    emulator: GatewayEmulator, body: Json, expected: list[str]
) -> None:
    status, headers, data = await post(emulator, body)
    assert status == 400
    assert data["code"] == 400
    # an unknown model alone is named in the message; field errors are summed up
    assert data["message"] == (
        "invalid request body"
        if body.get("model") != "no-such-model"
        else "model no-such-model is not supported"
    )
    assert data["request_id"] == headers["x-request-id"]
    for fragment in expected:
        assert any(fragment in e for e in data["metadata"]["errors"]), data
    assert emulator.requests[-1].status == 400


async def test_every_failing_field_is_listed(emulator: GatewayEmulator) -> None:
    body = chat(temperature=9, max_tokens=0, model_region="eu", stop=[1, 2, 3, 4, 5])
    _, _, data = await post(emulator, body)
    assert len(data["metadata"]["errors"]) == 5


async def test_body_that_is_not_json(emulator: GatewayEmulator) -> None:
    status, _, data = await post(emulator, b"{nope")
    assert status == 400 and data["metadata"]["errors"] == ["body must be a JSON object"]


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize("emulator", [{"api_keys": (KEY,)}], indirect=True)
async def test_auth(emulator: GatewayEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": f"Bearer x{KEY}"}):
        status, _, data = await post(emulator, chat(), headers)
        assert status == 401
        assert data["error"] == "Authentication error, API token missing/invalid"
        assert data["status"] == "error" and data["request_id"]
    for good in (KEY, f"Bearer {KEY}", f"bearer {KEY}"):
        status, _, _ = await post(emulator, chat(), {"Authorization": good})
        assert status == 200
    assert [r.status for r in emulator.requests] == [401, 401, 401, 200, 200, 200]
    assert "POST /v1/chat/completions" in caplog.text and KEY not in caplog.text


# ---------------------------------------------------------------------- rate limits


@pytest.mark.parametrize("emulator", [{"rate_limit": 2}], indirect=True)
async def test_rate_limit_headers_and_429(emulator: GatewayEmulator) -> None:
    seen = [await post(emulator, chat()) for _ in range(3)]
    (s1, h1, _), (s2, h2, _), (s3, h3, d3) = seen
    assert (s1, s2, s3) == (200, 200, 429)
    assert [h["X-RateLimit-Limit"] for h in (h1, h2, h3)] == ["2", "2", "2"]
    assert [h["X-RateLimit-Remaining"] for h in (h1, h2, h3)] == ["1", "0", "0"]
    assert 1 <= int(h3["X-RateLimit-Reset"]) <= 60
    assert h3["Retry-After"] == h3["X-RateLimit-Reset"]
    assert d3["code"] == 429 and "rate limit" in d3["message"]
    other, headers, _ = await post(emulator, chat(model="claude-sonnet-4-6"))
    assert other == 200 and headers["X-RateLimit-Remaining"] == "1"  # windows are per model


def test_rate_window_resets_after_60_seconds() -> None:
    limiter = RateLimiter(1)
    assert limiter.check("m", 0.0).allowed
    refused = limiter.check("m", 59.5)
    assert not refused.allowed and refused.headers["X-RateLimit-Reset"] == "1"
    assert limiter.check("m", 60.0).allowed
    assert RateLimiter(None).check("m", 0.0).headers == {}


# ---------------------------------------------------------------------- fallbacks and retry


@pytest.mark.parametrize("emulator", [{"server_retry_delay": 0.01}], indirect=True)
async def test_fallbacks(emulator: GatewayEmulator) -> None:
    body = chat(
        "fall back",
        model="no-such-model",
        fallbacks=[{"model": "claude-sonnet-4-6", "temperature": 0.5}],
    )
    status, _, data = await post(emulator, body)
    assert status == 200 and data["model"] == "claude-sonnet-4-6"
    assert "fall back" in data["choices"][0]["message"]["content"]
    assert emulator.requests[-1].answered_by == "claude-sonnet-4-6"
    # a fallback may override any field, messages included
    override = chat(
        "primary text",
        model="no-such-model",
        fallbacks=[{"model": "gpt-5", "messages": [{"role": "user", "content": "fallback text"}]}],
    )
    _, _, data = await post(emulator, override)
    assert "fallback text" in data["choices"][0]["message"]["content"]
    # depth limits how many fallbacks are tried; more than 2 is refused
    shallow = chat(
        model="no-such-model", fallbacks=[{"model": "gpt-5"}], fallback_config={"depth": 0}
    )
    assert (await post(emulator, shallow))[0] == 400
    too_deep = chat(fallbacks=[{"model": "gpt-5"}] * 3, fallback_config={"depth": 3})
    status, _, data = await post(emulator, too_deep)
    assert status == 400
    assert "fallback_config depth cannot be greater than 2" in data["metadata"]["errors"]


@pytest.mark.parametrize("emulator", [{"server_retry_delay": 0.01}], indirect=True)
async def test_provider_failure_is_retried_then_falls_back(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("status", status=503, model="gpt-4.1"))
    status, _, data = await post(emulator, chat("retried once"))
    assert status == 200 and data["model"] == "gpt-4.1"  # the server-side retry succeeded
    assert len(emulator.requests) == 1 and emulator.faults == []

    emulator.faults.append(Fault("status", status=503, model="gpt-4.1"))
    no_retry = chat(
        "no retry", fallbacks=[{"model": "gemini-2.5-flash"}], fallback_config={"retry": False}
    )
    status, _, data = await post(emulator, no_retry)
    assert status == 200 and data["model"] == "gemini-2.5-flash"

    emulator.faults.append(Fault("status", status=502, model="gpt-4.1", times=2))
    status, _, data = await post(emulator, chat("all fail"))
    assert status == 502 and data["code"] == 502 and emulator.faults == []


# ---------------------------------------------------------------------- transcripts


@pytest.mark.parametrize("emulator", [{"transcripts": {"t1": "HELLO FROM AUDIO"}}], indirect=True)
async def test_transcript_substitution(emulator: GatewayEmulator) -> None:
    messages = [
        {"role": "system", "content": "no tag here, {{transcript}} is not the tag"},
        {"role": "user", "content": "A: {{ transcript }} B: {{ transcript }}"},
        {"role": "user", "content": "later {{ transcript }}"},
    ]
    body = {"model": "gpt-4.1", "messages": messages, "transcript_id": "t1"}
    status, _, data = await post(emulator, body)
    assert status == 200
    content = data["choices"][0]["message"]["content"]
    # the reply echoes the last user message: not substituted (only the first one holding
    # the tag is), so send that message last to see the substitution itself
    assert content.endswith("later {{ transcript }}")
    body["messages"] = messages[:2]
    _, _, data = await post(emulator, body)
    assert data["choices"][0]["message"]["content"].endswith(
        "A: HELLO FROM AUDIO B: {{ transcript }}"
    )
    assert emulator.requests[-1].body["messages"] == messages[:2]  # recorded as sent
    status, _, data = await post(emulator, {**body, "transcript_id": "missing"})
    assert status == 404 and data["code"] == 404


# ---------------------------------------------------------------------- json-repair

SCHEMA: Json = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 3},
        "mood": {"enum": ["happy", "sad"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "when": {"type": "string", "format": "date-time"},
        "meta": {"$ref": "#/$defs/meta"},
    },
    "required": ["summary", "mood", "score", "tags"],
    "additionalProperties": False,
    "$defs": {
        "meta": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    },
}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "report", "schema": SCHEMA}}
REPAIR = [{"type": "json-repair"}]
WEATHER: Json = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    },
}


async def test_json_repair(emulator: GatewayEmulator) -> None:
    broken = {"X-Emulator-Broken-Json": "1"}
    _, _, raw = await post(emulator, chat(response_format=JSON_FORMAT), broken)
    with pytest.raises(ValueError):
        json.loads(raw["choices"][0]["message"]["content"])
    _, _, fixed = await post(
        emulator, chat(response_format=JSON_FORMAT, post_processing_steps=REPAIR), broken
    )
    jsonschema.validate(json.loads(fixed["choices"][0]["message"]["content"]), SCHEMA)
    _, _, text = await post(emulator, chat("plain", post_processing_steps=REPAIR), broken)
    assert json.loads(text["choices"][0]["message"]["content"]) == {"reply": "You said: plain"}
    tool = chat("weather please", tools=[WEATHER], post_processing_steps=REPAIR)
    _, _, called = await post(emulator, tool, broken)
    args = called["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    status, _, data = await post(
        emulator, chat(post_processing_steps=REPAIR), {"X-Emulator-Broken-Json": "unrepairable"}
    )
    assert status == 500 and data["code"] == 500


# ---------------------------------------------------------------------- tools and formats


async def test_response_format_content_validates(emulator: GatewayEmulator) -> None:
    _, _, data = await post(emulator, chat("summarise me", response_format=JSON_FORMAT))
    document = json.loads(data["choices"][0]["message"]["content"])
    jsonschema.validate(document, SCHEMA)
    assert "summarise me" in document["summary"]
    _, _, events = await sse(emulator, chat("summarise me", response_format=JSON_FORMAT))
    jsonschema.validate(json.loads(content_of(events[:-1])), SCHEMA)


@pytest.mark.parametrize(
    ("model", "reason"), [("gpt-4.1", "tool_calls"), ("claude-sonnet-4-6", "tool_use")]
)
async def test_tool_call_and_result(emulator: GatewayEmulator, model: str, reason: str) -> None:
    body = chat("what is the weather in Paris", model=model, tools=[WEATHER])
    _, _, data = await post(emulator, body)
    choice = data["choices"][0]
    assert choice["finish_reason"] == reason and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(
        json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"]
    )
    history = [
        *body["messages"],
        choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
    ]
    _, _, final = await post(emulator, {**body, "messages": history})
    text = final["choices"][0]["message"]["content"]
    assert "get_weather" in text and "18C and sunny" in text
    assert "tool_calls" not in final["choices"][0]["message"]


async def test_tool_call_stream_deltas(emulator: GatewayEmulator) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    body = chat("tell me something", tools=[WEATHER], tool_choice=forced)
    _, _, plain = await post(emulator, body)
    _, _, events = await sse(emulator, body)
    deltas = [
        e["choices"][0]["delta"]["tool_calls"][0]
        for e in events[:-1]
        if e["choices"] and "tool_calls" in e["choices"][0]["delta"]
    ]
    opening, *fragments = deltas
    assert opening["id"] and opening["function"] == {"name": "get_weather", "arguments": ""}
    assert fragments and all(set(f) == {"index", "function"} for f in fragments)
    joined = "".join(f["function"]["arguments"] for f in fragments)
    call = plain["choices"][0]["message"]["tool_calls"][0]
    assert joined == call["function"]["arguments"] and opening["id"] == call["id"]
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    none = chat("what is the weather", tools=[WEATHER], tool_choice="none")
    assert "tool_calls" not in (await post(emulator, none))[2]["choices"][0]["message"]


def test_example_values_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "number", "exclusiveMinimum": 2, "maximum": 9},
            "i": {"type": ["integer", "null"], "minimum": 3},
            "s": {"type": "string", "maxLength": 4},
            "pick": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
            "c": {"const": "fixed"},
            "tree": {"$ref": "#/$defs/node"},
        },
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
    }
    value = example_value(schema, "some long text")
    jsonschema.validate(value, schema)
    assert value["s"] == "some" and value["c"] == "fixed"


# ---------------------------------------------------------------------- async runs


async def test_async_run(emulator: GatewayEmulator) -> None:
    status, _, data = await post(emulator, chat("later please") | {"async": True})
    assert status == 200 and data["status"] == "pending" and data["id"]
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{emulator.base_url}/chat_completion_runs/{data['id']}") as r:
                run = await r.json()
            if run["status"] != "pending":
                break
            await asyncio.sleep(0.01)
        async with http.get(f"{emulator.base_url}/chat_completion_runs/nope") as r:
            assert r.status == 404
    assert run["status"] == "completed" and run["id"] == data["id"]
    assert "later please" in run["response"]["choices"][0]["message"]["content"]
    emulator.faults.append(Fault("status", status=500))
    _, _, failed = await post(emulator, chat("doomed") | {"async": True})
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{emulator.base_url}/chat_completion_runs/{failed['id']}") as r:
                run = await r.json()
            if run["status"] != "pending":
                break
            await asyncio.sleep(0.01)
    assert run["status"] == "failed" and run["error"]["code"] == 500


# ---------------------------------------------------------------------- faults


async def test_status_and_rate_limit_faults(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("status", status=503, retry_after=2, message="busy"))
    emulator.faults.append(Fault("rate_limit", rate_reset=3))
    status, headers, data = await post(emulator, chat())
    assert (status, headers["Retry-After"], data["message"]) == (503, "2", "busy")
    status, headers, data = await sse(emulator, chat())
    assert status == 429 and headers["X-RateLimit-Reset"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0" and "X-RateLimit-Limit" in headers
    assert (await post(emulator, chat()))[0] == 200  # both consumed
    assert [r.fault for r in emulator.requests] == ["status", "rate_limit", None]


async def test_faults_match_model_and_times(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("error_chunk", model="claude-sonnet-4-6", times=2))
    assert (await sse(emulator, chat()))[2][-1] == "[DONE]"  # other model: untouched
    for _ in range(2):
        events = (await sse(emulator, chat(model="claude-sonnet-4-6")))[2]
        assert events == [{"error": {"message": "upstream model error", "code": 500}}]
    assert emulator.faults == []
    # a header fault applies to its own request and leaves the queue alone
    emulator.faults.append(Fault("status", status=500))
    events = (await sse(emulator, chat("a b c"), {"X-Emulator-Fault": "drop;after_chunks=1"}))[2]
    assert events[-1] == "<dropped>" and len(events) == 2
    assert len(emulator.faults) == 1
    with pytest.raises(ValueError):
        parse_fault_header("drop;bogus=1")
    assert parse_fault_header("gap;after_chunks=2;delay=0.5") == Fault(
        "gap", after_chunks=2, delay=0.5
    )


async def test_slow_first_token_sends_headers_first(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("slow_first_token", delay=0.5))
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        async with http.post(
            f"{emulator.base_url}/chat/completions", json=chat(stream=True)
        ) as resp:
            assert resp.status == 200
            assert emulator.requests[-1].chunks_sent == 0
            await resp.read()
    rec = emulator.requests[-1]
    assert rec.completed and rec.chunk_times[0] - rec.arrived_at >= 0.5


async def test_gap_malformed_drop(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("gap", after_chunks=2, delay=0.3))
    events = (await sse(emulator, chat("one two three")))[2]
    times = emulator.requests[-1].chunk_times
    assert events[-1] == "[DONE]" and times[2] - times[1] >= 0.3
    emulator.faults.append(Fault("malformed", after_chunks=2))
    events = (await sse(emulator, chat("one two three")))[2]
    assert events[2] == "{not json" and events[-1] == "[DONE]" and len(events) == 4
    emulator.faults.append(Fault("drop", after_chunks=3))
    events = (await sse(emulator, chat("one two three four five")))[2]
    assert len(events) == 4 and events[-1] == "<dropped>"
    rec = emulator.requests[-1]
    assert rec.chunks_sent == 3 and not rec.completed and not rec.disconnected


async def test_hangs_and_wait_disconnect(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("hang"))
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        resp = await http.post(f"{emulator.base_url}/chat/completions", json=chat(stream=True))
        assert resp.status == 200  # headers, then silence
        resp.close()
        gone = await emulator.wait_disconnect(timeout=5.0)
    assert gone.fault == "hang" and gone.chunks_sent == 0 and gone.disconnected_at is not None
    emulator.faults.append(Fault("hang_before_headers"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(f"{emulator.base_url}/chat/completions", json=chat())
    gone = await emulator.wait_disconnect(timeout=5.0)
    assert gone.fault == "hang_before_headers" and gone.status == 0 and not gone.completed
    with pytest.raises(TimeoutError):
        await emulator.wait_disconnect(timeout=0.05)


async def test_client_abort_mid_stream_is_observed(emulator: GatewayEmulator) -> None:
    slow = {"X-Emulator-Token-Delay": "0.02", "X-Emulator-Reply-Words": "500"}
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{emulator.base_url}/chat/completions", json=chat(stream=True), headers=slow
        )
        lines = 0
        async for line in resp.content:
            lines += line.startswith(b"data: ")
            if lines == 3:
                break
        resp.close()
        gone = await emulator.wait_disconnect(timeout=5.0)
    assert gone.disconnected and not gone.completed and gone.disconnected_at is not None
    assert 3 <= gone.chunks_sent < 500
    assert gone.request_id == resp.headers["x-request-id"]


async def test_open_requests_counts_running_chat_handlers(emulator: GatewayEmulator) -> None:
    slow = {"X-Emulator-Token-Delay": "0.02", "X-Emulator-Reply-Words": "20"}
    assert emulator.open_requests == 0
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{emulator.base_url}/chat/completions", json=chat(stream=True), headers=slow
        )
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        assert emulator.open_requests == 1  # still streaming
        rest = await resp.read()
        resp.release()
        await emulator.wait_idle()
    assert rest.endswith(b"data: [DONE]\n\n") and emulator.requests[-1].completed
    assert emulator.open_requests == 0
    await post(emulator, chat())  # a plain JSON answer counts and uncounts as well
    await emulator.wait_idle()
    assert emulator.open_requests == 0
    await emulator.wait_idle()  # already idle: returns at once


async def test_open_requests_returns_to_zero_when_the_client_leaves(
    emulator: GatewayEmulator,
) -> None:
    slow = {"X-Emulator-Token-Delay": "0.02", "X-Emulator-Reply-Words": "500"}
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{emulator.base_url}/chat/completions", json=chat(stream=True), headers=slow
        )
        await resp.content.readline()
        assert emulator.open_requests == 1
        resp.close()
        gone = await emulator.wait_disconnect(timeout=5.0)
        # The handler's finally ran before the disconnect was reported to us.
        assert gone.disconnected and emulator.open_requests == 0
    emulator.faults.append(Fault("hang_before_headers"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(f"{emulator.base_url}/chat/completions", json=chat())
    await emulator.wait_disconnect(timeout=5.0)
    assert emulator.open_requests == 0


async def test_wait_idle_times_out_while_a_request_hangs(emulator: GatewayEmulator) -> None:
    emulator.faults.append(Fault("hang"))
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        resp = await http.post(f"{emulator.base_url}/chat/completions", json=chat(stream=True))
        with pytest.raises(TimeoutError):
            await emulator.wait_idle(timeout=0.05)
        assert emulator.open_requests == 1
        resp.close()
        await emulator.wait_idle(timeout=5.0)
    assert emulator.open_requests == 0


async def test_stop_ends_hung_requests(make_emulator: Any) -> None:
    emu = await make_emulator()
    emu.faults.append(Fault("hang_before_headers"))
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.post(f"{emu.base_url}/chat/completions", json=chat()))
        while not emu.requests:
            await asyncio.sleep(0.01)
        async with asyncio.timeout(GUARD):
            await emu.stop()
            with pytest.raises(aiohttp.ClientError):
                await pending
    assert not emu.requests[0].disconnected  # stopping is not the client leaving


# ---------------------------------------------------------------------- other surfaces


async def test_models_list(emulator: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.base_url}/models") as resp:
            data = await resp.json()
    ids = {m["id"] for m in data["data"]}
    documented = {
        "claude-opus-4-6",
        "claude-opus-4-5-20251101",
        "claude-sonnet-4-6",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-20250514",
        "claude-sonnet-4-20250514",
        "claude-3-haiku-20240307",
        "gpt-5.2",
        "gpt-5.1",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-oss-120b",
        "gpt-oss-20b",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "kimi-k2.5",
        "claude-sonnet-5",
        "claude-opus-4-7",
        "gpt-5.6-luna",
        "gpt-5.6-terra",
        "gpt-5.5",
        "gemini-3.6-flash",
        "gemini-3.5-flash",
        "gemini-3.5-flash-lite",
        "qwen3-next-80b-a3b",
        "qwen3-32B",
    }
    assert documented <= ids
    entry = next(m for m in data["data"] if m["id"] == "claude-sonnet-4-6")
    assert entry["pricing"]["global"]["prompt"] > 0 and entry["retirement_date"] == 0
    assert entry["default_provider"] == {"id": "anthropic", "name": "Anthropic"}


async def test_stream_only_openai(make_emulator: Any) -> None:
    strict = await make_emulator(stream_only_openai=True)
    lenient = await make_emulator()
    _, headers, data = await post(
        strict, chat("json please", model="claude-sonnet-4-6", stream=True)
    )
    assert headers["Content-Type"].startswith("application/json")
    assert "json please" in data["choices"][0]["message"]["content"]
    assert (await sse(strict, chat()))[2][-1] == "[DONE]"  # OpenAI models still stream
    assert (await sse(lenient, chat(model="claude-sonnet-4-6")))[2][-1] == "[DONE]"


@pytest.mark.parametrize("emulator", [{"max_recorded": 3}], indirect=True)
async def test_recorded_requests_are_bounded(emulator: GatewayEmulator) -> None:
    for i in range(5):
        await post(emulator, chat(f"message {i}"))
    assert [r.body["messages"][0]["content"] for r in emulator.requests] == [
        "message 2",
        "message 3",
        "message 4",
    ]


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway_client.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in (
        "--port",
        "--api-key",
        "--transcripts",
        "--token-delay",
        "--rate-limit",
        "--reply-words",
        "--stream-only-openai",
        "--first-token-delay",
    ):
        assert flag in out.stdout
