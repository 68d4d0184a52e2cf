"""Binary audio on /v1/realtime, relayed to the speech-to-text emulator over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from support.service import Service, assert_guarantees

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.emulators.stt import SttEmulator
from realtime.relay import params_from_query
from realtime.server import Server, ServerSettings

RATE = 16000
FRAME = RATE // 20  # 50 ms


def tone(seconds: float, loud: bool) -> list[bytes]:
    """PCM s16le mono frames of 50 ms: a 440 Hz tone, or silence."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)) if loud else np.zeros(n)
    pcm = x.astype("<i2").tobytes()
    return [pcm[i : i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2)]


@pytest.fixture
async def stt() -> AsyncIterator[SttEmulator]:
    async with SttEmulator(
        script=["hello there", "how are you"], word_ms=150, silence_ms=300
    ) as emu:
        yield emu


@pytest.fixture
async def audio_service(
    settings: ServerSettings, emulator: GatewayEmulator, stt: SttEmulator
) -> AsyncIterator[Service]:
    with_stt = replace(settings, stt_url=stt.url + "/v3/ws", stt_api_key=None)
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        Server(with_stt, gw) as server,
        aiohttp.ClientSession() as http,
    ):
        yield Service(server, emulator, http)


async def send_audio(c, frames: list[bytes]) -> None:
    for f in frames:
        if c.ws.closed:
            return
        try:
            await c.ws.send_bytes(f)
        except ConnectionError:
            return  # the server ended the session
        await asyncio.sleep(0.01)  # the relay paces upstream to real time


async def test_audio_turns_drive_replies_and_upstream_is_terminated(
    audio_service: Service, stt: SttEmulator
):
    c = await audio_service.connect()
    await send_audio(c, tone(0.6, True) + tone(0.6, False))
    done = (await c.wait_type("response.done", timeout=20))[0]
    assert "hello there" in done["text"].lower()
    kinds = c.types()
    assert kinds.index("Begin") < kinds.index("Turn") < kinds.index("response.created")
    assert_guarantees(c.messages)
    await c.close()
    record = await stt.wait_closed(timeout=10)
    assert record.terminated and record.closed
    assert record.params.get("sample_rate") in (16000, "16000")


async def test_upstream_error_reaches_the_client_and_the_session_ends_cleanly(
    audio_service: Service, stt: SttEmulator
):
    stt.fail_next(3008, "Session Expired: Maximum session duration exceeded")
    c = await audio_service.connect()
    await send_audio(c, tone(0.3, True))
    err = (await c.wait_type("error", timeout=20))[0]
    assert err["error"]["code"] == "stt_error" and err["error"]["status"] == 3008
    assert await c.wait_closed(timeout=20) == 1000


def test_stt_query_parameters_become_upstream_params():
    p = params_from_query(
        {
            "stt_sample_rate": "48000",
            "stt_speech_model": "u3-rt-pro",
            "stt_keyterms_prompt": '["Sonny"]',
            "session_id": "x",
        }
    )
    assert p.sample_rate == 48000 and p.speech_model == "u3-rt-pro"
    assert p.extra == {"keyterms_prompt": '["Sonny"]'}
    with pytest.raises(ValueError, match="stt_sample_rate"):
        params_from_query({"stt_sample_rate": "fast"})
