"""Client frames: every message type, every error code, and hostile input, with plain calls."""

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from realtime.core.inbound import (
    MAX_FRAME_DEPTH,
    MAX_SAFE_INT,
    Begin,
    Ignored,
    ProtocolError,
    ResponseCancel,
    ResponseTruncate,
    SessionUpdate,
    SpeechStarted,
    Termination,
    TurnMessage,
    parse_client_frame,
    too_deep,
)
from realtime.core.turns import TurnEvent


def frame(**fields: object) -> bytes:
    return orjson.dumps(fields)


def refused(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(data)
    assert str(info.value) == info.value.message
    return info.value


# ---- every message type -------------------------------------------------------------------


def test_turn_with_words_counts_the_words():
    msg = parse_client_frame(
        frame(
            type="Turn",
            turn_order=3,
            turn_is_formatted=False,
            end_of_turn=True,
            transcript="what is the capital of france",
            utterance="",
            end_of_turn_confidence=0.93,
            words=[{"text": "what"}, {"text": "is"}],
        )
    )
    assert msg == TurnMessage(
        TurnEvent(
            turn_order=3,
            transcript="what is the capital of france",
            end_of_turn=True,
            turn_is_formatted=False,
            utterance="",
            word_count=2,
        )
    )


def test_turn_defaults_and_word_count_from_the_transcript():
    msg = parse_client_frame('{"type": "Turn", "turn_order": 0, "transcript": "a b  c"}')
    assert isinstance(msg, TurnMessage)
    assert msg.event == TurnEvent(0, "a b  c", False, False, "", 3)
    nulls = parse_client_frame(
        frame(type="Turn", turn_order=1, transcript="x", end_of_turn=None, words=None)
    )
    assert isinstance(nulls, TurnMessage) and not nulls.event.end_of_turn


def test_turn_order_range_is_0_to_2_53_minus_1():
    for order in (0, MAX_SAFE_INT):
        msg = parse_client_frame(frame(type="Turn", turn_order=order, transcript=""))
        assert isinstance(msg, TurnMessage) and msg.event.turn_order == order
    for order in (-1, MAX_SAFE_INT + 1, 2**63, -(2**63), 2**64 - 1):
        err = refused(frame(type="Turn", turn_order=order, transcript=""))
        assert (err.code, err.message) == (
            "invalid_event",
            "Turn: field 'turn_order' must be from 0 to 2^53-1",
        )


def test_an_integer_beyond_64_bits_in_the_text_is_not_an_integer():
    # orjson reads it as a float: a wrong type, not a wrong range.
    err = refused(
        '{"type": "Turn", "turn_order": 123456789012345678901234567890, "transcript": ""}'
    )
    assert err.code == "invalid_event"
    assert err.message == "Turn: field 'turn_order' must be an integer, got a number"


def test_speech_started_timestamp_is_optional_and_in_range():
    assert parse_client_frame(frame(type="SpeechStarted", timestamp=1920)) == SpeechStarted(1920)
    assert parse_client_frame(frame(type="SpeechStarted")) == SpeechStarted(None)
    for ts in (-5, MAX_SAFE_INT + 1):
        err = refused(frame(type="SpeechStarted", timestamp=ts))
        assert (err.code, err.message) == (
            "invalid_event",
            "SpeechStarted: field 'timestamp' must be from 0 to 2^53-1",
        )
    assert refused(frame(type="SpeechStarted", timestamp=1.5)).code == "invalid_event"


def test_session_update_carries_the_patch_unchecked():
    patch = {"model": "m", "tools": [{"type": "function"}], "voice": 1}
    assert parse_client_frame(frame(type="session.update", session=patch)) == SessionUpdate(patch)
    err = refused(frame(type="session.update"))
    assert (err.code, err.message) == ("invalid_event", "session.update: missing field 'session'")
    err = refused(frame(type="session.update", session=[]))
    assert err.message == "session.update: field 'session' must be an object, got an array"


def test_response_messages():
    assert parse_client_frame(frame(type="response.cancel")) == ResponseCancel(None)
    assert parse_client_frame(frame(type="response.cancel", response_id="r_1")) == ResponseCancel(
        "r_1"
    )
    assert parse_client_frame(
        frame(type="response.truncate", response_id="r_1", text="Paris is")
    ) == ResponseTruncate("r_1", "Paris is")
    err = refused(frame(type="response.truncate", response_id="r_1"))
    assert err.message == "response.truncate: missing field 'text'"
    assert refused(frame(type="response.cancel", response_id=7)).code == "invalid_event"


def test_begin_termination_and_passive_assemblyai_messages():
    assert parse_client_frame(frame(type="Begin", id="s1", expires_at=1)) == Begin("s1")
    assert parse_client_frame(frame(type="Begin")) == Begin(None)
    assert parse_client_frame(frame(type="Termination", audio_duration_seconds=3)) == Termination()
    for kind in (
        "Heartbeat",
        "Warning",
        "Silence",
        "LLMGatewayResponse",
        "Error",
    ):
        assert parse_client_frame(frame(type=kind, x={"y": [1]})) == Ignored(kind)


# ---- every error code ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"{", b"not json", b'{"type": "Turn",}', b"\xff\xfe", '"\\ud800"', b"NaN"]
)
def test_malformed_json_is_invalid_json(data):
    err = refused(data)
    assert err.code == "invalid_json"
    assert err.message.startswith("frame is not valid JSON: ")


@pytest.mark.parametrize("data", [b"[]", b'"Turn"', b"3", b"null"])
def test_a_frame_that_is_not_an_object_is_invalid_event(data):
    err = refused(data)
    assert (err.code, err.message) == (
        "invalid_event",
        "a frame must be a JSON object with a string 'type'",
    )


@pytest.mark.parametrize("data", [b"{}", b'{"type": null}', b'{"type": 3}', b'{"type": ["Turn"]}'])
def test_a_missing_or_non_string_type_is_unknown_type(data):
    err = refused(data)
    assert (err.code, err.message) == ("unknown_type", "a frame must have a string 'type'")


def test_an_unknown_type_is_named_and_cut_short():
    err = refused(frame(type="input_audio_buffer.append"))
    assert (err.code, err.message) == (
        "unknown_type",
        "unknown message type 'input_audio_buffer.append'",
    )
    assert refused(frame(type="x" * 10_000)).message == f"unknown message type '{'x' * 64}'"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transcript": "hi"}, "Turn: missing field 'turn_order'"),
        ({"turn_order": 1}, "Turn: missing field 'transcript'"),
        ({"turn_order": True, "transcript": ""}, "Turn: field 'turn_order' must be an integer, got a boolean"),
        ({"turn_order": "1", "transcript": ""}, "Turn: field 'turn_order' must be an integer, got a string"),
        ({"turn_order": 1.0, "transcript": ""}, "Turn: field 'turn_order' must be an integer, got a number"),
        ({"turn_order": 1, "transcript": 5}, "Turn: field 'transcript' must be a string, got a number"),
        ({"turn_order": 1, "transcript": "", "end_of_turn": 1}, "Turn: field 'end_of_turn' must be a boolean, got a number"),
        ({"turn_order": 1, "transcript": "", "words": {}}, "Turn: field 'words' must be an array, got an object"),
        ({"turn_order": 1, "transcript": "", "utterance": []}, "Turn: field 'utterance' must be a string, got an array"),
    ],
)  # fmt: skip
def test_wrong_turn_fields_are_invalid_event(fields, message):
    err = refused(frame(type="Turn", **fields))
    assert (err.code, err.message) == ("invalid_event", message)


# ---- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [b"[", b'{"a":'])
@pytest.mark.parametrize("depth", [MAX_FRAME_DEPTH + 1, 100_000])
def test_deeper_than_1024_levels_is_invalid_json(kind, depth):
    # orjson >= 3.9.15 refuses such input; older ones overflow the C stack and crash.
    closing = b"]" if kind == b"[" else b"}"
    data = b'{"type": "session.update", "session": ' + kind * depth + b"1" + closing * depth + b"}"
    err = refused(data)
    assert (err.code, err.message) == ("invalid_json", "frame is nested deeper than 1024 levels")
    assert refused(data.decode()).code == "invalid_json"  # a text frame as str
    assert refused(kind * depth).code == "invalid_json"  # unclosed: never valid anyway


def test_too_deep_is_usable_on_any_json_text_before_orjson():
    assert not too_deep(b"[" * MAX_FRAME_DEPTH + b"]" * MAX_FRAME_DEPTH)
    assert too_deep(b"[" * (MAX_FRAME_DEPTH + 1))
    assert too_deep("{" * (MAX_FRAME_DEPTH + 1))
    assert not too_deep('"' + "[" * 5000 + '"')  # inside a string
    assert not too_deep(b"[]" * 5000)  # many brackets, shallow


def test_a_frame_of_one_mib_of_brackets_is_invalid_json():
    err = refused(b"[" * (1 << 20))
    assert (err.code, err.message) == ("invalid_json", "frame is nested deeper than 1024 levels")


def test_1024_levels_and_brackets_inside_strings_are_fine():
    deep = b"[" * (MAX_FRAME_DEPTH - 2) + b"]" * (MAX_FRAME_DEPTH - 2)
    msg = parse_client_frame(b'{"type": "session.update", "session": {"x": ' + deep + b"}}")
    assert isinstance(msg, SessionUpdate)
    text = "[{" * 100_000 + '\\"\\\\'  # brackets, an escaped quote and backslash, in a string
    msg = parse_client_frame(frame(type="Turn", turn_order=1, transcript=text))
    assert isinstance(msg, TurnMessage) and msg.event.transcript == text


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = [
    "type", "turn_order", "transcript", "end_of_turn", "turn_is_formatted", "utterance",
    "words", "timestamp", "session", "response_id", "text", "id",
]  # fmt: skip
TYPES = st.sampled_from(
    ["Turn", "SpeechStarted", "session.update", "response.cancel", "response.truncate", "Begin",
     "Termination", "Heartbeat", "Error", "nope", ""]
)  # fmt: skip
FRAMES = st.builds(
    lambda kind, fields: {**fields, "type": kind} if kind is not None else fields,
    st.none() | TYPES,
    st.dictionaries(st.sampled_from(FIELD_NAMES), JSON, max_size=6),
)


def parse_or_protocol_error(data: str | bytes) -> None:
    try:
        parse_client_frame(data)
    except ProtocolError as exc:
        assert exc.code in {"invalid_json", "unknown_type", "invalid_event"}


@settings(max_examples=300, deadline=None)
@given(obj=FRAMES | JSON)
def test_any_json_gives_a_message_or_a_protocol_error(obj):
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: send it as text
        data = repr(obj).encode()
    parse_or_protocol_error(data)
    parse_or_protocol_error(data.decode("utf-8", "replace"))


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
@example(data=b"[" * 2000)
@example(data='{"type": "Turn", "turn_order": 1, "transcript": "\\ud800"}')
@example(data='"\ud800"')
def test_any_bytes_give_a_message_or_a_protocol_error(data):
    parse_or_protocol_error(data)
