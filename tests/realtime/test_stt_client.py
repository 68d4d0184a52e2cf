"""SttClient against the STT emulator over loopback, plus its pure helpers."""

from __future__ import annotations

import asyncio
import logging
import wave
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
import pytest

from realtime.audio import read_wav
from realtime.emulators.stt import SttEmulator
from realtime.stt import (
    Received,
    SttClient,
    SttError,
    SttParams,
    build_url,
    classify_close,
    encode_param,
    mint_temporary_token,
    stt_url_for_region,
)

pytestmark = pytest.mark.timeout(30)

RATE = 16000
KEY = "sk-secret-key-123"
SCRIPT = ["Hi, my name is Sonny.", "I am a voice agent."]
US = SttParams(speech_model="universal-streaming-english", format_turns=True)
RECORDING = Path(__file__).parents[1] / "fixtures/assemblyai"
RECORDING /= "universal_streaming_english_message_sequence.jsonl"


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


SPEECH = np.concatenate([tone(0.55), silence(0.25), tone(0.55), silence(0.25)])


def emulator(**kw: Any) -> SttEmulator:
    kw.setdefault("script", SCRIPT)
    return SttEmulator(word_ms=100, silence_ms=150, **kw)


def client(emu: SttEmulator, **kw: Any) -> SttClient:
    kw.setdefault("params", US)
    kw.setdefault("api_key", KEY)
    return SttClient(emu.url + "/v3/ws", **kw)


async def collect(stt: SttClient) -> list[dict[str, Any]]:
    return [msg async for msg in stt]


# --- pure helpers ------------------------------------------------------------------------------


def test_param_encoding() -> None:
    assert encode_param(True) == "true" and encode_param(False) == "false"
    assert encode_param(["a", "b"]) == '["a","b"]'
    assert encode_param({"model": "m"}) == '{"model":"m"}'
    assert encode_param(0.5) == "0.5"
    q = SttParams(sample_rate=8000, format_turns=False, extra={"speaker_labels": True}).query()
    assert q == {"sample_rate": "8000", "format_turns": "false", "speaker_labels": "true"}
    url = build_url("ws://h/v3/ws", SttParams(), token="t0k")
    assert dict(parse_qsl(url.split("?", 1)[1])) == {"sample_rate": "16000", "token": "t0k"}


def test_region_urls() -> None:
    assert stt_url_for_region(None) == "wss://streaming.assemblyai.com/v3/ws"
    assert stt_url_for_region("eu") == "wss://streaming.eu.assemblyai.com/v3/ws"
    assert stt_url_for_region("US") == "wss://streaming.us.assemblyai.com/v3/ws"
    with pytest.raises(ValueError):
        stt_url_for_region("mars")


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(1008, False), (3005, True), (3006, False), (3007, False), (3008, False), (3009, True)],
)
def test_close_classification(code: int, retryable: bool) -> None:
    err = classify_close(code, "")
    assert err is not None and err.code == code and err.retryable is retryable and err.message
    frame = {"type": "Error", "error_code": code, "error": "boom"}
    from_frame = classify_close(1006, "", frame)
    assert from_frame is not None and from_frame.code == code and from_frame.message == "boom"


def test_clean_close_is_not_an_error() -> None:
    assert classify_close(1000, "") is None


# --- against the emulator ---------------------------------------------------------------------


async def test_params_reach_the_service_encoded() -> None:
    params = SttParams(
        speech_model="universal-streaming-english",
        format_turns=True,
        min_turn_silence=160,
        keyterms_prompt=["AssemblyAI", "Sonny"],
        llm_gateway={"model": "gpt-4.1", "messages": [{"role": "user", "content": "{{turn}}"}]},
        extra={"speaker_labels": False, "vad_threshold": 0.3},
    )
    async with emulator(api_keys=[KEY]) as emu:
        async with client(emu, params=params) as stt:
            first = await anext(stt)
        rec = await emu.wait_closed()
    assert first["type"] == "Begin"
    raw = dict(parse_qsl(rec.query))
    assert raw["format_turns"] == "true" and raw["speaker_labels"] == "false"
    assert rec.params["keyterms_prompt"] == ["AssemblyAI", "Sonny"]
    assert rec.params["llm_gateway"]["messages"][0]["content"] == "{{turn}}"
    assert rec.params["min_turn_silence"] == 160 and rec.params["vad_threshold"] == 0.3
    assert rec.auth == "key" and rec.terminated and rec.close_code == 1000


async def test_audio_is_paced_to_real_time() -> None:
    # the emulator allows only 150 ms of lead; one second handed over at once must be paced
    async with emulator(rate_tolerance_ms=150) as emu:
        async with client(emu) as stt:
            await stt.send_audio(silence(1.0).tobytes())
            await stt.send_audio(bytes(500))  # a ragged tail: padded to a whole frame at the end
        rec = await emu.wait_closed()
    assert 3007 not in rec.errors and rec.close_code == 1000
    assert rec.frames == 21 and rec.audio_bytes == 21 * 1600


async def test_turns_iterate_and_terminate_closes_cleanly() -> None:
    async with emulator() as emu:
        async with client(emu) as stt:

            async def feed() -> None:
                for i in range(0, len(SPEECH), 800):
                    await stt.send_audio(SPEECH[i : i + 800].tobytes())
                await stt.terminate()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(feed())
                msgs = await collect(stt)
        rec = await emu.wait_closed()
    types = [m["type"] for m in msgs]
    assert types[0] == "Begin" and types[-1] == "Termination"
    formatted = [m["transcript"] for m in msgs if m.get("turn_is_formatted")]
    assert formatted == SCRIPT
    assert any(m["type"] == "Turn" and not m["end_of_turn"] for m in msgs)
    assert rec.terminated and rec.close_code == 1000
    assert rec.messages_received[-1] == {"type": "Terminate"}


async def test_force_endpoint_keepalive_update_configuration() -> None:
    async with emulator() as emu:
        async with client(emu) as stt:
            await stt.update_configuration(max_turn_silence=5000, min_turn_silence=None)
            await stt.send_audio(tone(0.25).tobytes())
            await stt.keep_alive()
            await stt.force_endpoint()
            msgs: list[dict[str, Any]] = []
            async with asyncio.timeout(5):
                async for m in stt:
                    msgs.append(m)
                    if m.get("end_of_turn"):
                        break
        rec = await emu.wait_closed()
    assert msgs[-1]["transcript"] == "hi my"
    kinds = [m["type"] for m in rec.messages_received]
    assert kinds == ["UpdateConfiguration", "KeepAlive", "ForceEndpoint", "Terminate"]
    assert rec.messages_received[0] == {"type": "UpdateConfiguration", "max_turn_silence": 5000}


async def test_received_hands_out_each_frame_as_sent_with_its_parsed_form() -> None:
    recorded = [ln.encode() for ln in RECORDING.read_text("utf-8").splitlines() if ln.strip()]
    assert b'"end_of_turn_confidence":1.4e-05' in recorded[2]  # orjson would write 0.000014
    async with SttEmulator(script=RECORDING, rate_tolerance_ms=None) as emu:
        async with client(emu) as stt:
            await stt.send_audio(silence(2.05).tobytes())  # the first Turn is due at 2000 ms
            await stt.terminate()  # the rest of that turn, then Termination
            got = [item async for item in stt.received()]
    assert all(isinstance(item, Received) for item in got)
    assert [raw for raw, _ in got[1:-1]] == recorded[1:9]  # turn 0, byte for byte
    assert all(message == orjson.loads(raw) for raw, message in got)
    assert got[0].message["type"] == "Begin" and got[-1].message["type"] == "Termination"
    assert stt.session_id == got[0].message["id"]


async def test_received_gives_the_error_frame_as_sent_then_fails() -> None:
    async with emulator(api_keys=["the-right-key"]) as emu:
        async with client(emu) as stt:
            got: list[Received] = []
            with pytest.raises(SttError) as info:
                async for item in stt.received():
                    got.append(item)
    assert [raw for raw, _ in got] == [
        b'{"type":"Error","error_code":1008,'
        b'"error":"Unauthorized Connection: Invalid API key or token"}'
    ]
    assert got[0].message == info.value.frame and info.value.code == 1008


async def test_slow_consumer_loses_partials_first() -> None:
    async with emulator() as emu:
        async with client(emu, inbox_size=6) as stt:
            await stt.send_audio(SPEECH.tobytes())
            await stt.terminate()
            msgs = await collect(stt)
    kinds = [(m["type"], m.get("end_of_turn"), m.get("turn_is_formatted")) for m in msgs]
    assert kinds == [
        ("Begin", None, None),
        ("Turn", True, False),
        ("Turn", True, True),
        ("Turn", True, False),
        ("Turn", True, True),
        ("Termination", None, None),
    ]
    assert stt.dropped_messages == 10


async def test_cancellation_still_terminates() -> None:
    started = asyncio.Event()

    async def consumer(emu: SttEmulator) -> None:
        async with client(emu) as stt:
            await stt.send_audio(tone(0.2).tobytes())
            async for _ in stt:
                started.set()

    async with emulator() as emu:
        task = asyncio.create_task(consumer(emu))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rec = await emu.wait_closed()
    assert rec.terminated and rec.close_code == 1000


async def test_reconnects_after_3005_and_passes_the_new_begin() -> None:
    async with emulator() as emu:
        emu.fail_next(3005, "Session Cancelled: An error occurred")
        async with client(emu) as stt:
            first = await anext(stt)
            second = await anext(stt)
            await stt.send_audio(silence(0.1).tobytes())
        closed = [await emu.wait_closed(), await emu.wait_closed()]
    assert first["type"] == second["type"] == "Begin" and first["id"] != second["id"]
    assert stt.reconnects == 1
    assert [r.close_code for r in closed] == [3005, 1000]
    assert closed[1].terminated and closed[1].audio_bytes == 3200


async def test_no_reconnect_after_1008_and_key_stays_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with emulator(api_keys=["the-right-key"]) as emu:
        async with client(emu) as stt:
            with pytest.raises(SttError) as info:
                async for msg in stt:
                    assert msg["type"] == "Error"  # the service's frame comes first
        await asyncio.sleep(0.1)
        assert len(emu.sessions) == 1
    err = info.value
    assert err.code == 1008 and not err.retryable and "Unauthorized" in err.message
    assert KEY not in str(err) and KEY not in caplog.text
    assert "Authorization" not in caplog.text


async def test_handshake_rejection_is_final(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with emulator() as emu:
        with pytest.raises(SttError) as info:
            async with SttClient(emu.url + "/nowhere", api_key=KEY):
                pass
    assert info.value.code == 404 and not info.value.retryable
    assert KEY not in caplog.text and KEY not in str(info.value)


async def test_unreachable_service_retries_then_fails() -> None:
    emu = emulator()
    await emu.start()
    url = emu.url + "/v3/ws"
    await emu.stop()  # nothing listens on that port now
    with pytest.raises(SttError) as info:
        async with SttClient(url, api_key=KEY, max_reconnects=1, connect_timeout=1.0):
            pass
    assert info.value.retryable and info.value.code is None


async def test_temporary_token_flow(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with emulator(api_keys=[KEY]) as emu:
        minted = await mint_temporary_token(KEY, expires_in_seconds=60, base_url=emu.http_url)
        assert minted["expires_in_seconds"] == 60
        async with SttClient(emu.url + "/v3/ws", token=minted["token"], params=US) as stt:
            assert not stt.reconnect  # single-use token
            assert (await anext(stt))["type"] == "Begin"
        rec = await emu.wait_closed()
        assert rec.auth == "token" and "token=" not in rec.query
        with pytest.raises(SttError) as info:
            await mint_temporary_token(KEY, expires_in_seconds=9999, base_url=emu.http_url)
        assert info.value.code == 400 and "expires_in_seconds" in info.value.message
        with pytest.raises(SttError) as info:
            await mint_temporary_token("nope", expires_in_seconds=60, base_url=emu.http_url)
        assert info.value.code == 401
    assert minted["token"] not in caplog.text and KEY not in caplog.text


def write_stereo_wav(path: Path, rate: int = 48000) -> None:
    t = np.arange(int(0.6 * rate)) / rate
    speech = 0.4 * np.sin(2 * np.pi * 300 * t)
    mono = np.concatenate([speech, np.zeros(int(0.3 * rate))])
    stereo = np.stack([mono, 0.5 * mono], axis=1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((stereo * 32767).astype("<i2").tobytes())


async def test_wav_48k_stereo_through_audio_helpers_to_turns(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    write_stereo_wav(path)
    pcm = read_wav(path)
    assert len(pcm) == int(0.9 * RATE)
    async with emulator() as emu:
        async with client(emu) as stt:
            await stt.send_audio(pcm.tobytes())
            await stt.terminate()
            msgs = await collect(stt)
    finals = [m for m in msgs if m.get("end_of_turn") and m["turn_is_formatted"]]
    assert [m["transcript"] for m in finals] == ["Hi, my name is Sonny."]
