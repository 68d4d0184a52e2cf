"""The STT emulator: the pure ear, then the server over loopback with the official SDK."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from assemblyai.streaming.v3 import (
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
)
from assemblyai.streaming.v3.models import (
    BeginEvent,
    SpeechStartedEvent,
    TerminationEvent,
    TurnEvent,
)
from websockets.asyncio.client import connect

from realtime.emulators.stt import SttEmulator, default_script
from realtime.emulators.stt_engine import EarConfig, ScriptedEar, parse_params
from realtime.emulators.stt_replay import Recording

CORPUS = Path(__file__).parents[1] / "fixtures/assemblyai"  # copies, see SOURCES.md there
RATE = 16000
pytestmark = pytest.mark.timeout(30)
FRAME = 800  # samples in 50 ms


def tone(seconds: float, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


def frames(signal: np.ndarray, samples: int = FRAME) -> list[bytes]:
    return [signal[i : i + samples].tobytes() for i in range(0, len(signal), samples)]


def sdk_params(**fields: Any) -> RealTimeParameters:
    """The SDK's connection parameters (validated from a dict: plain strings for enums)."""
    return RealTimeParameters.model_validate(fields)


SCRIPT = ["Hi, my name is Sonny.", "I am a voice agent."]
# 5 words at 100 ms each, then a pause; twice.
SPEECH = np.concatenate([tone(0.6), silence(0.35), tone(0.55), silence(0.35)])


# --- the pure ear ------------------------------------------------------------------------------


def feed_all(ear: ScriptedEar, signal: np.ndarray) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in frames(signal):
        loud = np.abs(np.frombuffer(f, np.int16)).max() > 1000
        out.extend(ear.feed(len(f) / 32, loud))
    return out


def test_parse_params_reads_the_wire_like_the_service() -> None:
    p = parse_params(
        "format_turns=True&speaker_labels=false&keyterms_prompt=%5B%22a%22%2C+%22b%22%5D"
        "&llm_gateway=%7B%22model%22%3A+%22m%22%7D&min_turn_silence=400&bogus=1"
        "&end_of_turn_confidence_threshold=0.7&token=secret"
    )
    assert p["format_turns"] is True and p["speaker_labels"] is False
    assert p["keyterms_prompt"] == ["a", "b"] and p["llm_gateway"] == {"model": "m"}
    assert p["min_turn_silence"] == 400 and p["end_of_turn_confidence_threshold"] == 0.7
    assert p["bogus"] == "1" and "token" not in p
    assert p["sample_rate"] == 16000 and p["encoding"] == "pcm_s16le"


def test_ear_universal_streaming_partials_final_and_formatted_copy() -> None:
    cfg = EarConfig("universal-streaming-english", format_turns=True, word_ms=100, silence_ms=200)
    msgs = feed_all(ScriptedEar(cfg, SCRIPT), SPEECH)
    turns0 = [m for m in msgs if m["turn_order"] == 0]
    partials = [m for m in turns0 if not m["end_of_turn"]]
    assert [len(m["words"]) for m in partials] == [1, 2, 3, 4, 5]
    assert partials[2]["transcript"] == "hi my"  # final words only
    assert [w["word_is_final"] for w in partials[2]["words"]] == [True, True, False]
    eot, formatted = turns0[-2], turns0[-1]
    assert eot["end_of_turn"] and not eot["turn_is_formatted"]
    assert eot["transcript"] == "hi my name is sonny" and eot["utterance"] == SCRIPT[0]
    assert formatted["turn_is_formatted"] and formatted["transcript"] == SCRIPT[0]
    assert formatted["utterance"] == ""
    # word timestamps come from the audio clock
    assert [(w["start"], w["end"]) for w in eot["words"]][:2] == [(0, 100), (100, 200)]
    assert all(isinstance(w["start"], int) for w in eot["words"])
    assert [m["transcript"] for m in msgs if m["turn_is_formatted"]] == SCRIPT


def test_ear_pro_model_speech_started_and_formatted_final() -> None:
    cfg = EarConfig("u3-rt-pro", word_ms=100, silence_ms=200)
    msgs = feed_all(ScriptedEar(cfg, SCRIPT), SPEECH)
    assert msgs[0] == {"type": "SpeechStarted", "timestamp": 0, "confidence": 0.9}
    turn0 = [m for m in msgs if m.get("turn_order") == 0]
    assert all(m["turn_is_formatted"] == m["end_of_turn"] for m in turn0)
    assert [m["end_of_turn_confidence"] for m in turn0] == [0.0] * 5 + [1.0]
    assert turn0[-1]["utterance"] == turn0[-1]["transcript"] == SCRIPT[0]
    assert sum(1 for m in msgs if m["type"] == "SpeechStarted") == 2


def test_ear_silence_ends_turn_only_after_configured_time() -> None:
    cfg = EarConfig("universal-streaming-english", word_ms=100, max_turn_silence=500)
    ear = ScriptedEar(cfg, ["one two three four five six"])  # cut short: not "confident"
    feed_all(ear, tone(0.3))
    assert not feed_all(ear, silence(0.45))
    end = feed_all(ear, silence(0.1))
    assert end[-1]["end_of_turn"] and end[-1]["transcript"] == "one two three"


def test_ear_force_endpoint_and_short_click() -> None:
    ear = ScriptedEar(EarConfig("universal-streaming-english", word_ms=100), SCRIPT)
    assert feed_all(ear, np.concatenate([tone(0.05), silence(0.05), tone(0.05)])) == []
    feed_all(ear, tone(0.2))
    final = ear.end_turn()
    assert final[-1]["end_of_turn"] and final[-1]["transcript"] == "hi my"
    assert ear.end_turn() == []


def test_default_script_is_shipped() -> None:
    assert len(default_script()) >= 3


# --- the server with the official SDK ---------------------------------------------------------


class SdkRun:
    """Runs the threaded SDK client against the emulator; collects typed events."""

    def __init__(self, url: str, key: str | None = "key-1", token: str | None = None) -> None:
        self.events: list[Any] = []
        self.errors: list[Any] = []
        self.client = RealTimeTranscriber(
            RealTimeTranscriberOptions(api_key=key, token=token, api_host=url)
        )
        for ev in (
            RealTimeEvents.Begin,
            RealTimeEvents.Turn,
            RealTimeEvents.SpeechStarted,
            RealTimeEvents.Termination,
        ):
            self.client.on(ev, lambda _c, e: self.events.append(e))
        self.client.on(RealTimeEvents.Error, lambda _c, e: self.errors.append(e))

    def run(self, params: RealTimeParameters, chunks: list[bytes], pace: float) -> None:
        self.client.connect(params)
        for chunk in chunks:
            self.client.stream(chunk)
            if pace:
                time.sleep(pace)
        self.client.disconnect(terminate=True)


async def run_sdk(
    sdk: SdkRun, params: RealTimeParameters, chunks: list[bytes], pace: float
) -> None:
    async with asyncio.timeout(30):
        await asyncio.to_thread(sdk.run, params, chunks, pace)


async def test_sdk_streams_real_time_and_gets_every_message_type() -> None:
    async with SttEmulator(api_keys=["key-1"], script=SCRIPT, word_ms=100, silence_ms=200) as emu:
        sdk = SdkRun(emu.url)
        params = sdk_params(
            sample_rate=RATE, speech_model="universal-streaming-english", format_turns=True
        )
        await run_sdk(sdk, params, frames(SPEECH), 0.05)
        rec = await emu.wait_closed()
    assert sdk.errors == []
    assert isinstance(sdk.events[0], BeginEvent) and sdk.events[0].id == rec.id
    assert isinstance(sdk.events[-1], TerminationEvent)
    turns = [e for e in sdk.events if isinstance(e, TurnEvent)]
    # every message the emulator sent reached the SDK as a validated model
    assert len(sdk.events) == len(rec.messages_sent)
    assert [t.transcript for t in turns if t.turn_is_formatted] == SCRIPT
    assert any(not t.end_of_turn for t in turns)
    assert [t.turn_order for t in turns if t.end_of_turn and not t.turn_is_formatted] == [0, 1]
    assert rec.terminated and rec.close_code == 1000 and rec.auth == "key"
    assert rec.params["format_turns"] is True and rec.audio_bytes == SPEECH.nbytes
    assert rec.headers.get("AssemblyAI-Version") == "2025-05-12"
    assert 3007 not in rec.errors


async def test_sdk_pro_model_speech_started_validates() -> None:
    async with SttEmulator(script=SCRIPT, word_ms=100, silence_ms=200) as emu:
        sdk = SdkRun(emu.url, key="anything")
        params = sdk_params(sample_rate=RATE, speech_model="u3-rt-pro")
        chunks = frames(SPEECH, 1600)  # 100 ms frames
        await run_sdk(sdk, params, chunks, 0.1)
        rec = await emu.wait_closed()
    assert sdk.errors == []
    started = [e for e in sdk.events if isinstance(e, SpeechStartedEvent)]
    assert [s.timestamp for s in started] == [0, 900]  # frame-aligned audio clock
    finals = [e for e in sdk.events if isinstance(e, TurnEvent) and e.end_of_turn]
    assert [f.transcript for f in finals] == SCRIPT and all(f.turn_is_formatted for f in finals)
    assert rec.close_code == 1000


async def test_sdk_bad_key_gets_1008() -> None:
    async with SttEmulator(api_keys=["key-1"]) as emu:
        sdk = SdkRun(emu.url, key="wrong-key")
        await run_sdk(sdk, sdk_params(sample_rate=RATE), [], 0)
        rec = await emu.wait_closed()
    assert [e.code for e in sdk.errors] == [1008]
    assert "Unauthorized" in str(sdk.errors[0]) and "wrong-key" not in str(sdk.errors[0])
    assert rec.close_code == 1008 and rec.messages_sent[0]["type"] == "Error"
    assert not any(m["type"] == "Begin" for m in rec.messages_sent)


async def test_missing_auth_header_message() -> None:
    async with SttEmulator(api_keys=["key-1"]) as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            err = orjson.loads(await ws.recv())
            await ws.wait_closed()
        assert err == {
            "type": "Error",
            "error_code": 1008,
            "error": "Unauthorized Connection: Missing Authorization header",
        }
        assert ws.close_code == 1008


async def test_sdk_short_frame_gets_3007() -> None:
    async with SttEmulator() as emu:
        sdk = SdkRun(emu.url)
        await run_sdk(sdk, sdk_params(sample_rate=RATE), [bytes(320)], 0)  # 10 ms
        rec = await emu.wait_closed()
    assert [e.code for e in sdk.errors] == [3007]
    assert rec.messages_sent[-1]["error"] == (
        "Input duration violation: 10 ms. Expected between 50 and 1000 ms"
    )


async def test_audio_faster_than_real_time_gets_3007() -> None:
    async with SttEmulator(rate_tolerance_ms=500) as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            await ws.recv()  # Begin
            for f in frames(silence(1.0), 16000):
                await ws.send(f)
            msg = orjson.loads(await ws.recv())
            await ws.wait_closed()
    assert msg["error_code"] == 3007 and msg["error"].startswith("Audio Transmission Rate")
    assert ws.close_code == 3007


@pytest.mark.parametrize("text", ["not json", '{"type": "Dance"}', "[]"])
async def test_bad_text_frames_get_3006(text: str) -> None:
    async with SttEmulator() as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            await ws.recv()
            await ws.send(text)
            msg = orjson.loads(await ws.recv())
            await ws.wait_closed()
        rec = await emu.wait_closed()
    assert msg["type"] == "Error" and msg["error_code"] == 3006
    assert ws.close_code == 3006 and rec.close_code == 3006


async def test_inactivity_timeout_and_keepalive() -> None:
    async with SttEmulator() as emu:
        # inactivity_timeout is in seconds on the wire; the emulator accepts fractions
        async with connect(emu.url + "/v3/ws?inactivity_timeout=0.6") as ws:
            await ws.recv()
            for _ in range(5):
                await asyncio.sleep(0.15)
                await ws.send('{"type": "KeepAlive"}')
            assert ws.state.name == "OPEN"  # kept alive past 0.6 s
            msg = orjson.loads(await ws.recv())
            await ws.wait_closed()
    assert msg["error_code"] == 3006 and ws.close_code == 3006
    assert [m["type"] for m in emu.sessions[0].messages_received] == ["KeepAlive"] * 5


async def test_max_session_3008_and_fail_next_hook() -> None:
    async with SttEmulator(max_session_s=0.2) as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            assert orjson.loads(await ws.recv())["type"] == "Begin"
            msg = orjson.loads(await ws.recv())
        assert msg["error_code"] == 3008 and ws.close_code == 3008
        emu.fail_next(3005, "Session Cancelled: An error occurred")
        async with connect(emu.url + "/v3/ws") as ws:
            assert orjson.loads(await ws.recv())["type"] == "Begin"
            msg = orjson.loads(await ws.recv())
            await ws.wait_closed()
        assert msg["error_code"] == 3005 and ws.close_code == 3005


async def test_update_configuration_is_silent_and_applies() -> None:
    async with SttEmulator(script=SCRIPT, word_ms=100, rate_tolerance_ms=None) as emu:
        async with connect(emu.url + "/v3/ws?speech_model=universal-streaming-english") as ws:
            await ws.recv()
            await ws.send('{"type": "UpdateConfiguration", "max_turn_silence": 100}')
            for f in frames(np.concatenate([tone(0.2), silence(0.15)])):
                await ws.send(f)
            await ws.send('{"type": "Terminate"}')
            msgs = [orjson.loads(m) async for m in ws]
        rec = await emu.wait_closed()
    assert [m["type"] for m in msgs] == ["Turn", "Turn", "Turn", "Termination"]
    assert msgs[2]["end_of_turn"] and rec.params["max_turn_silence"] == 100
    assert rec.messages_received[0]["type"] == "UpdateConfiguration"


async def test_heartbeat_only_when_asked() -> None:
    async with SttEmulator(heartbeat_s=0.1) as emu:
        async with connect(emu.url + "/v3/ws?session_heartbeat=true") as ws:
            await ws.recv()
            beat = orjson.loads(await ws.recv())
        assert beat["type"] == "Heartbeat" and isinstance(beat["total_duration_ms"], int)
        async with connect(emu.url + "/v3/ws") as ws:
            await ws.recv()
            await asyncio.sleep(0.3)
            await ws.send('{"type": "Terminate"}')
            msgs = [orjson.loads(m) async for m in ws]
        assert [m["type"] for m in msgs] == ["Termination"]


# --- temporary tokens -------------------------------------------------------------------------


async def test_token_endpoint_mints_single_use_tokens() -> None:
    async with SttEmulator(api_keys=["key-1"]) as emu, aiohttp.ClientSession() as http:
        url = emu.http_url + "/v3/token"
        async with http.get(url, params={"expires_in_seconds": "60"}) as r:
            assert r.status == 401
        h = {"Authorization": "key-1"}
        async with http.get(url, params={"expires_in_seconds": "0"}, headers=h) as r:
            assert r.status == 400 and "error" in await r.json()
        async with http.get(
            url, params={"expires_in_seconds": "60", "max_session_duration_seconds": "5"}, headers=h
        ) as r:
            assert r.status == 400
        async with http.get(url, params={"expires_in_seconds": "60"}, headers=h) as r:
            body = await r.json()
        assert r.status == 200 and body["expires_in_seconds"] == 60
        token = body["token"]
        # query-string token, as browsers use it
        async with connect(f"{emu.url}/v3/ws?token={token}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "Begin"
        assert (await emu.wait_closed()).auth == "token"
        # single use
        async with connect(f"{emu.url}/v3/ws?token={token}") as ws:
            assert orjson.loads(await ws.recv())["error_code"] == 1008


async def test_sdk_with_temporary_token_in_header() -> None:
    async with SttEmulator(api_keys=["key-1"]) as emu, aiohttp.ClientSession() as http:
        async with http.get(
            emu.http_url + "/v3/token",
            params={"expires_in_seconds": "60"},
            headers={"Authorization": "key-1"},
        ) as r:
            token = (await r.json())["token"]
        sdk = SdkRun(emu.url, key=None, token=token)
        await run_sdk(sdk, sdk_params(sample_rate=RATE), frames(silence(0.2)), 0.05)
        rec = await emu.wait_closed()
    assert sdk.errors == [] and rec.auth == "token" and rec.close_code == 1000


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["universal_streaming_english_message_sequence.jsonl", "u3_pro_message_sequence.jsonl"]
)
async def test_replay_corpus_message_for_message(name: str) -> None:
    lines = [ln for ln in (CORPUS / name).read_text().splitlines() if ln.strip()]
    recorded = [orjson.loads(ln) for ln in lines]
    async with SttEmulator(script=CORPUS / name, rate_tolerance_ms=None) as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            for f in frames(silence(7.0), 16000):  # 1 s frames, as fast as possible
                await ws.send(f)
            await ws.send('{"type": "Terminate"}')
            received = [str(m) async for m in ws]
        # and the SDK validates every replayed frame
        sdk = SdkRun(emu.url)
        await run_sdk(sdk, sdk_params(sample_rate=RATE), frames(silence(7.0), 16000), 0)
    assert sdk.errors == []
    body = [ln for ln, obj in zip(lines, recorded, strict=True) if obj["type"] != "Termination"]
    assert received[1 : len(body)] == body[1:]  # byte-identical
    begin = orjson.loads(received[0])
    assert begin["id"] == recorded[0]["id"] and begin["expires_at"] > time.time()
    term = orjson.loads(received[-1])
    assert term["type"] == "Termination" and term["audio_duration_seconds"] == 7
    assert len(received) == len(body) + 1
    assert len(sdk.events) == len(received)


async def test_replay_is_paced_by_audio_clock_and_terminate_flushes_turn() -> None:
    rec = Recording.load(CORPUS / "universal_streaming_english_message_sequence.jsonl")
    async with SttEmulator(script=rec, rate_tolerance_ms=None) as emu:
        async with connect(emu.url + "/v3/ws") as ws:
            await ws.recv()
            for f in frames(silence(3.0), 16000):  # audio clock at 3000 ms
                await ws.send(f)
            got = [orjson.loads(await ws.recv()) for _ in range(2)]
            await ws.send('{"type": "Terminate"}')
            rest = [orjson.loads(m) async for m in ws]
    # frames due by 3000 ms: the partials whose last word ends at 2000 and 2880
    assert [len(m["words"]) for m in got] == [1, 2]
    assert len(rest) == 7  # the other 6 frames of turn 0 + Termination
    # Terminate sends the rest of turn 0 (not turn 1), then Termination
    assert {m.get("turn_order") for m in rest[:-1]} == {0}
    assert rest[-2]["turn_is_formatted"] and rest[-1]["type"] == "Termination"


async def test_command_line_serves_the_protocol() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime.emulators.stt",
        "--port",
        "0",
        "--api-key",
        "k",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode()
            url = line.split()[-1]
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v3/ws")
            async with connect(url, additional_headers={"Authorization": "k"}) as ws:
                assert orjson.loads(await ws.recv())["type"] == "Begin"
                await ws.send('{"type": "Terminate"}')
                assert orjson.loads(await ws.recv())["type"] == "Termination"
    finally:
        proc.terminate()
        await proc.wait()
