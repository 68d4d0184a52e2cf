"""The pure core of the speech-to-text emulator: query parsing and a scripted "ear".

No sockets and no asyncio here. `parse_params` turns a /v3/ws query string into typed session
settings the way the real service reads them; `ScriptedEar` turns a stream of audio frames
(length in ms, loud or not) into AssemblyAI Universal Streaming v3 messages, "hearing" lines
from a script instead of recognising speech; `encode` writes a message as the service does.

How it hears (all times on the audio clock, i.e. milliseconds of audio received):

* Loud audio produces words: one word of the current script line per `word_ms` of loud audio.
  Before a turn has its first word, a silent frame resets the count (a click is not speech).
* The first word opens a turn and takes the next script line (the script repeats when it
  runs out). Each new word sends a partial `Turn`.
* Silence ends the turn after `max_turn_silence`, or after `min_turn_silence` when every word
  of the line was heard and the line ends in terminal punctuation (. ? !) -- a stand-in for the
  service's "confident end of turn". Words of a line that were not heard by then are dropped.
* `ForceEndpoint` and `Terminate` end the current turn at once.

Universal-Streaming models, shaped like AssemblyAI's recorded sessions
(tests/fixtures/assemblyai/universal_streaming_english_message_sequence.jsonl):

* Partial words are lower-case without punctuation, the last word is not final and
  `transcript` holds the final words only.
* A word that ends a sentence (or the line) and has at least 4 letters is first heard in part:
  a frame that ends past the middle of the word, but before its end, sends a partial whose
  last word is a prefix (`son`); the next partial revises it to the whole word (`sonny`: same
  `start`, later `end`, its own confidence), as the recordings do.
* `utterance` is the formatted text of the words since the last utterance boundary. A boundary
  is `min_turn_silence` of silence after a word that ends a sentence. When the turn ends there
  too, the end-of-turn message carries the utterance (recorded turn 0); when it does not
  (the line has more sentences, so the turn waits for `max_turn_silence`), a partial carries
  it and the end-of-turn message has `utterance` "" unless words came after it (turn 1).
* With `format_turns` a formatted copy follows the end-of-turn message (same `turn_order`,
  timings, word confidences and `end_of_turn_confidence`; `utterance` "").
* `end_of_turn_confidence` is a float; early partials have tiny ones (`7e-05`).

Pro models (`u3-*`, `universal-3*`): `SpeechStarted` precedes a turn's first `Turn`, partial
words are all non-final with `end_of_turn_confidence` 0, and the single final is formatted
(`turn_is_formatted` = `end_of_turn`, `end_of_turn_confidence` 1, `utterance` = `transcript`).
As in the U3 Pro recording, those two confidences are the integers `0` and `1`.

Speakers (`speaker_labels=true`): each script line may start with a speaker prefix,

    A: Let's start with the budget.        spoken by speaker A
    B: We are over by ten percent.         spoken by speaker B
    Then we cut travel.                    no prefix: speaker A
    A>C: I can take that action item.      heard as A, relabelled to C afterwards

(one capital letter, optionally `>` and the letter it is relabelled to, then `:` and a space;
the prefix is never part of the words heard, with or without `speaker_labels`). With
`speaker_labels`, every `Turn` of a scripted turn carries `speaker_label` and every final word
carries `speaker`; with `max_speakers=N` a speaker beyond the N-th letter is folded onto
letter index % N (with N=2, C is heard as A). A relabelled line (`A>C:`) ends, as heard, with
`A`; a `SpeakerRevision` then names its `turn_order`, the new `speaker_label` and its words
(formatted, final, with the new `speaker`). As the service does by default (final revision
only), revisions are sent after `Terminate`, before `Termination`; with
`speaker_labels_revision_interval_ms` set, each is sent right after the turn's end-of-turn
message(s) instead. Without `speaker_labels` no speaker field or revision is ever sent.

Numbers are written as the service writes them (`encode`): Python's shortest float form,
so `1.4e-05` stays `1.4e-05` and integers stay integers.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

DEFAULT_SPEECH_MODEL = "universal-3-6-pro"  # newest default per the Oct-2026 reference
DEFAULT_SAMPLE_RATE = 16000
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}  # bytes per sample
# Turn-silence defaults (ms) by model family: (min_turn_silence, max_turn_silence)
US_SILENCE = (400, 1280)
PRO_SILENCE = (100, 1000)

_BOOL_PARAMS = {
    "format_turns",
    "language_detection",
    "speaker_labels",
    "filter_profanity",
    "session_heartbeat",
    "continuous_partials",
    "redact_pii",
    "include_partial_turns",
    "acknowledge_silence",
    "customer_support_audio_capture",
}
_INT_PARAMS = {
    "sample_rate",
    "min_turn_silence",
    "max_turn_silence",
    "max_speakers",
    "interruption_delay",
    "previous_context_n_turns",
    "speaker_labels_revision_interval_ms",
    "min_end_of_turn_silence_when_confident",
}
# inactivity_timeout is whole seconds on the wire; fractions are accepted for quick tests
_FLOAT_PARAMS = {
    "inactivity_timeout",
    "end_of_turn_confidence_threshold",
    "vad_threshold",
    "voice_focus_threshold",
}
_JSON_PARAMS = {"keyterms_prompt", "llm_gateway", "language_codes"}


class ParamError(ValueError):
    """A connection parameter the emulator cannot accept (the server rejects the session)."""


def is_pro_model(model: str) -> bool:
    """Pro-family model names: u3-rt-pro, u3-pro, universal-3-5-pro, universal-3-6(-pro), ..."""
    return model.startswith(("u3-", "universal-3"))


def _parse_value(key: str, raw: str) -> Any:
    if key in _BOOL_PARAMS:
        low = raw.strip().lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise ParamError(f"{key} must be a boolean, got {raw!r}")
    try:
        if key in _INT_PARAMS:
            return int(float(raw))
        if key in _FLOAT_PARAMS:
            return float(raw)
    except ValueError:
        raise ParamError(f"{key} must be a number, got {raw!r}") from None
    if key in _JSON_PARAMS:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ParamError(f"{key} must be JSON") from None
    return raw


def parse_params(query: str) -> dict[str, Any]:
    """Parse a /v3/ws query string: booleans in any case, numbers, JSON lists/objects.

    Unknown parameters are kept as strings (the service ignores them). `token` is removed.
    Defaults are filled in: sample_rate 16000, encoding pcm_s16le, speech_model as above.
    The deprecated `min_end_of_turn_silence_when_confident` becomes `min_turn_silence`.
    """
    params: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key == "token":
            continue
        params[key] = _parse_value(key, raw)
    old = params.pop("min_end_of_turn_silence_when_confident", None)
    if old is not None:
        params.setdefault("min_turn_silence", old)
    params.setdefault("sample_rate", DEFAULT_SAMPLE_RATE)
    params.setdefault("encoding", "pcm_s16le")
    params.setdefault("speech_model", DEFAULT_SPEECH_MODEL)
    if params["encoding"] not in ENCODINGS:
        raise ParamError(f"unsupported encoding {params['encoding']!r}")
    if not 8000 <= params["sample_rate"] <= 96000:
        raise ParamError("sample_rate must be between 8000 and 96000")
    return params


# --- words, numbers and formatting ------------------------------------------------------------

_STRIP = re.compile(r"[^\w']+")
_SPEAKER_PREFIX = re.compile(r"^(?P<speaker>[A-Z])(?:>(?P<revised>[A-Z]))?:\s+(?P<text>.*)$")
DEFAULT_SPEAKER = "A"
_SENTENCE_END = (".", "?", "!")
MIN_REVISED_LETTERS = 4  # shorter words are never heard in part
UTTERANCE_EOT_CONFIDENCE = 0.45  # at an utterance boundary that does not end the turn


def encode(msg: dict[str, Any]) -> str:
    """A message as the service writes it: compact UTF-8 JSON, keys in the order given, floats
    in Python's shortest form (`1.4e-05`, `0.5005`; orjson would write `0.000014`) and
    integers as integers."""
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def raw_word(word: str) -> str:
    """The unformatted spelling: lower-case, punctuation removed (apostrophes kept)."""
    return _STRIP.sub("", word).lower() or word.lower()


def word_confidence(word: str) -> float:
    """Deterministic, word-dependent, six decimals like the service's: 0.7 .. 0.999999."""
    return round(0.7 + zlib.crc32(word.encode()) % 300_000 / 1_000_000, 6)


def partial_confidence(words: int) -> float:
    """A partial's end-of-turn confidence: tiny early in a turn (7e-05), rising with its words."""
    return round(min(0.2, 1e-05 * 7.0**words), 6)


def script_line(line: str) -> tuple[str, str | None, str]:
    """(speaker, relabelled-to or None, text) of a script line: `B: text`, `A>C: text`, `text`."""
    m = _SPEAKER_PREFIX.match(line.strip())
    if m is None:
        return DEFAULT_SPEAKER, None, line.strip()
    return m["speaker"], m["revised"], m["text"].strip()


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith(_SENTENCE_END)


def _revisable(text: str, last: bool) -> bool:
    """A word heard in part before it is heard whole: one that ends a sentence or the line."""
    return (last or _ends_sentence(text)) and len(raw_word(text)) >= MIN_REVISED_LETTERS


@dataclass(slots=True)
class _Word:
    text: str  # as written in the script (formatted)
    start: int
    end: int
    confidence: float  # the same in the raw and the formatted copy, as the service sends it


@dataclass(slots=True)
class EarConfig:
    """Session settings the ear needs; built from parsed params plus emulator options."""

    speech_model: str = DEFAULT_SPEECH_MODEL
    format_turns: bool = False
    min_turn_silence: int | None = None
    max_turn_silence: int | None = None
    word_ms: int = 300
    silence_ms: int | None = None  # emulator-wide default for both silences
    speaker_labels: bool = False
    max_speakers: int | None = None
    revision_interval_ms: int | None = None  # None: revisions only after Terminate

    def speaker(self, label: str) -> str:
        """A scripted label as heard: folded onto the first `max_speakers` letters."""
        n = self.max_speakers
        if n is None or n < 1 or not label.isalpha() or len(label) != 1:
            return label
        return chr(ord("A") + (ord(label) - ord("A")) % n)

    @property
    def pro(self) -> bool:
        return is_pro_model(self.speech_model)

    def silence_for(self, confident: bool) -> int:
        """Silence (ms) that ends a turn; `confident` = whole line heard, ends in . ? !"""
        dmin, dmax = PRO_SILENCE if self.pro else US_SILENCE
        if self.silence_ms is not None:
            dmin = dmax = self.silence_ms
        lo = self.min_turn_silence if self.min_turn_silence is not None else dmin
        hi = self.max_turn_silence if self.max_turn_silence is not None else dmax
        return lo if confident else hi

    def update(self, fields: dict[str, Any]) -> None:
        """Apply UpdateConfiguration fields this ear understands; others are ignored."""
        for key in ("min_turn_silence", "max_turn_silence"):
            if isinstance(fields.get(key), int | float):
                setattr(self, key, int(fields[key]))
        if isinstance(fields.get("format_turns"), bool):
            self.format_turns = fields["format_turns"]


@dataclass
class ScriptedEar:
    """Audio frames in, v3 messages out (plain dicts, every required field, exact types)."""

    config: EarConfig
    script: list[str]
    audio_ms: float = 0.0
    turn_order: int = 0
    _line: int = 0
    _words: list[_Word] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)  # words of the line not yet heard
    _loud_ms: float = 0.0  # loud audio towards the next word
    _word_start: int | None = None
    _silent_ms: float = 0.0
    _full_line: str = ""
    _in_part: bool = False  # a partial showed a prefix of the next pending word
    _loud_until: int = 0  # audio clock at the end of the last loud frame
    _utterance_from: int = 0  # index in _words of the current utterance's first word
    _speaker: str = DEFAULT_SPEAKER  # the current line's speaker, as heard
    _revised: str | None = None  # the label the current line is relabelled to afterwards
    _revisions: list[dict[str, Any]] = field(default_factory=list)  # sent after Terminate

    @property
    def in_turn(self) -> bool:
        return bool(self._words)

    def feed(self, duration_ms: float, loud: bool) -> list[dict[str, Any]]:
        """Advance the audio clock by one frame; return the messages it triggers, in order."""
        start = self.audio_ms
        self.audio_ms += duration_ms
        out: list[dict[str, Any]] = []
        if not loud:
            if not self.in_turn:
                self._loud_ms, self._word_start = 0.0, None
                return out
            self._silent_ms += duration_ms
            if self._silent_ms >= self.config.silence_for(self._confident()):
                out.extend(self.end_turn())
            elif self._at_utterance_boundary():
                out.append(self._utterance_partial())
            return out
        self._silent_ms = 0.0
        self._loud_until = int(self.audio_ms)
        if self._word_start is None:
            self._word_start = int(start)
        self._loud_ms += duration_ms
        while self._loud_ms >= self.config.word_ms:
            self._loud_ms -= self.config.word_ms
            out.extend(self._next_word(int(self.audio_ms - self._loud_ms)))
        if self._loud_ms * 2 > self.config.word_ms and self._hears_in_part():
            out.append(self._partial_in_part())
        return out

    def _confident(self) -> bool:
        return not self._pending and self._full_line.rstrip().endswith(_SENTENCE_END)

    def _next_word(self, end: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.in_turn:
            if not self.script:
                return out
            speaker, revised, self._full_line = script_line(
                self.script[self._line % len(self.script)]
            )
            self._speaker = self.config.speaker(speaker)
            self._revised = self.config.speaker(revised) if revised is not None else None
            self._line += 1
            self._pending = self._full_line.split()
            if self.config.pro:
                ts = self._word_start or 0
                out.append({"type": "SpeechStarted", "timestamp": ts, "confidence": 0.9})
        if not self._pending:  # whole line heard; further loud audio adds nothing
            self._word_start = None
            return out
        start = self._word_start if self._word_start is not None else end - self.config.word_ms
        self._hear(start, end)
        self._word_start = end if self._loud_ms > 0 else None
        out.append(self._partial())
        return out

    def _hear(self, start: int, end: int) -> None:
        text = self._pending.pop(0)
        self._words.append(_Word(text, start, end, word_confidence(raw_word(text))))
        self._in_part = False

    def _hears_in_part(self) -> bool:
        """Past the middle of a revisable word, not yet at its end, not yet shown in part."""
        return (
            not self.config.pro
            and self.in_turn
            and not self._in_part
            and self._word_start is not None
            and bool(self._pending)
            and _revisable(self._pending[0], last=len(self._pending) == 1)
        )

    def _at_utterance_boundary(self) -> bool:
        """`min_turn_silence` after a sentence's last word, with words since the last one."""
        return (
            not self.config.pro
            and not self._in_part
            and len(self._words) > self._utterance_from
            and self._silent_ms >= self.config.silence_for(True)
            and _ends_sentence(self._words[-1].text)
        )

    def _word_dict(
        self, w: _Word, *, formatted: bool, final: bool, speaker: str | None = None
    ) -> dict[str, Any]:
        word = {
            "start": w.start,
            "end": w.end,
            "text": w.text if formatted else raw_word(w.text),
            "confidence": w.confidence,
            "word_is_final": final,
        }
        if self.config.speaker_labels and final:
            word["speaker"] = speaker or self._speaker
        return word

    def _turn(
        self,
        *,
        words: list[dict[str, Any]],
        transcript: str,
        end_of_turn: bool,
        formatted: bool,
        eot_conf: float,
        utterance: str,
    ) -> dict[str, Any]:
        # key order follows the recorded service frames (type last)
        msg: dict[str, Any] = {
            "turn_order": self.turn_order,
            "turn_is_formatted": formatted,
            "end_of_turn": end_of_turn,
            "transcript": transcript,
            "end_of_turn_confidence": eot_conf,
            "words": words,
            "utterance": utterance,
        }
        if self.config.speaker_labels:
            msg["speaker_label"] = self._speaker
        msg["type"] = "Turn"
        return msg

    def _partial(self) -> dict[str, Any]:
        if self.config.pro:
            words = [self._word_dict(w, formatted=True, final=False) for w in self._words]
            return self._turn(
                words=words,
                transcript=" ".join(w["text"] for w in words),
                end_of_turn=False,
                formatted=False,
                eot_conf=0,  # an integer, as in the U3 Pro recording
                utterance="",
            )
        words = [self._word_dict(w, formatted=False, final=True) for w in self._words]
        words[-1]["word_is_final"] = False
        words[-1].pop("speaker", None)  # speakers are given for final words only
        return self._turn(
            words=words,
            transcript=" ".join(w["text"] for w in words[:-1]),
            end_of_turn=False,
            formatted=False,
            eot_conf=partial_confidence(len(words)),
            utterance="",
        )

    def _partial_in_part(self) -> dict[str, Any]:
        """The words heard so far, all final, then a prefix of the word being heard (`son`);
        the partial that completes the word revises it (`sonny`)."""
        assert self._word_start is not None
        self._in_part = True
        raw = raw_word(self._pending[0])
        words = [self._word_dict(w, formatted=False, final=True) for w in self._words]
        part = {
            "start": self._word_start,
            "end": int(self.audio_ms),
            "text": raw[: max(2, len(raw) - 2)],
            "confidence": round(word_confidence(raw) * 0.85, 6),
            "word_is_final": False,
        }
        return self._turn(
            words=[*words, part],
            transcript=" ".join(w["text"] for w in words),
            end_of_turn=False,
            formatted=False,
            eot_conf=partial_confidence(len(words)),  # below the revising partial's
            utterance="",
        )

    def _utterance(self) -> str:
        """The formatted words since the last utterance boundary; the boundary moves here."""
        text = " ".join(w.text for w in self._words[self._utterance_from :])
        self._utterance_from = len(self._words)
        return text

    def _utterance_partial(self) -> dict[str, Any]:
        """The last partial again, carrying the utterance that just ended (the turn goes on)."""
        msg = self._partial()
        msg["end_of_turn_confidence"] = UTTERANCE_EOT_CONFIDENCE
        msg["utterance"] = self._utterance()
        return msg

    def end_turn(self) -> list[dict[str, Any]]:
        """End the current turn now (silence, ForceEndpoint, Terminate); [] if none is open."""
        if not self.in_turn:
            return []
        if self._in_part and self._pending and self._word_start is not None:
            self._hear(self._word_start, self._loud_until)  # committed as far as it was heard
        formatted_words = [self._word_dict(w, formatted=True, final=True) for w in self._words]
        formatted_text = " ".join(w["text"] for w in formatted_words)
        out: list[dict[str, Any]] = []
        if self.config.pro:
            out.append(
                self._turn(
                    words=formatted_words,
                    transcript=formatted_text,
                    end_of_turn=True,
                    formatted=True,
                    eot_conf=1,  # an integer, as in the U3 Pro recording
                    utterance=formatted_text,
                )
            )
        else:
            conf = 0.9 if self._confident() else 0.3
            raw_words = [self._word_dict(w, formatted=False, final=True) for w in self._words]
            out.append(
                self._turn(
                    words=raw_words,
                    transcript=" ".join(w["text"] for w in raw_words),
                    end_of_turn=True,
                    formatted=False,
                    eot_conf=conf,
                    utterance=self._utterance(),
                )
            )
            if self.config.format_turns:
                out.append(
                    self._turn(
                        words=formatted_words,
                        transcript=formatted_text,
                        end_of_turn=True,
                        formatted=True,
                        eot_conf=conf,
                        utterance="",
                    )
                )
        out.extend(self._revision())
        self.turn_order += 1
        self._words, self._pending = [], []
        self._loud_ms, self._word_start, self._silent_ms = 0.0, None, 0.0
        self._in_part, self._utterance_from = False, 0
        return out

    def _revision(self) -> list[dict[str, Any]]:
        """The ending turn's relabel: sent now (revision interval set) or kept for Terminate."""
        if not self.config.speaker_labels or self._revised in (None, self._speaker):
            return []
        label = self._revised
        assert label is not None
        item = {
            "turn_order": self.turn_order,
            "speaker_label": label,
            "words": [
                self._word_dict(w, formatted=True, final=True, speaker=label) for w in self._words
            ],
        }
        if self.config.revision_interval_ms is not None:
            return [{"type": "SpeakerRevision", "revisions": [item]}]
        self._revisions.append(item)
        return []

    def final_revisions(self) -> list[dict[str, Any]]:
        """After Terminate (and the last turn's end): one `SpeakerRevision` naming every turn
        relabelled since the last one, or nothing."""
        if not self._revisions:
            return []
        revisions, self._revisions = self._revisions, []
        return [{"type": "SpeakerRevision", "revisions": revisions}]
