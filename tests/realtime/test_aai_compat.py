"""GET /v3/ws: the official assemblyai SDK talks to the service as if it were AssemblyAI."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from assemblyai.streaming.v3 import (
    BeginEvent,
    LLMGatewayResponseEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
    TerminationEvent,
    TurnEvent,
)
from support.audio import tone
from support.service import Service

from realtime.endpoints.aai_ws import session_patch

LLM = {
    "model": "gpt-4.1",
    "max_tokens": 200,
    "messages": [{"role": "user", "content": "Reply to: {{turn}}"}],
}


class Sdk:
    """The SDK's threaded client, recording every event it parsed."""

    def __init__(self, port: int) -> None:
        self.events: list[Any] = []
        self.errors: list[Any] = []
        self.client = RealTimeTranscriber(
            RealTimeTranscriberOptions(api_key="any", api_host=f"ws://127.0.0.1:{port}")
        )
        for ev in (
            RealTimeEvents.Begin,
            RealTimeEvents.Turn,
            RealTimeEvents.Termination,
            RealTimeEvents.LLMGatewayResponse,
        ):
            self.client.on(ev, lambda _c, e: self.events.append(e))
        self.client.on(RealTimeEvents.Error, lambda _c, e: self.errors.append(e))

    def run(self, params: RealTimeParameters, chunks: list[bytes]) -> None:
        self.client.connect(params)
        for chunk in chunks:
            self.client.stream(chunk)
            time.sleep(0.045)
        time.sleep(1.0)  # let the last turn's reply arrive before terminating
        self.client.disconnect(terminate=True)


async def test_official_sdk_gets_turns_llm_responses_and_termination(
    audio_service: Service,
):
    sdk = Sdk(audio_service.server.port)
    params = RealTimeParameters.model_validate(
        {
            "sample_rate": 16000,
            "speech_model": "universal-streaming-english",
            "format_turns": True,
            "llm_gateway": LLM,
        }
    )
    audio = tone(0.5, True) + tone(0.6, False) + tone(0.5, True) + tone(0.6, False)
    async with asyncio.timeout(60):
        await asyncio.to_thread(sdk.run, params, audio)
    assert sdk.errors == []
    assert isinstance(sdk.events[0], BeginEvent)
    assert isinstance(sdk.events[-1], TerminationEvent)
    turns = [e for e in sdk.events if isinstance(e, TurnEvent)]
    replies = [e for e in sdk.events if isinstance(e, LLMGatewayResponseEvent)]
    assert {t.turn_order for t in turns if t.end_of_turn} == {0, 1}
    assert sorted(r.turn_order for r in replies) == [0, 1]
    first = next(r for r in replies if r.turn_order == 0)
    assert "hello there" in first.transcript.lower()
    content = first.data["choices"][0]["message"]["content"]
    assert "Reply to:" in content and "hello there" in content.lower()
    body = audio_service.emulator.requests[0].body
    assert body["max_tokens"] == 200
    assert body["messages"][-1]["content"].startswith("Reply to: ")


async def speak_and_collect(service: Service, query: str) -> tuple[list[str], int | None]:
    """One turn of audio into /v3/ws, then Terminate; the message types received, and the code."""
    url = f"ws://127.0.0.1:{service.server.port}/v3/ws?sample_rate=16000{query}"
    seen: list[str] = []
    async with service.http.ws_connect(url + "&llm_gateway=" + _q(LLM)) as ws:
        for f in tone(0.5, True) + tone(0.6, False):
            await ws.send_bytes(f)
            await asyncio.sleep(0.045)
        await asyncio.sleep(0.8)
        await ws.send_str('{"type": "Terminate"}')
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                seen.append(frame.json()["type"])
    return seen, ws.close_code


async def test_without_stream_llm_only_assemblyai_types_are_sent(audio_service: Service):
    seen, code = await speak_and_collect(audio_service, "")
    assert code == 1000
    assert seen[0] == "Begin" and seen[-1] == "Termination"
    assert "LLMGatewayResponse" in seen
    assert not [t for t in seen if t.startswith(("response.", "session."))]


async def test_stream_llm_adds_the_response_messages(audio_service: Service):
    seen, _ = await speak_and_collect(audio_service, "&stream_llm=true")
    assert "response.delta" in seen and "response.done" in seen
    assert seen.index("response.done") < seen.index("Termination")


async def test_invalid_client_message_gets_error_3006(audio_service: Service):
    url = f"ws://127.0.0.1:{audio_service.server.port}/v3/ws?sample_rate=16000"
    async with audio_service.http.ws_connect(url) as ws:
        await ws.send_str("[]")
        msgs = [f.json() async for f in ws if f.type == aiohttp.WSMsgType.TEXT]
        assert ws.close_code == 3006
    assert msgs[-1]["type"] == "Error" and msgs[-1]["error_code"] == 3006


def test_llm_gateway_parameter_becomes_the_session_config():
    patch = session_patch(
        {
            "llm_gateway": '{"model": "claude-sonnet-4-6", "max_tokens": 50, '
            '"messages": [{"role": "system", "content": "Be brief."}, '
            '{"role": "user", "content": "Summarise: {{turn}}"}]}',
            "on_new_turn": "cancel",
        }
    )
    assert patch == {
        "preset": "per_turn",
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "instructions": "Be brief.",
        "prompt": "Summarise: {{turn}}",
        "on_new_turn": "cancel",
    }
    with pytest.raises(ValueError, match="llm_gateway"):
        session_patch({"llm_gateway": "{nope"})


def _q(obj: Any) -> str:
    import json
    from urllib.parse import quote

    return quote(json.dumps(obj))


async def test_stt_token_is_minted_for_signed_in_clients_only(
    settings, emulator, caplog: pytest.LogCaptureFixture
):
    from dataclasses import replace

    from gateway_client import GatewayClient
    from realtime.emulators.stt import SttEmulator
    from realtime.server import Server

    key = "aai-stt-key-98765"
    async with SttEmulator(api_keys=[key]) as stt_emu:
        cfg = replace(
            settings, stt_url=stt_emu.url + "/v3/ws", stt_api_key=key, auth_tokens=("tok-1",)
        )
        async with (
            GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
            Server(cfg, gw) as server,
            aiohttp.ClientSession() as http,
        ):
            url = f"http://127.0.0.1:{server.port}/v1/stt-token?expires_in_seconds=60"
            async with http.get(url) as resp:
                assert resp.status == 401
            async with http.get(url, headers={"Authorization": "Bearer tok-1"}) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["token"] and body["expires_in_seconds"] == 60
                assert key not in await resp.text()
            async with http.get(url.replace("=60", "=6000") + "&token=tok-1") as resp:
                assert resp.status == 400
    assert key not in caplog.text
