"""Client -> server messages: parsing and validation, pure.

`parse_client_frame` turns one text frame into a typed message or raises `ProtocolError`
with the documented error code (PROTOCOL.md "Errors"): `invalid_json`, `unknown_type`,
`invalid_event`. Server -> client messages are plain dicts built by `realtime.core.outbound`.

Turn frames are on the latency path, so they are read from the orjson dict directly into a
slotted dataclass, without a pydantic model.

Any input, however hostile, gives a message or a `ProtocolError`, never another exception:
a frame nested deeper than `MAX_FRAME_DEPTH` is refused as `invalid_json` before orjson sees
it (orjson before 3.9.15 has no recursion limit and overflows the C stack on deep input, taking
the process with it: CVE-2024-27454), and every integer field is checked against its range
(0..2^53-1, the integers every JSON peer can represent exactly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

from realtime.core.errors import ClientFault
from realtime.core.turns import TurnEvent

MAX_FRAME_DEPTH = 1024  # nested arrays/objects in one frame; orjson >= 3.9.15 has the same bound
MAX_SAFE_INT = 2**53 - 1
MAX_SPEAKER_CHARS = 32  # a speaker_label is "A", "B", ..., "UNKNOWN": longer ones are cut  # the largest integer a JSON peer (an IEEE double) holds exactly

# A JSON string literal, escapes included (the unrolled-loop form: linear, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


class ProtocolError(ClientFault):
    """A client frame that cannot be used; `code` is the wire error code. The session goes on."""


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    patch: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TurnMessage:
    event: TurnEvent


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class Begin:
    id: str | None


@dataclass(frozen=True, slots=True)
class Termination:
    pass


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    response_id: str | None


@dataclass(frozen=True, slots=True)
class ResponseTruncate:
    response_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseCreate:
    """`response.create`: fire a request now (a summary of the meeting so far)."""

    reason: str | None


@dataclass(frozen=True, slots=True)
class SpeakerRevision:
    """AssemblyAI's `SpeakerRevision`, forwarded: `(turn_order, speaker_label)` per revision."""

    revisions: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    """An AssemblyAI server message a client forwarded that has no effect on turns."""

    type: str


ClientMessage = (
    SessionUpdate
    | TurnMessage
    | SpeechStarted
    | Begin
    | Termination
    | ResponseCancel
    | ResponseTruncate
    | ResponseCreate
    | SpeakerRevision
    | Ignored
)

# AssemblyAI v3 server messages that a client may forward verbatim and that carry nothing
# the turn policy needs (reference section 2.5). Accepting them keeps "forward everything
# you receive" clients working without error noise.
_PASSIVE_AAI_TYPES = frozenset({"Heartbeat", "Warning", "Silence", "LLMGatewayResponse", "Error"})


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise ProtocolError("invalid_event", f"{obj['type']}: missing field '{name}'")
        return None
    # bool is an int subclass: a JSON true is not a valid turn_order.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ProtocolError(
            "invalid_event",
            f"{obj['type']}: field '{name}' must be {_kind_name(kind)}, got {_json_type(value)}",
        )
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        dict: "an object",
        list: "an array",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _count(obj: dict[str, Any], name: str, required: bool) -> Any:
    """An integer field from 0 to 2^53-1 (None if absent and not required)."""
    value = _field(obj, name, int, required)
    if value is not None and not 0 <= value <= MAX_SAFE_INT:
        raise ProtocolError(
            "invalid_event", f"{obj['type']}: field '{name}' must be from 0 to 2^53-1"
        )
    return value


def _turn(obj: dict[str, Any]) -> TurnMessage:
    turn_order = _count(obj, "turn_order", True)
    transcript = _field(obj, "transcript", str, True)
    end_of_turn = _field(obj, "end_of_turn", bool, False) or False
    formatted = _field(obj, "turn_is_formatted", bool, False) or False
    utterance = _field(obj, "utterance", str, False) or ""
    words = _field(obj, "words", list, False)
    word_count = len(words) if words else len(transcript.split())
    speaker = _field(obj, "speaker_label", str, False)
    return TurnMessage(
        TurnEvent(
            turn_order=turn_order,
            transcript=transcript,
            end_of_turn=end_of_turn,
            turn_is_formatted=formatted,
            utterance=utterance,
            word_count=word_count,
            speaker=speaker[:MAX_SPEAKER_CHARS] if speaker else None,
        )
    )


def _speaker_revision(obj: dict[str, Any]) -> SpeakerRevision:
    items = _field(obj, "revisions", list, True)
    revisions: list[tuple[int, str]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError("invalid_event", "SpeakerRevision: revisions must be objects")
        rev = {"type": "SpeakerRevision", **item}
        turn_order = _count(rev, "turn_order", True)
        label = _field(rev, "speaker_label", str, True)
        revisions.append((turn_order, label[:MAX_SPEAKER_CHARS]))
    return SpeakerRevision(tuple(revisions))


def too_deep(data: str | bytes) -> bool:
    """True if the frame nests arrays/objects deeper than MAX_FRAME_DEPTH.

    Brackets inside strings do not count. A frame with few brackets (nearly every one) is
    answered by two counts; otherwise strings are cut out and the running depth is summed in
    C (itertools), a few tens of ms for a 1 MiB frame of brackets. On invalid JSON the depth is
    exact up to the first error, which is as far as orjson reads.
    """
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= MAX_FRAME_DEPTH:
            return False
        raw = data.encode("utf-8", "surrogatepass")
    else:
        if data.count(b"[") + data.count(b"{") <= MAX_FRAME_DEPTH:
            return False
        raw = data
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_FRAME_DEPTH


def parse_client_frame(data: str | bytes) -> ClientMessage:
    """Parse one text frame from a participant. Raises ProtocolError on bad input."""
    if too_deep(data):
        raise ProtocolError("invalid_json", f"frame is nested deeper than {MAX_FRAME_DEPTH} levels")
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("invalid_json", f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_event", "a frame must be a JSON object with a string 'type'")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("unknown_type", "a frame must have a string 'type'")
    if kind == "Turn":
        return _turn(obj)
    if kind == "SpeechStarted":
        return SpeechStarted(_count(obj, "timestamp", False))
    if kind == "session.update":
        return SessionUpdate(_field(obj, "session", dict, True))
    if kind == "response.cancel":
        return ResponseCancel(_field(obj, "response_id", str, False))
    if kind == "response.truncate":
        return ResponseTruncate(
            _field(obj, "response_id", str, True), _field(obj, "text", str, True)
        )
    if kind == "response.create":
        reason = _field(obj, "reason", str, False)
        return ResponseCreate(reason[:200] if reason else None)
    if kind == "SpeakerRevision":
        return _speaker_revision(obj)
    if kind == "Begin":
        return Begin(_field(obj, "id", str, False))
    if kind == "Termination":
        return Termination()
    if kind in _PASSIVE_AAI_TYPES:
        return Ignored(kind)
    raise ProtocolError("unknown_type", f"unknown message type '{kind[:64]}'")
