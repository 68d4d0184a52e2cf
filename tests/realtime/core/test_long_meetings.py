"""Long meetings in the pure core: speakers, SpeakerRevision, the incremental summary and its
cadence (PROTOCOL.md "Long conversations"). Plain calls, no event loop: the test plays the
adapter's part (streams, timers)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from realtime.core.config import SessionConfig
from realtime.core.context import Conversation, speaker_line
from realtime.core.inbound import (
    ProtocolError,
    ResponseCreate,
    SpeakerRevision,
    TurnMessage,
    parse_client_frame,
)
from realtime.core.replies import Completion
from realtime.core.session import Publish, SendTo, SessionCore, StartStream

HISTORY_PROMPT = "Transcript:\n{{history}}"


def new_core(**overrides: Any) -> SessionCore:
    counter = itertools.count(1)
    config = SessionConfig.from_defaults(model="m", **overrides)
    return SessionCore("s_test", config, new_id=lambda prefix: f"{prefix}{next(counter)}")


def frame(**fields: Any) -> Any:
    return parse_client_frame(orjson.dumps(fields))


def final(order: int, text: str, speaker: str | None = None) -> Any:
    fields: dict[str, Any] = {
        "type": "Turn",
        "turn_order": order,
        "transcript": text,
        "end_of_turn": True,
        "turn_is_formatted": True,
    }
    if speaker is not None:
        fields["speaker_label"] = speaker
    return frame(**fields)


def starts(outputs: list[Any]) -> list[StartStream]:
    return [o for o in outputs if isinstance(o, StartStream)]


def user_content(start: StartStream) -> str:
    return str(start.body["messages"][-1]["content"])


# ---- parsing ----------------------------------------------------------------------------------


def test_speaker_label_and_speaker_revision_parse():
    m = final(3, "hello", "B")
    assert isinstance(m, TurnMessage) and m.event.speaker == "B"
    assert final(3, "hello").event.speaker is None
    rev = frame(
        type="SpeakerRevision",
        revisions=[
            {
                "turn_order": 3,
                "speaker_label": "B",
                "words": [{"text": "Hello", "speaker": "B", "start": 1200, "end": 1450}],
            },
            {"turn_order": 4, "speaker_label": "A"},
        ],
    )
    assert rev == SpeakerRevision(((3, "B"), (4, "A")))
    for bad in ({"revisions": "x"}, {"revisions": [1]}, {"revisions": [{"turn_order": 1}]}):
        with pytest.raises(ProtocolError) as err:
            frame(type="SpeakerRevision", **bad)
        assert err.value.code == "invalid_event"
    assert frame(type="response.create") == ResponseCreate(None)
    assert frame(type="response.create", reason="end") == ResponseCreate("end")


# ---- speakers in the history and the prompt ---------------------------------------------------


def test_speaker_line_rendering():
    assert speaker_line("hi", "A") == "A: hi"
    assert speaker_line("hi", "UNKNOWN") == "?: hi"
    assert speaker_line("hi", "PENDING") == "?: hi"
    assert speaker_line("hi", None) == "hi"


def test_conversation_keeps_and_relabels_speakers():
    conv = Conversation()
    conv.add_user(0, "hello all", "A")
    conv.add_user(1, "hi", "UNKNOWN")
    conv.add_user(2, "no labels")
    history = conv.history()
    assert history[0]["speaker"] == "A"
    assert "speaker" not in history[1] and "speaker" not in history[2]
    assert conv.relabel(1, "B") and not conv.relabel(9, "C")
    assert conv.history()[1]["speaker"] == "B"
    cfg = SessionConfig(instructions="", prompt=HISTORY_PROMPT)
    content = conv.build_messages(cfg, 2)[-1]["content"]
    assert content == "Transcript:\nA: hello all\nB: hi\nno labels"


def test_turn_speakers_reach_the_prompt_and_revisions_relabel_the_next_request():
    core = new_core(prompt=HISTORY_PROMPT, instructions="", on_new_turn="keep")
    out = core.on_message(1, final(0, "welcome everyone", "A"), 0.0)
    assert user_content(starts(out)[0]) == "Transcript:\nA: welcome everyone"
    out = core.on_message(1, final(1, "thanks", "UNKNOWN"), 1.0)
    assert user_content(starts(out)[0]) == "Transcript:\nA: welcome everyone\n?: thanks"
    revision = frame(
        type="SpeakerRevision",
        revisions=[
            {"turn_order": 0, "speaker_label": "C"},
            {"turn_order": 1, "speaker_label": "B"},
        ],
    )
    assert core.on_message(1, revision, 2.0) == []
    out = core.on_message(1, final(2, "let us start", "A"), 3.0)
    assert user_content(starts(out)[0]) == (
        "Transcript:\nC: welcome everyone\nB: thanks\nA: let us start"
    )
    joined = core.join(2, "viewer")[0]
    assert isinstance(joined, SendTo)
    history = joined.message.fields["history"]  # type: ignore[index]
    assert [h.get("speaker") for h in history if h["role"] == "user"] == ["C", "B", "A"]


def test_a_revision_before_the_turn_fires_is_kept_for_it():
    core = new_core(prompt=HISTORY_PROMPT, instructions="")
    revision = frame(type="SpeakerRevision", revisions=[{"turn_order": 0, "speaker_label": "B"}])
    core.on_message(1, revision, 0.0)
    out = core.on_message(1, final(0, "hello", "A"), 0.1)  # the turn's own label is newer
    assert user_content(starts(out)[0]) == "Transcript:\nA: hello"
    core.on_message(1, revision, 0.2)
    out = core.on_message(1, final(1, "next"), 0.3)
    assert user_content(starts(out)[0]) == "Transcript:\nB: hello\nnext"


def test_done_reply_keeps_speakers_out_of_assistant_lines():
    core = new_core(prompt=HISTORY_PROMPT, instructions="", on_new_turn="keep")
    out = core.on_message(1, final(0, "hello", "A"), 0.0)
    rid = starts(out)[0].response_id
    core.on_delta(rid, "reply", 0.1)
    out = core.on_done(rid, Completion("stop", None, None, None, None), 0.2)
    assert any(isinstance(o, Publish) and o.message.type == "response.done" for o in out)
    out = core.on_message(1, final(1, "bye", "B"), 0.3)
    assert user_content(starts(out)[0]) == "Transcript:\nA: hello\nB: bye"
