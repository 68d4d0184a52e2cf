"""Replay of a recorded v3 message sequence (.jsonl, one server frame per line), paced by audio.

Pure: no sockets. `ReplayEar` has the same `feed` / `end_turn` surface as `ScriptedEar`, but
returns `Raw` items carrying the recorded line's exact text, so replayed frames are
byte-identical to the file. What changes, and only that:

* `Begin`: the recorded frame is re-serialised with `expires_at` set to the session's real
  expiry (a recorded one lies in the past); `id` and every other key are kept.
* `Termination`: sent on the client's `Terminate` only; a recorded one keeps its key order
  with `audio_duration_seconds` / `session_duration_seconds` set to this session's values.
  Without one in the file a fresh frame is built.
* Pacing: a frame is released once the audio clock reaches its time: a `Turn`'s latest word
  `end`, a `SpeechStarted`'s `timestamp`; other frames, and `Turn`s without words, go with
  the frame before them. Times never go backwards, so file order is kept.
* `ForceEndpoint` / `Terminate` release the rest of the turn in progress (frames with the same
  `turn_order` as the last one sent) at once; frames of later turns stay unsent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Raw:
    """A frame to send verbatim: `text` on the wire, `obj` its parsed form (for records)."""

    text: str
    obj: dict[str, Any]


def _frame_time(obj: dict[str, Any]) -> int | None:
    if obj.get("type") == "SpeechStarted" and isinstance(obj.get("timestamp"), int):
        return int(obj["timestamp"])
    if obj.get("type") == "Turn":
        ends = [w["end"] for w in obj.get("words") or [] if isinstance(w.get("end"), int)]
        return max(ends) if ends else None
    return None


class Recording:
    """A parsed .jsonl recording: the Begin and Termination templates and the frames between."""

    def __init__(self, lines: list[str]) -> None:
        self.begin: dict[str, Any] | None = None
        self.termination: dict[str, Any] | None = None
        self.frames: list[tuple[int, Raw]] = []  # (release time on the audio clock, frame)
        clock = 0
        for line in lines:
            text = line.strip()
            if not text:
                continue
            obj = orjson.loads(text)
            kind = obj.get("type")
            if kind == "Begin" and self.begin is None and not self.frames:
                self.begin = obj
            elif kind == "Termination":
                self.termination = obj
            else:
                t = _frame_time(obj)
                clock = max(clock, t if t is not None else clock)
                self.frames.append((clock, Raw(text, obj)))

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        return cls(Path(path).read_text(encoding="utf-8").splitlines())

    def begin_frame(self, session_id: str, expires_at: int) -> dict[str, Any]:
        """The Begin to send: the recorded one with a live `expires_at`, else a fresh one."""
        if self.begin is None:
            return {"type": "Begin", "id": session_id, "expires_at": expires_at}
        return {**self.begin, "expires_at": expires_at}

    def termination_frame(self, audio_s: int, session_s: int) -> dict[str, Any]:
        base = self.termination or {"type": "Termination"}
        return {**base, "audio_duration_seconds": audio_s, "session_duration_seconds": session_s}


class ReplayEar:
    """Releases a recording's frames as the audio clock passes their times."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.audio_ms = 0.0
        self._next = 0
        self._turn_open: int | None = None  # turn_order of the last Turn sent, until its EOT

    @property
    def in_turn(self) -> bool:
        return self._turn_open is not None

    def _release(self, raw: Raw) -> Raw:
        obj = raw.obj
        if obj.get("type") == "Turn":
            final = obj.get("end_of_turn") is True
            more_of_it = self._peek_turn_order() == obj.get("turn_order")
            self._turn_open = None if final and not more_of_it else obj.get("turn_order")
        return raw

    def _peek_turn_order(self) -> Any:
        frames = self.recording.frames
        if self._next < len(frames) and frames[self._next][1].obj.get("type") == "Turn":
            return frames[self._next][1].obj.get("turn_order")
        return None

    def feed(self, duration_ms: float, loud: bool) -> list[Raw]:
        """Advance the audio clock (loudness is irrelevant in replay); return due frames."""
        self.audio_ms += duration_ms
        out: list[Raw] = []
        frames = self.recording.frames
        while self._next < len(frames) and frames[self._next][0] <= self.audio_ms:
            self._next += 1
            out.append(self._release(frames[self._next - 1][1]))
        return out

    def end_turn(self) -> list[Raw]:
        """Send the rest of the turn in progress now (ForceEndpoint, Terminate)."""
        out: list[Raw] = []
        frames = self.recording.frames
        while self._turn_open is not None and self._next < len(frames):
            obj = frames[self._next][1].obj
            if obj.get("type") != "Turn" or obj.get("turn_order") != self._turn_open:
                break
            self._next += 1
            out.append(self._release(frames[self._next - 1][1]))
        self._turn_open = None
        return out
