"""The official openai SDK against the emulator over loopback (AssemblyAI's CLI does the same
against the real gateway: ``base_url=.../v1``, ``Authorization: Bearer <key>``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI

from gateway_client.emulator import GatewayEmulator

GUARD = 10.0
KEY = "sdk-key-6f5e4d3c2b1a"
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}

TOOLS: Any = [WEATHER]  # the SDK wants its TypedDicts; a plain dict is what goes out


@pytest.fixture
async def sdk(make_emulator: Any) -> AsyncIterator[tuple[GatewayEmulator, AsyncOpenAI]]:
    emu = await make_emulator(api_keys=(KEY,), rate_limit=100)
    client = AsyncOpenAI(base_url=emu.base_url, api_key=KEY, max_retries=0)
    try:
        yield emu, client
    finally:
        await client.close()


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_complete(sdk: tuple[GatewayEmulator, AsyncOpenAI]) -> None:
    emu, client = sdk
    async with asyncio.timeout(GUARD):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=user("how are you"), max_tokens=100
        )
    result = raw.parse()
    assert result.object == "chat.completion" and result.model == "gpt-4.1"
    assert "how are you" in (result.choices[0].message.content or "")
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None and result.usage.total_tokens > 0
    assert raw.headers["x-request-id"] == emu.requests[-1].request_id
    extra = result.model_extra or {}
    assert extra["request_id"] == emu.requests[-1].request_id and extra["llm_status_code"] == 200


async def test_stream_matches_complete(sdk: tuple[GatewayEmulator, AsyncOpenAI]) -> None:
    emu, client = sdk
    text = "stream this sentence for me"
    async with asyncio.timeout(GUARD):
        plain = await client.chat.completions.create(model="gpt-5", messages=user(text))
        parts: list[str] = []
        usage = None
        finish = None
        stream = await client.chat.completions.create(
            model="gpt-5",
            messages=user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        # usage is sent even without stream_options: the gateway forwards a usage chunk
        bare = await client.chat.completions.create(model="gpt-5", messages=user(text), stream=True)
        bare_usage = [c.usage async for c in bare if c.usage is not None]
    assert "".join(parts) == plain.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert len(bare_usage) == 1
    assert emu.requests[-1].completed


async def test_tool_call_round_trip(sdk: tuple[GatewayEmulator, AsyncOpenAI]) -> None:
    _, client = sdk
    messages: list[Any] = user("what will the weather be in Oslo")
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    async with asyncio.timeout(GUARD):
        first = await client.chat.completions.create(
            model="gpt-4.1",
            messages=messages,
            tools=TOOLS,
            tool_choice=forced,
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        args = json.loads(call.function.arguments)  # type: ignore[union-attr]
        jsonschema.validate(args, WEATHER["function"]["parameters"])
        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "rain, 7C"},
        ]
        final = await client.chat.completions.create(
            model="gpt-4.1",
            messages=messages,
            tools=TOOLS,
        )
    assert final.choices[0].finish_reason == "stop"
    assert "rain, 7C" in (final.choices[0].message.content or "")


async def test_tool_call_streamed(sdk: tuple[GatewayEmulator, AsyncOpenAI]) -> None:
    _, client = sdk
    async with asyncio.timeout(GUARD):
        stream = await client.chat.completions.create(
            model="gpt-4.1",
            messages=user("call get_weather for Rome"),
            tools=TOOLS,
            stream=True,
        )
        name, args = None, ""
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    name = name or (delta.function.name if delta.function else None)
                    args += (delta.function.arguments or "") if delta.function else ""
    assert name == "get_weather"
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])


async def test_errors_map_to_sdk_exceptions(
    sdk: tuple[GatewayEmulator, AsyncOpenAI], make_emulator: Any
) -> None:
    emu, client = sdk
    async with asyncio.timeout(GUARD):
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="no-such-model", messages=user("x"))
        assert "model no-such-model is not supported" in str(bad.value)
        wrong = AsyncOpenAI(base_url=emu.base_url, api_key="not-the-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as auth:
            await wrong.chat.completions.create(model="gpt-4.1", messages=user("x"))
        await wrong.close()
        # the SDK keeps the auth-middleware body's "error" text on .body
        assert str(auth.value.body).startswith("Authentication error")
        assert KEY not in str(auth.value) and KEY not in str(auth.value.body)
        limited = await make_emulator(rate_limit=1)
        small = AsyncOpenAI(base_url=limited.base_url, api_key="any", max_retries=0)
        await small.chat.completions.create(model="gpt-4.1", messages=user("one"))
        with pytest.raises(openai.RateLimitError) as limit:
            await small.chat.completions.create(model="gpt-4.1", messages=user("two"))
        await small.close()
    assert limit.value.response.headers["X-RateLimit-Remaining"] == "0"
