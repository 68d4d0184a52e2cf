"""The speech-to-text emulator's own output against AssemblyAI's recorded sessions.

The recordings (tests/fixtures/assemblyai/, see SOURCES.md there) fix what the emulator's
scripted messages must look like: key order, the JSON form of every number (`1.4e-05`, not
`0.000014`; `0`/`1` where the U3 Pro recording has integers), where a partial revises its
last word (`son` -> `sonny`), where `utterance` is set, and a formatted copy that keeps the
timings and word confidences. The official SDK's parser must accept every message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from assemblyai.streaming.v3 import (
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
)
from assemblyai.streaming.v3._base import _BaseStreamingClient
from websockets.asyncio.client import connect

from realtime.emulators.stt import SttEmulator
from realtime.emulators.stt_engine import EarConfig, ScriptedEar, encode, raw_word

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "assemblyai"
US_RECORDING = FIXTURES / "universal_streaming_english_message_sequence.jsonl"
PRO_RECORDING = FIXTURES / "u3_pro_message_sequence.jsonl"
RATE = 16000
FRAME_MS = 50
WORD_MS = 150  # a 50 ms frame can end past the middle of a word, as the service's can
# The recorded session says "Hi my name is Sonny." and, as its second turn, "I am a voice
# agent." and then pauses long enough for an utterance but not for the end of the turn: in
# the script, a second sentence the speaker never gets to.
US_SCRIPT = ["Hi, my name is Sonny.", "I am a voice agent. How can I help you?"]
PRO_SCRIPT = ["My name is Sonny."]
# (loud?, ms): five words and a pause that ends the turn; five words and a long pause
TIMELINE = [(True, 800), (False, 400), (True, 800), (False, 800)]
PRO_TIMELINE = TIMELINE[:2]  # one turn, as recorded


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text("utf-8").splitlines() if ln.strip()]


def ear_output(config: EarConfig, script: list[str], timeline: list[tuple[bool, int]]) -> list[str]:
    """The ear's messages for a timeline in 50 ms frames, as the emulator writes them."""
    ear = ScriptedEar(config, script)
    out: list[str] = []
    for loud, ms in timeline:
        for _ in range(ms // FRAME_MS):
            out.extend(encode(m) for m in ear.feed(FRAME_MS, loud))
    out.extend(encode(m) for m in ear.end_turn())
    return out


def us_output() -> list[str]:
    config = EarConfig(
        "universal-streaming-english",
        format_turns=True,
        word_ms=WORD_MS,
        min_turn_silence=200,
        max_turn_silence=600,
    )
    return ear_output(config, US_SCRIPT, TIMELINE)


def pro_output() -> list[str]:
    return ear_output(EarConfig("u3-rt-pro", word_ms=WORD_MS), PRO_SCRIPT, PRO_TIMELINE)


# --- reading frames: number literals, key order, the shape of a turn -----------------------


def numbers(text: str) -> dict[str, set[str]]:
    """Every number literal of a frame by field path (`Turn.words.confidence`), as written."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, path)
        elif isinstance(node, tuple):  # a number, from the hooks below
            found.setdefault(path, set()).add(node[1])

    def as_int(t: str) -> tuple[str, str]:
        return ("int", t)

    def as_float(t: str) -> tuple[str, str]:
        return ("float", t)

    obj = json.loads(text, parse_int=as_int, parse_float=as_float)
    kind = json.loads(text)["type"]
    walk({k: v for k, v in obj.items() if k != "type"}, kind)
    return found


def kinds(texts: list[str]) -> dict[str, set[str]]:
    """By field path: which literal kinds occur ("int" for `1`, "float" for `1.0` / `1e-05`)."""
    out: dict[str, set[str]] = {}
    for text in texts:
        for path, literals in numbers(text).items():
            for lit in literals:
                is_float = any(c in lit for c in ".eE")
                out.setdefault(path, set()).add("float" if is_float else "int")
    return out


def float_literals(texts: list[str]) -> list[str]:
    return [
        lit
        for text in texts
        for literals in numbers(text).values()
        for lit in literals
        if any(c in lit for c in ".eE")
    ]


def key_orders(texts: list[str]) -> dict[str, set[tuple[str, ...]]]:
    out: dict[str, set[tuple[str, ...]]] = {}
    for text in texts:
        obj = json.loads(text)
        out.setdefault(obj["type"], set()).add(tuple(obj))
        for word in obj.get("words", []):
            out.setdefault("word", set()).add(tuple(word))
    return out


def turns(texts: list[str]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for text in texts:
        obj = json.loads(text)
        if obj["type"] == "Turn":
            out.setdefault(obj["turn_order"], []).append(obj)
    return out


def revises(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """`after` revises `before`'s last word: same count, the word extended from its start."""
    if before["end_of_turn"] or after["end_of_turn"] or len(before["words"]) != len(after["words"]):
        return False
    old, new = before["words"][-1], after["words"][-1]
    return bool(
        new["text"] != old["text"]
        and new["text"].startswith(old["text"])
        and new["start"] == old["start"]
        and new["end"] > old["end"]
    )


def signature(turn: list[dict[str, Any]]) -> list[str]:
    """A turn as steps: P new word, R revised last word, U partial with an utterance,
    E / E+u end of turn (with an utterance), F formatted copy."""
    steps: list[str] = []
    for i, msg in enumerate(turn):
        if msg["end_of_turn"]:
            if msg["turn_is_formatted"] and steps and steps[-1].startswith("E"):
                steps.append("F")
            else:
                steps.append("E+u" if msg["utterance"] else "E")
        elif msg["utterance"]:
            steps.append("U")
        elif i and revises(turn[i - 1], msg):
            steps.append("R")
        else:
            steps.append("P")
    return steps


# --- the recordings themselves (what the comparisons rest on) ------------------------------


def test_the_recordings_say_what_the_comparisons_assume() -> None:
    us = lines(US_RECORDING)
    assert '"end_of_turn_confidence":1.4e-05' in us[2]
    assert [signature(t) for t in turns(us).values()] == [
        ["P", "P", "P", "P", "P", "R", "E+u", "F"],
        ["P", "P", "P", "P", "P", "R", "U", "E", "F"],
    ]
    pro = lines(PRO_RECORDING)
    assert numbers(pro[2])["Turn.end_of_turn_confidence"] == {"0"}
    assert numbers(pro[3])["Turn.end_of_turn_confidence"] == {"1"}
    # every float is written in Python's shortest form, six decimals at most
    for lit in float_literals(us + pro):
        assert repr(float(lit)) == lit and round(float(lit), 6) == float(lit), lit


# --- Universal-Streaming -------------------------------------------------------------------


def test_us_turns_have_the_recorded_steps() -> None:
    ours = [signature(t) for t in turns(us_output()).values()]
    theirs = [signature(t) for t in turns(lines(US_RECORDING)).values()]
    assert ours == theirs


def test_us_revision_utterance_and_transcript_as_recorded() -> None:
    for texts in (lines(US_RECORDING), us_output()):
        for turn in turns(texts).values():
            partials = [m for m in turn if not m["end_of_turn"]]
            for before, after in itertools.pairwise(partials):
                if revises(before, after):
                    # the revised word stays non-final; the transcript does not move
                    assert not before["words"][-1]["word_is_final"]
                    assert not after["words"][-1]["word_is_final"]
                    assert after["transcript"] == before["transcript"]
            for msg in partials:
                # a partial's transcript holds its final words only
                final = [w["text"] for w in msg["words"] if w["word_is_final"]]
                assert msg["transcript"] == " ".join(final)
                assert not msg["words"][-1]["word_is_final"]
            utterance_partial = [m for m in partials if m["utterance"]]
            if utterance_partial:  # the partial repeats the one before it, with the utterance
                i = turn.index(utterance_partial[0])
                assert turn[i - 1]["words"] == turn[i]["words"]
                assert turn[i - 1]["transcript"] == turn[i]["transcript"]


def test_us_formatted_copy_keeps_timings_and_word_confidences() -> None:
    for texts in (lines(US_RECORDING), us_output()):
        for turn in turns(texts).values():
            eot, formatted = turn[-2], turn[-1]
            assert eot["end_of_turn"] and not eot["turn_is_formatted"]
            assert formatted["end_of_turn"] and formatted["turn_is_formatted"]
            assert formatted["end_of_turn_confidence"] == eot["end_of_turn_confidence"]
            assert formatted["utterance"] == ""
            pairs = list(zip(eot["words"], formatted["words"], strict=True))
            for raw, fmt in pairs:
                assert (fmt["start"], fmt["end"]) == (raw["start"], raw["end"])
                assert fmt["confidence"] == raw["confidence"]  # copied, not recomputed
                assert fmt["word_is_final"] and raw_word(fmt["text"]) == raw["text"]


def test_us_key_order_and_number_forms_as_recorded() -> None:
    ours, theirs = us_output(), lines(US_RECORDING)
    assert key_orders(ours)["Turn"] == key_orders(theirs)["Turn"]
    assert key_orders(ours)["word"] == key_orders(theirs)["word"]
    assert kinds(ours) == {k: v for k, v in kinds(theirs).items() if k.startswith("Turn.")}
    for lit in float_literals(ours):
        assert repr(float(lit)) == lit and round(float(lit), 6) == float(lit), lit
    # tiny end-of-turn confidences early in a turn, written as the service writes them
    assert any("e-" in lit for lit in float_literals(ours))
    assert '"end_of_turn_confidence":7e-05' in ours[0]


# --- Universal-3 Pro -----------------------------------------------------------------------


def test_pro_shape_and_integer_confidences_as_recorded() -> None:
    ours, theirs = pro_output(), lines(PRO_RECORDING)
    for texts in (ours, theirs):
        objs = [json.loads(t) for t in texts]
        started = [o for o in objs if o["type"] == "SpeechStarted"]
        turn = [o for o in objs if o["type"] == "Turn"]
        assert len(started) == 1 and started[0]["timestamp"] == turn[0]["words"][0]["start"]
        *partials, final = turn
        assert partials and all(
            not p["end_of_turn"] and not p["turn_is_formatted"] for p in partials
        )
        assert all(not w["word_is_final"] for p in partials for w in p["words"])
        assert all(p["utterance"] == "" for p in partials)
        assert final["end_of_turn"] and final["turn_is_formatted"]
        assert final["utterance"] == final["transcript"]
        assert all(w["word_is_final"] for w in final["words"])
    eot_literals = [numbers(t).get("Turn.end_of_turn_confidence") for t in ours]
    assert [x for x in eot_literals if x] == [{"0"}] * (len(ours) - 2) + [{"1"}]
    assert kinds(ours) == {
        k: v for k, v in kinds(theirs).items() if k.startswith(("Turn.", "SpeechStarted."))
    } | {"SpeechStarted.confidence": {"float"}}
    assert key_orders(ours)["Turn"] == key_orders(theirs)["Turn"]
    # SpeechStarted: the recorded keys first; `confidence` is in AssemblyAI's reference (2.5)
    (recorded,) = key_orders(theirs)["SpeechStarted"]
    (ours_started,) = key_orders(ours)["SpeechStarted"]
    assert ours_started[: len(recorded)] == recorded


# --- the official SDK accepts every message ------------------------------------------------


def test_sdk_parser_accepts_every_scripted_message() -> None:
    for text in us_output() + pro_output():
        data = json.loads(text)
        event = _BaseStreamingClient._parse_message(data)
        assert event is not None and event.type == data["type"], text


async def test_the_emulator_sends_the_ear_output_on_the_wire() -> None:
    """Over a socket: the same frames, numbers written the same way, SDK-valid."""
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(800) / RATE)).astype("<i2")
    loud, quiet = tone.tobytes(), bytes(1600)
    async with SttEmulator(script=US_SCRIPT, word_ms=WORD_MS, rate_tolerance_ms=None) as emu:
        query = "speech_model=universal-streaming-english&format_turns=true"
        query += "&min_turn_silence=200&max_turn_silence=600"
        async with connect(f"{emu.url}/v3/ws?{query}") as ws:
            await ws.recv()  # Begin
            for is_loud, ms in TIMELINE:
                for _ in range(ms // FRAME_MS):
                    await ws.send(loud if is_loud else quiet)
            await ws.send('{"type":"Terminate"}')
            received = [str(m) async for m in ws]
    assert received[:-1] == us_output()
    assert json.loads(received[-1])["type"] == "Termination"
    for text in received:
        assert _BaseStreamingClient._parse_message(json.loads(text)) is not None


async def test_official_sdk_client_takes_every_message_of_a_scripted_session() -> None:
    events: list[Any] = []
    errors: list[Any] = []
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(800) / RATE)).astype("<i2")
    chunks = [
        tone.tobytes() if is_loud else bytes(1600)
        for is_loud, ms in TIMELINE
        for _ in range(ms // FRAME_MS)
    ]
    async with SttEmulator(script=US_SCRIPT, word_ms=WORD_MS) as emu:
        client = RealTimeTranscriber(RealTimeTranscriberOptions(api_key="k", api_host=emu.url))
        for ev in (RealTimeEvents.Begin, RealTimeEvents.Turn, RealTimeEvents.Termination):
            client.on(ev, lambda _c, e: events.append(e))
        client.on(RealTimeEvents.Error, lambda _c, e: errors.append(e))
        params = RealTimeParameters.model_validate(
            {
                "sample_rate": RATE,
                "speech_model": "universal-streaming-english",
                "format_turns": True,
                "min_turn_silence": 200,
                "max_turn_silence": 600,
            }
        )

        def run() -> None:
            client.connect(params)
            for chunk in chunks:
                client.stream(chunk)
                time.sleep(FRAME_MS / 1000)
            client.disconnect(terminate=True)

        async with asyncio.timeout(25):
            await asyncio.to_thread(run)
        rec = await emu.wait_closed()
    assert errors == []
    assert len(events) == len(rec.messages_sent)  # every message became a validated event
    sent = [encode(m) for m in rec.messages_sent if m["type"] == "Turn"]
    assert [signature(t) for t in turns(sent).values()] == [
        ["P", "P", "P", "P", "P", "R", "E+u", "F"],
        ["P", "P", "P", "P", "P", "R", "U", "E", "F"],
    ]
