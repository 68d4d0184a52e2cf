"""The official assemblyai SDK's LLM Gateway client (1.8.2) against the emulator on loopback.

The SDK's pydantic models validate every field the emulator sends; the sync client (httpx)
runs in a worker thread while the emulator serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import assemblyai as aai
import pytest

from gateway_client.emulator import GatewayEmulator
from gateway_client.emulator.models import MODELS

GUARD = 20.0
KEY = "aai-sdk-key-0f1e2d3c4b5a"


@pytest.fixture
async def emu(make_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> GatewayEmulator:
    emulator: GatewayEmulator = await make_emulator(api_keys=(KEY,))
    monkeypatch.setattr(aai.settings, "llm_gateway_base_url", emulator.url)
    monkeypatch.setattr(aai.settings, "api_key", KEY)
    return emulator


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_complete_validates_every_field(emu: GatewayEmulator) -> None:
    gateway = aai.LLMGateway()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                },
            },
        }
    ]

    def run() -> tuple[aai.LLMGatewayChatCompletion, aai.LLMGatewayChatCompletion]:
        text = gateway.chat.completions.create(
            model="claude-sonnet-4-6", messages=user("summarise the call"), max_tokens=200
        )
        tool = gateway.chat.completions.create(
            model="gpt-4.1", messages=user("please lookup the order"), tools=tools
        )
        return text, tool

    async with asyncio.timeout(GUARD):
        text, tool = await asyncio.to_thread(run)
    assert text.request_id == emu.requests[0].request_id
    assert "summarise the call" in (text.choices[0].message.content or "")
    assert text.choices[0].finish_reason == "end_turn"
    usage = text.usage
    assert usage.input_tokens == usage.prompt_tokens and usage.output_tokens
    assert usage.prompt_tokens_details is not None and usage.completion_tokens_details is not None
    assert text.http_status_code == 200 and text.llm_status_code == 200
    assert isinstance(text.response_time, int) and text.request == {
        "model": "claude-sonnet-4-6",
        "stream": False,
        "max_tokens": 200,
    }
    (call,) = tool.choices[0].message.tool_calls or []
    assert call.function.name == "lookup" and isinstance(json.loads(call.function.arguments), dict)
    assert tool.choices[0].finish_reason == "tool_calls"


async def test_stream(emu: GatewayEmulator) -> None:
    gateway = aai.LLMGateway()

    def run() -> tuple[list[aai.LLMGatewayCompletionChunk], str]:
        chunks = list(
            gateway.chat.completions.create(
                model="gpt-5-mini", messages=user("stream to the sdk"), stream=True
            )
        )
        plain = gateway.chat.completions.create(
            model="gpt-5-mini", messages=user("stream to the sdk")
        )
        return chunks, plain.choices[0].message.content or ""

    async with asyncio.timeout(GUARD):
        chunks, plain = await asyncio.to_thread(run)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain and "stream to the sdk" in text
    # The first chunk's extra `request_id` is checked over raw HTTP in test_emulator.py: the
    # SDK keeps unknown fields only under some pydantic versions (2.14 builds drop them).
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0 and chunks[-1].usage.input_tokens is None


async def test_models_list(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD):
        listing = await asyncio.to_thread(aai.LLMGateway().models.list)
    assert [m.id for m in listing.data] == list(MODELS)
    sonnet = next(m for m in listing.data if m.id == "claude-sonnet-4-6")
    assert sonnet.pricing.global_.prompt > 0 and sonnet.top_provider.context_length > 0
    assert sonnet.default_provider.id == "anthropic" and "eu" in sonnet.available_regions


async def test_errors(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD):
        with pytest.raises(aai.LLMGatewayError) as bad:
            await asyncio.to_thread(
                aai.LLMGateway().chat.completions.create,
                model="gpt-4.1",
                messages=user("x"),
                temperature=7,
                model_region="eu",
            )
        with pytest.raises(aai.LLMGatewayError) as auth:
            await asyncio.to_thread(
                aai.LLMGateway(api_key="wrong").chat.completions.create,
                model="gpt-4.1",
                messages=user("x"),
            )
    assert bad.value.status_code == 400 and bad.value.request_id
    assert bad.value.errors == [
        "temperature must be between 0 and 2",
        "model_region can only be set to global",
    ]
    assert auth.value.status_code == 401 and auth.value.request_id
    assert "Authentication error" in str(auth.value)


async def test_async_gateway(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), aai.AsyncLLMGateway() as gateway:
        result = await gateway.chat.completions.create(
            model="gemini-2.5-flash", messages=user("async sdk")
        )
        stream = await gateway.chat.completions.create(
            model="gemini-2.5-flash", messages=user("async sdk"), stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == result.choices[0].message.content
