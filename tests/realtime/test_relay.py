"""Binary audio on /v1/realtime, relayed to the speech-to-text emulator over loopback."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from support.audio import tone
from support.service import Service, assert_guarantees

from realtime.emulators.stt import SttEmulator
from realtime.relay import params_from_query
from realtime.server import ServerSettings

RECORDING = Path(__file__).parents[1] / "fixtures/assemblyai"
RECORDING /= "universal_streaming_english_message_sequence.jsonl"


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


async def test_a_48khz_stereo_wav_is_resampled_and_streamed_in_real_time(
    audio_service: Service, stt: SttEmulator, tmp_path
):
    import wave

    import numpy as np

    from realtime.audio import Framer, read_wav

    rate = 48000
    t = np.arange(int(0.6 * rate)) / rate
    speech = 0.3 * np.sin(2 * np.pi * 440 * t)
    signal = np.concatenate([speech, np.zeros(int(0.6 * rate))])
    stereo = np.stack([signal, signal * 0.5], axis=1)  # interleaved L/R
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((stereo * 32767).astype("<i2").tobytes())
    mono16k = read_wav(path)
    assert abs(len(mono16k) - len(signal) // 3) <= 3  # 48 kHz -> 16 kHz
    framer = Framer()
    frames = framer.push(mono16k.astype("<i2").tobytes())
    c = await audio_service.connect()
    await send_audio(c, frames)
    done = (await c.wait_type("response.done", timeout=20))[0]
    assert "hello there" in done["text"].lower()
    await c.close()
    record = await stt.wait_closed(timeout=10)
    assert record.audio_bytes >= len(frames) * 1600 and record.errors == []


async def test_upstream_frames_reach_both_endpoints_byte_for_byte(serve, settings: ServerSettings):
    """Relayed, not re-serialised: `1.4e-05` stays `1.4e-05` (orjson would write 0.000014)."""
    recorded = [ln for ln in RECORDING.read_text("utf-8").splitlines() if ln.strip()]
    tiny = recorded[2]
    assert '"end_of_turn_confidence":1.4e-05' in tiny
    async with (
        SttEmulator(script=RECORDING, rate_tolerance_ms=None) as stt_emu,
        serve(settings, stt=stt_emu) as svc,
    ):

        async def listen(url: str) -> list[str]:
            texts: list[str] = []
            async with svc.http.ws_connect(url) as ws:
                for f in tone(3.0, False):  # the replay's audio clock reaches 2880 ms
                    await ws.send_bytes(f)
                async with asyncio.timeout(15):
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT and '"type":"Turn"' in msg.data:
                            texts.append(msg.data)
                            if len(texts) == 2:  # the frames due by 2880 ms
                                break
            return texts

        port = svc.server.port
        v1, v3 = await asyncio.gather(
            listen(svc.ws_url), listen(f"ws://127.0.0.1:{port}/v3/ws?sample_rate=16000")
        )
    assert v3 == recorded[1:3]
    # /v1/realtime gives every message its `seq` (PROTOCOL.md), spliced in as the first
    # member; the rest of the upstream bytes is unchanged.
    unseq = [re.sub(r'^\{"seq":\d+,', "{", text) for text in v1]
    assert unseq == recorded[1:3] and all(t.startswith('{"seq":') for t in v1)
