"""Binary audio on /v1/realtime, relayed to the speech-to-text emulator over loopback."""

from __future__ import annotations

import asyncio

import pytest
from support.audio import tone
from support.service import Service, assert_guarantees

from realtime.emulators.stt import SttEmulator
from realtime.relay import params_from_query


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
