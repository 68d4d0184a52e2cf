"""Speaker labels end to end: the speech-to-text emulator speaks them (scripted speakers,
`SpeakerRevision` after a relabel), every message parses with the official SDK, and
`speaker_labels` / `max_speakers` reach upstream through `/v3/ws` and the `/v1/realtime` relay."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from assemblyai.streaming.v3._base import _BaseStreamingClient
from support.audio import tone
from websockets.asyncio.client import connect

from realtime.emulators.stt import SttEmulator
from realtime.emulators.stt_engine import EarConfig, ScriptedEar, encode, script_line
from realtime.relay import params_from_query
from realtime.server import ServerSettings

pytestmark = pytest.mark.timeout(60)

MEETING = [
    "A: Let's start with the budget.",
    "B: We are over by ten percent.",
    "Then we cut travel.",
    "A>C: I can take that.",
]
US = "universal-streaming-english"


def hear(config: EarConfig, script: list[str], turns: int) -> list[dict[str, Any]]:
    """`turns` scripted turns (4 words of loud audio, then a turn-ending pause), Terminate."""
    ear = ScriptedEar(config, script)
    out: list[dict[str, Any]] = []
    for _ in range(turns):
        for _ in range(30):
            out += ear.feed(50, True)
        for _ in range(60):
            out += ear.feed(50, False)
    out += ear.end_turn()
    out += ear.final_revisions()
    return out


def sdk_parses(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        event = _BaseStreamingClient._parse_message(json.loads(encode(m)))
        assert event is not None and event.type == m["type"], m


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "Turn" and m["end_of_turn"]]


def test_script_line_syntax():
    assert script_line("B: We are over.") == ("B", None, "We are over.")
    assert script_line("A>C: I can take that.") == ("A", "C", "I can take that.")
    assert script_line("Then we cut travel.") == ("A", None, "Then we cut travel.")
    assert script_line("Note: not a speaker") == ("A", None, "Note: not a speaker")


@pytest.mark.parametrize("model", [US, "u3-rt-pro"])
def test_scripted_speakers_and_a_relabel_after_terminate(model: str):
    config = EarConfig(speech_model=model, format_turns=True, word_ms=150, speaker_labels=True)
    out = hear(config, MEETING, 4)
    sdk_parses(out)
    ends = finals(out)
    assert [m["speaker_label"] for m in ends if m["turn_is_formatted"]] == ["A", "B", "A", "A"]
    assert ends[-1]["transcript"].lower().startswith("i can take that")
    for m in out:
        if m["type"] == "Turn":
            assert m["speaker_label"] in "ABC"
            for w in m["words"]:
                assert ("speaker" in w) == w["word_is_final"]
                if w["word_is_final"]:
                    assert w["speaker"] == m["speaker_label"]
    # the relabel comes once, after the last turn's messages
    assert out[-1]["type"] == "SpeakerRevision"
    assert [m["type"] for m in out].count("SpeakerRevision") == 1
    (rev,) = out[-1]["revisions"]
    assert rev["turn_order"] == 3 and rev["speaker_label"] == "C"
    assert [w["text"] for w in rev["words"]] == ["I", "can", "take", "that."]
    assert {w["speaker"] for w in rev["words"]} == {"C"}


def test_revision_interval_sends_the_relabel_right_after_the_turn():
    config = EarConfig(
        speech_model=US, word_ms=150, speaker_labels=True, revision_interval_ms=120000
    )
    out = hear(config, ["A>B: Hello there."], 1)
    sdk_parses(out)
    kinds = [m["type"] for m in out]
    assert kinds[-1] == "SpeakerRevision"
    assert out[-2]["type"] == "Turn" and out[-2]["end_of_turn"]


def test_max_speakers_folds_labels_and_no_labels_without_speaker_labels():
    folded = hear(
        EarConfig(speech_model=US, word_ms=150, speaker_labels=True, max_speakers=2),
        ["C: Hello there.", "B: Yes."],
        2,
    )
    assert [m["speaker_label"] for m in finals(folded)] == ["A", "B"]
    plain = hear(EarConfig(speech_model=US, word_ms=150), MEETING, 4)
    sdk_parses(plain)
    assert "SpeakerRevision" not in [m["type"] for m in plain]
    for m in plain:
        assert "speaker_label" not in m
        assert not [w for w in m.get("words", []) if "speaker" in w]
    assert finals(plain)[1]["transcript"] == "we are over by ten percent"  # no prefix heard


async def test_the_emulator_speaks_speakers_on_the_wire():
    async with SttEmulator(script=MEETING, word_ms=150, rate_tolerance_ms=None) as emu:
        query = f"speech_model={US}&speaker_labels=true&max_speakers=3&max_turn_silence=400"
        async with connect(f"{emu.url}/v3/ws?{query}") as ws:
            begin = json.loads(await ws.recv())
            for _ in range(4):
                for frame in tone(1.0, True) + tone(0.6, False):
                    await ws.send(frame)
            await ws.send('{"type":"Terminate"}')
            received = [json.loads(m) async for m in ws]
    assert begin["configuration"]["speaker_labels"] is True
    assert [m["type"] for m in received][-2:] == ["SpeakerRevision", "Termination"]
    sdk_parses([begin, *received])
    assert [m["speaker_label"] for m in finals(received)] == ["A", "B", "A", "A"]


# --- pass-through: /v3/ws and the /v1/realtime relay -----------------------------------------


def test_stt_speaker_parameters_become_upstream_parameters():
    p = params_from_query({"stt_speaker_labels": "true", "stt_max_speakers": "3"})
    assert p.extra == {"speaker_labels": "true", "max_speakers": "3"}


async def run_v3(port: int, query: str) -> list[dict[str, Any]]:
    url = f"ws://127.0.0.1:{port}/v3/ws?sample_rate=16000&{query}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for f in tone(0.6, True) + tone(0.5, False):
            await ws.send_bytes(f)
            await asyncio.sleep(0.045)
        await asyncio.sleep(0.5)
        await ws.send_str('{"type": "Terminate"}')
        return [f.json() async for f in ws if f.type == aiohttp.WSMsgType.TEXT]


async def test_v3_ws_passes_speaker_parameters_upstream(serve, settings: ServerSettings):
    async with (
        SttEmulator(script=["A>B: hello there"], word_ms=150, silence_ms=300) as stt_emu,
        serve(settings, stt=stt_emu) as svc,
    ):
        received = await run_v3(svc.server.port, "speaker_labels=true&max_speakers=3")
        record = await stt_emu.wait_closed(timeout=10)
    assert record.params["speaker_labels"] is True and record.params["max_speakers"] == 3
    turn = finals(received)[0]
    assert turn["speaker_label"] == "A" and turn["words"][0]["speaker"] == "A"
    (rev,) = [m for m in received if m["type"] == "SpeakerRevision"]
    assert rev["revisions"][0]["speaker_label"] == "B"
    assert [m["type"] for m in received][-1] == "Termination"


async def test_the_audio_relay_passes_stt_speaker_parameters_upstream(
    serve, settings: ServerSettings
):
    async with (
        SttEmulator(script=["B: hello there"], word_ms=150, silence_ms=300) as stt_emu,
        serve(settings, stt=stt_emu) as svc,
    ):
        c = await svc.connect("stt_speaker_labels=true&stt_max_speakers=3")
        for f in tone(0.6, True) + tone(0.6, False):
            await c.ws.send_bytes(f)
            await asyncio.sleep(0.01)
        await c.wait_type("response.done", timeout=20)
        turn = finals([m for m in c.messages if m["type"] == "Turn"])[0]
        await c.close()
        record = await stt_emu.wait_closed(timeout=10)
    assert record.params["speaker_labels"] is True and record.params["max_speakers"] == 3
    assert turn["speaker_label"] == "B" and turn["words"][0]["speaker"] == "B"


async def test_official_sdk_client_gets_speakers_and_the_revision():
    from assemblyai.streaming.v3 import (
        RealTimeEvents,
        RealTimeParameters,
        RealTimeTranscriber,
        RealTimeTranscriberOptions,
    )

    events: list[Any] = []
    errors: list[Any] = []
    chunks = [f for _ in range(2) for f in tone(1.0, True) + tone(0.6, False)]
    script = ["B: Hello there.", "A>C: I can take that."]
    async with SttEmulator(script=script, word_ms=150) as emu:
        client = RealTimeTranscriber(RealTimeTranscriberOptions(api_key="k", api_host=emu.url))
        for ev in (RealTimeEvents.Turn, RealTimeEvents.SpeakerRevision):
            client.on(ev, lambda _c, e: events.append(e))
        client.on(RealTimeEvents.Error, lambda _c, e: errors.append(e))
        params = RealTimeParameters.model_validate(
            {
                "sample_rate": 16000,
                "speech_model": US,
                "speaker_labels": True,
                "max_speakers": 3,
                "max_turn_silence": 400,
            }
        )

        def run() -> None:
            client.connect(params)
            for chunk in chunks:
                client.stream(chunk)
                time.sleep(0.05)
            client.disconnect(terminate=True)

        async with asyncio.timeout(25):
            await asyncio.to_thread(run)
        rec = await emu.wait_closed()
    assert errors == []
    assert rec.params["speaker_labels"] is True and rec.params["max_speakers"] == 3
    ends = [e for e in events if getattr(e, "end_of_turn", False)]
    assert [e.speaker_label for e in ends] == ["B", "A"]
    assert {w.speaker for w in ends[0].words} == {"B"}
    (revision,) = [e for e in events if e.type == "SpeakerRevision"]
    (item,) = revision.revisions
    assert item.turn_order == 1 and item.speaker_label == "C"
    assert {w.speaker for w in item.words} == {"C"}
