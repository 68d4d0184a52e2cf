"""Pipecat's AssemblyAI speech-to-text service against /v3/ws, without installing Pipecat.

`PipecatParser` reads messages as Pipecat's `AssemblyAISTTService` does (pipecat-ai/pipecat
v1.7, `services/assemblyai/stt.py` and `models.py`; AssemblyAI reference section 5): each text
frame is `json.loads`ed; only `Begin`, `Turn`, `SpeechStarted` and `Termination` are known, each
validated by a pydantic model (extra fields ignored); any other type raises
"Unknown message type: X", which Pipecat pushes as an error frame and logs as an ERROR. A `Turn`
with an empty transcript is skipped; a `Turn` is final iff
`end_of_turn and (not format_turns or turn_is_formatted)`, else interim.

The client connects as Pipecat does: `f"{base}?{urlencode(params)}"` with booleans written
`true`/`false`, its "Pipecat mode" turn settings, `Authorization: <key>` and its User-Agent;
it streams 50 ms chunks, sends `ForceEndpoint` when its VAD hears the speaker stop, and on
the way out `Terminate`, waiting up to 5 s for `Termination`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlencode

import pytest
from assemblyai.streaming.v3._base import _BaseStreamingClient
from assemblyai.streaming.v3.models import LLMGatewayResponseEvent
from pydantic import BaseModel, Field
from support.audio import tone
from support.service import Service
from websockets.asyncio.client import connect

from realtime.emulators.stt import SttEmulator
from realtime.server import ServerSettings

pytestmark = pytest.mark.timeout(60)

SCRIPT = ["Hello there, Sonny.", "How are you today?"]  # formatting differs from the raw text
LLM = {
    "model": "gpt-4.1",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Reply to: {{turn}}"}],
}


@pytest.fixture
async def stt() -> AsyncIterator[SttEmulator]:
    """This module's speech-to-text emulator (the `audio_service` fixture uses it)."""
    async with SttEmulator(script=SCRIPT, word_ms=150, silence_ms=300) as emu:
        yield emu


# --- Pipecat's message models and parsing ---------------------------------------------------


class Word(BaseModel):
    start: int
    end: int
    text: str
    confidence: float
    word_is_final: bool


class Begin(BaseModel):
    type: Literal["Begin"]
    id: str
    expires_at: int


class Turn(BaseModel):
    type: Literal["Turn"]
    turn_order: int
    turn_is_formatted: bool
    end_of_turn: bool
    transcript: str
    end_of_turn_confidence: float
    words: list[Word]
    language_code: str | None = None
    language_confidence: float | None = None
    speaker: str | None = Field(default=None, alias="speaker_label")


class SpeechStarted(BaseModel):
    type: Literal["SpeechStarted"]
    timestamp: int


class Termination(BaseModel):
    type: Literal["Termination"]
    audio_duration_seconds: float
    session_duration_seconds: float


KNOWN: dict[str, type[BaseModel]] = {
    "Begin": Begin,
    "Turn": Turn,
    "SpeechStarted": SpeechStarted,
    "Termination": Termination,
}


@dataclass
class PipecatParser:
    """What Pipecat makes of each frame: messages, interim and final transcripts, errors."""

    format_turns: bool = True
    frames: list[str] = field(default_factory=list)
    messages: list[BaseModel] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # Pipecat: push_error, an ERROR log line
    interim: list[str] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    terminated: asyncio.Event = field(default_factory=asyncio.Event)

    @staticmethod
    def parse(message: dict[str, Any]) -> BaseModel:
        kind = message.get("type")
        model = KNOWN.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise ValueError(f"Unknown message type: {kind}")
        return model.model_validate(message)

    def handle(self, text: str) -> None:
        self.frames.append(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return  # Pipecat: a warning, nothing else
        try:
            message = self.parse(data)
        except Exception as exc:  # Pipecat catches everything here and reports it
            self.errors.append(str(exc))
            return
        self.messages.append(message)
        if isinstance(message, Turn) and message.transcript:
            final = message.end_of_turn and (not self.format_turns or message.turn_is_formatted)
            (self.finals if final else self.interim).append(message.transcript)
        elif isinstance(message, Termination):
            self.terminated.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Frames of a type, whether Pipecat knows it or not."""
        return [m for m in map(json.loads, self.frames) if m.get("type") == kind]


def pipecat_query(speech_model: str, **extra: Any) -> str:
    """Pipecat's connection parameters in "Pipecat mode" (`vad_force_turn_endpoint=True`)."""
    params: dict[str, Any] = {
        "sample_rate": 16000,
        "encoding": "pcm_s16le",
        "speech_model": speech_model,
        "format_turns": "true",
    }
    if speech_model.startswith("u3-"):
        params |= {"min_turn_silence": 100, "max_turn_silence": 100}
    else:
        params |= {"end_of_turn_confidence_threshold": 1.0, "min_turn_silence": 160}
    return urlencode({**params, **extra})


async def pipecat_session(
    service: Service,
    query: str,
    speech: list[float],
    *,
    until: Any = None,
) -> PipecatParser:
    """One Pipecat-like session: for each speech segment (seconds), 50 ms chunks of a tone,
    a short pause, `ForceEndpoint`, more silence; then, once `until(parser)` holds (or every
    segment's final came), `Terminate` and up to 5 s for `Termination`."""
    parser = PipecatParser()
    base = f"ws://127.0.0.1:{service.server.port}/v3/ws"
    headers = {"Authorization": "pipecat-key", "User-Agent": "AssemblyAI/1.0 (integration=Pipecat)"}
    done = until or (lambda p: len(p.finals) >= len(speech))
    async with connect(f"{base}?{query}", additional_headers=headers) as ws:

        async def read() -> None:
            async for frame in ws:
                if isinstance(frame, str):
                    parser.handle(frame)

        reader = asyncio.create_task(read())
        try:
            for seconds in speech:
                for chunk in tone(seconds, True) + tone(0.2, False):
                    await ws.send(chunk)
                    await asyncio.sleep(0.045)
                await ws.send(json.dumps({"type": "ForceEndpoint"}))  # the VAD heard a stop
                for chunk in tone(0.4, False):
                    await ws.send(chunk)
                    await asyncio.sleep(0.045)
            async with asyncio.timeout(20):
                while not done(parser):
                    await asyncio.sleep(0.05)
            await ws.send(json.dumps({"type": "Terminate"}))
            async with asyncio.timeout(5):
                await parser.terminated.wait()
        finally:
            await ws.close()
            await asyncio.wait([reader])
    return parser


# --- without llm_gateway: nothing Pipecat does not know --------------------------------------


@pytest.mark.parametrize("speech_model", ["universal-streaming-english", "u3-rt-pro"])
async def test_pipecat_meets_no_unknown_message_without_llm_gateway(
    audio_service: Service, speech_model: str
):
    parser = await pipecat_session(audio_service, pipecat_query(speech_model), [0.6, 0.75])
    assert parser.errors == []
    kinds = [json.loads(f)["type"] for f in parser.frames]
    assert set(kinds) <= set(KNOWN)
    assert kinds[0] == "Begin" and kinds[-1] == "Termination"
    assert parser.finals == SCRIPT  # the formatted copies, as Pipecat waits for them
    assert parser.interim  # partials reached it as interim transcripts
    assert ("SpeechStarted" in kinds) is speech_model.startswith("u3-")
    assert audio_service.emulator.requests == []  # and no LLM request was made


# --- with llm_gateway: one LLMGatewayResponse per reply, the formatted transcript ------------


async def test_llm_gateway_gets_one_response_per_reply_with_the_formatted_transcript(
    audio_service: Service,
):
    query = pipecat_query("universal-streaming-english", llm_gateway=json.dumps(LLM))
    parser = await pipecat_session(
        audio_service,
        query,
        [0.6, 0.75],
        until=lambda p: len(p.of_type("LLMGatewayResponse")) >= 2 and len(p.finals) >= 2,
    )
    replies = parser.of_type("LLMGatewayResponse")
    # what AssemblyAI does too when asked: Pipecat reports each one as an unknown type
    assert parser.errors == ["Unknown message type: LLMGatewayResponse"] * len(replies)
    assert sorted(r["turn_order"] for r in replies) == [0, 1]
    assert len(audio_service.emulator.requests) == len(replies)  # one per reply
    by_turn = {r["turn_order"]: r for r in replies}
    assert [by_turn[0]["transcript"], by_turn[1]["transcript"]] == SCRIPT  # formatted
    for reply in replies:
        content = reply["data"]["choices"][0]["message"]["content"]
        assert "Reply to:" in content
        event = _BaseStreamingClient._parse_message(reply)  # the official SDK takes it
        assert isinstance(event, LLMGatewayResponseEvent)
    assert parser.finals == SCRIPT


# --- the operator's opt-in for clients that cannot pass llm_gateway --------------------------


async def test_v3_default_llm_replies_to_clients_that_did_not_ask(
    serve, settings: ServerSettings, stt: SttEmulator
):
    async with serve(replace(settings, v3_default_llm=True), stt=stt) as svc:
        parser = await pipecat_session(
            svc,
            pipecat_query("universal-streaming-english"),
            [0.6],
            until=lambda p: p.of_type("LLMGatewayResponse") and p.finals,
        )
    replies = parser.of_type("LLMGatewayResponse")
    assert [r["transcript"] for r in replies] == SCRIPT[:1]
    assert parser.errors == ["Unknown message type: LLMGatewayResponse"]
