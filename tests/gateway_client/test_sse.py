"""Pure-core tests: the SSE decoder and the chunk assembler, driven by the recorded corpus.

The corpus is a copy kept in the repository (``tests/fixtures/sse``, see its SOURCES.md); a
missing corpus fails collection, it never skips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_client.assemble import ChunkAssembler, StreamResult
from gateway_client.errors import GatewayError, ProtocolError, StreamError
from gateway_client.sse import DONE, Event, SSEDecoder, parse_chunk

CORPUS = Path(__file__).parents[1] / "fixtures/sse"
FILES = sorted(CORPUS.glob("*.txt"))
if len(FILES) < 15:  # a corpus test never skips: a missing fixture fails collection
    raise FileNotFoundError(f"SSE corpus missing or incomplete at {CORPUS}: {len(FILES)} files")
CORPUS_PARAMS = [pytest.param(p, id=p.stem) for p in FILES]
SMALL_FILES = [pytest.param(p, id=p.stem) for p in FILES if p.stat().st_size < 4_000]


def decode(pieces: list[bytes], **limits: int) -> list[Event]:
    dec = SSEDecoder(**limits)
    events: list[Event] = []
    for piece in pieces:
        events.extend(dec.feed(piece))
    events.extend(dec.close())
    return events


def state(dec: SSEDecoder) -> tuple[object, ...]:
    return tuple(getattr(dec, name) for name in SSEDecoder.__slots__)


def clone(dec: SSEDecoder) -> SSEDecoder:
    """A copy of a decoder's state (faster than deepcopy; the only mutable field is a list)."""
    new = SSEDecoder.__new__(SSEDecoder)
    for name in SSEDecoder.__slots__:
        value = getattr(dec, name)
        setattr(new, name, list(value) if isinstance(value, list) else value)
    return new


def line_ends(data: bytes) -> list[int]:
    return [i + 1 for i, byte in enumerate(data) if byte == 0x0A]


def assemble(data: bytes) -> tuple[StreamResult, GatewayError | None, bool]:
    """Decode + assemble a whole body: (result, error raised in-stream, saw [DONE])."""
    asm = ChunkAssembler()
    for event in decode([data]):
        try:
            payload = parse_chunk(event)
        except GatewayError as exc:
            return asm.result(), exc, False
        if payload is None:
            if event.data == DONE:
                return asm.result(), None, True
            continue
        asm.add(payload)
    return asm.result(), None, False


def oracle_texts(data: bytes) -> dict[int, str]:
    """Independent oracle: stdlib json over 'data: ' lines (the corpus is LF-only)."""
    texts: dict[int, str] = {}
    for line in data.decode().split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        obj = json.loads(line[6:])
        for choice in obj.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                texts[choice.get("index", 0)] = texts.get(choice.get("index", 0), "") + content
    return texts


# ----------------------------------------------------------------- decoder on the corpus


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_events_are_json_or_done(path: Path) -> None:
    data = path.read_bytes()
    events = decode([data])
    assert len(events) == data.count(b"data:")
    for event in events[:-1]:
        assert event.data != DONE
    for event in events:
        if event.data != DONE:
            assert isinstance(json.loads(event.data), dict)


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_every_two_piece_split(path: Path) -> None:
    """Split at every offset k: decoding data[:k] + data[k:] gives the unsplit events.

    Feeding data[:k] as one piece costs O(k), so all offsets would be quadratic (a minute on
    the 67 KB file). Instead, for each k we start from a copy of the reference decoder at the
    last line end a <= k (where its buffer is empty), feed data[a:k] and data[k:b] as two
    pieces, and require the same events and the same decoder state at the next line end b as
    the reference. From equal states, the rest of the body decodes identically.
    """
    data = path.read_bytes()
    ends = [0, *line_ends(data)]
    if ends[-1] != len(data):
        ends.append(len(data))
    reference = decode([data])
    ref_dec = SSEDecoder()
    snapshots = {}  # line end -> (decoder copy, events so far)
    got: list[Event] = []
    prev = 0
    for end in ends:
        got.extend(ref_dec.feed(data[prev:end]))
        prev = end
        snapshots[end] = (clone(ref_dec), len(got))
    got.extend(ref_dec.close())
    assert got == reference
    for i in range(len(ends) - 1):
        a, b = ends[i], ends[i + 1]
        want_dec, want_count = snapshots[b]
        base_dec, base_count = snapshots[a]
        for k in range(a, b + 1):
            dec = clone(base_dec)
            events = dec.feed(data[a:k]) + dec.feed(data[k:b])
            assert reference[base_count : base_count + len(events)] == events, (a, k, b)
            assert base_count + len(events) == want_count
            assert state(dec) == state(want_dec), (a, k, b)


@pytest.mark.parametrize("path", SMALL_FILES)
def test_corpus_two_piece_split_black_box(path: Path) -> None:
    """The literal check on the smaller files: every offset, whole body, public API only."""
    data = path.read_bytes()
    reference = decode([data])
    for k in range(len(data) + 1):
        assert decode([data[:k], data[k:]]) == reference, k


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_one_byte_at_a_time(path: Path) -> None:
    data = path.read_bytes()
    assert decode([data[i : i + 1] for i in range(len(data))]) == decode([data])


@pytest.mark.parametrize("path", CORPUS_PARAMS)
@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_corpus_other_line_endings(path: Path, eol: bytes) -> None:
    data = path.read_bytes()
    converted = data.replace(b"\n", eol)
    assert decode([converted]) == decode([data])
    # Every split that lands between the CR and LF of a CRLF, plus byte-at-a-time.
    if eol == b"\r\n":
        for k in [i + 1 for i in range(len(converted)) if converted[i] == 0x0D][:200]:
            assert decode([converted[:k], converted[k:]]) == decode([data]), k
    assert decode([converted[i : i + 1] for i in range(len(converted))]) == decode([data])


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_with_bom(path: Path) -> None:
    data = path.read_bytes()
    with_bom = b"\xef\xbb\xbf" + data
    assert decode([with_bom]) == decode([data])
    for k in range(1, 4):
        assert decode([with_bom[:k], with_bom[k:]]) == decode([data])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corpus_random_splits(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(FILES))
    body = path.read_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=40)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert decode(pieces) == decode([body])


def test_corpus_keepalive_comments_are_counted() -> None:
    path = CORPUS / "openrouter_keepalive_then_error_chunk.txt"
    dec = SSEDecoder()
    events = dec.feed(path.read_bytes()) + dec.close()
    assert dec.comments == 17
    assert all(not e.data.startswith(":") for e in events)


# ----------------------------------------------------------------- decoder, synthetic

_field_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(_field_text, min_size=1, max_size=3), st.one_of(st.none(), _field_text)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(0, 10_000), max_size=10),
    st.booleans(),
)
def test_generated_streams_round_trip(
    events: list[tuple[list[str], str | None]], eol: bytes, cuts: list[int], comment: bool
) -> None:
    body = b""
    expected = []
    for lines, name in events:
        if comment:
            body += b": keep-alive" + eol
        if name:
            body += b"event: " + name.encode() + eol
        for line in lines:
            body += b"data: " + line.encode() + eol
        body += eol
        expected.append(Event("\n".join(lines), name or "message"))
    cuts = sorted(c % (len(body) + 1) for c in cuts)
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert decode(pieces) == expected


def test_fields_event_id_retry_and_multiline_data() -> None:
    body = (
        b"event: update\nid: 7\nretry: 1500\ndata: a\ndata:b\ndata\n\n"
        b"id: bad\x00id\nretry: soon\nunknown: x\ndata: next\n\n"
    )
    first, second = decode([body])
    assert first == Event("a\nb\n", "update", "7", 1500)
    # id persists when the new one holds NUL; retry ignores non-digits; event type resets.
    assert second == Event("next", "message", "7", 1500)


def test_event_without_data_is_not_dispatched() -> None:
    assert decode([b"event: ping\n\n: comment\n\nid: 3\n\n"]) == []


def test_close_dispatches_unterminated_last_event() -> None:
    assert decode([b"data: [DONE]"]) == [Event(DONE)]
    assert decode([b"data: x\n"]) == [Event("x")]
    assert decode([b""]) == []


def test_cr_at_end_of_piece_then_lf() -> None:
    # "data: a\r" | "\n\r" | "\ndata: b\r\n\r\n": CR/LF pairs split across pieces.
    assert decode([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [Event("a"), Event("b")]
    # A lone CR followed by an LF in a *later* piece (not the next one) is a new line ending.
    assert decode([b"data: a\r", b"\r", b"\n"]) == [Event("a")]


def test_line_limit_single_piece_and_across_pieces() -> None:
    with pytest.raises(ProtocolError, match="line longer"):
        decode([b"data: " + b"x" * 100 + b"\n\n"], max_line_bytes=50)
    dec = SSEDecoder(max_line_bytes=50)
    dec.feed(b"data: " + b"x" * 30)
    with pytest.raises(ProtocolError, match="line longer"):
        dec.feed(b"y" * 30)


def test_event_size_limit() -> None:
    with pytest.raises(ProtocolError, match="event larger"):
        decode([b"data: 0123456789\n" * 10 + b"\n"], max_event_bytes=64)
    # The limit is per event: many small events are fine.
    assert len(decode([b"data: 0123456789\n\n" * 10], max_event_bytes=64)) == 10


def test_utf8_split_inside_a_character() -> None:
    body = "data: héllo 😊\n\n".encode()
    assert decode([body[:9], body[9:]]) == [Event("héllo 😊")]


# ----------------------------------------------------------------- parse_chunk


def test_parse_chunk_done_blank_and_object() -> None:
    assert parse_chunk(Event(DONE)) is None
    assert parse_chunk(Event("  ")) is None
    assert parse_chunk(Event('{"id": "x", "choices": []}')) == {"id": "x", "choices": []}


def test_parse_chunk_malformed_json_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_chunk(Event("{not json"))
    with pytest.raises(ProtocolError, match="not a JSON object"):
        parse_chunk(Event("[1, 2]"))


def test_parse_chunk_error_object_and_error_event() -> None:
    with pytest.raises(StreamError) as info:
        parse_chunk(Event('{"error": {"message": "boom", "code": 500}}'))
    assert info.value.status == 500
    assert "boom" in str(info.value)
    with pytest.raises(StreamError) as info2:
        parse_chunk(Event("upstream went away", event="error"))
    assert "upstream went away" in info2.value.message
    # "error": null is not an error (some servers send it on every chunk).
    assert parse_chunk(Event('{"error": null, "choices": []}')) == {"error": None, "choices": []}


# ----------------------------------------------------------------- assembler on the corpus


def _corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_assembler_text_matches_independent_oracle(path: Path) -> None:
    data = path.read_bytes()
    result, _error, _done = assemble(data)
    texts = oracle_texts(data)
    for choice in result.choices:
        assert choice.text == texts.get(choice.index, "")


def test_assemble_text_stop_usage() -> None:
    result, error, done = assemble(_corpus("openai_text_stop_usage.txt"))
    assert error is None and done
    assert result.text == (
        "I'm unable to provide real-time weather updates. To get the current weather in "
        "San Francisco, I recommend checking a reliable weather website or a weather app."
    )
    assert result.finish_reason == "stop"
    assert result.usage is not None and result.usage["total_tokens"] == 44
    assert result.model == "gpt-4o-2024-08-06"
    assert result.tool_calls == []


def test_assemble_tool_call_args_split() -> None:
    result, error, _ = assemble(_corpus("openai_tool_call_args_split.txt"))
    assert error is None
    (call,) = result.tool_calls
    assert call.id == "call_4XzlGBLtUe9dy3GVNV4jhq7h"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "New York City"}
    assert result.finish_reason == "tool_calls"
    assert result.text == ""


def test_assemble_parallel_tool_calls() -> None:
    result, _, _ = assemble(_corpus("openai_parallel_tool_calls.txt"))
    first, second = result.tool_calls
    assert (first.name, second.name) == ("GetWeatherArgs", "get_stock_price")
    assert json.loads(first.arguments) == {"city": "Edinburgh", "country": "GB", "units": "c"}
    assert json.loads(second.arguments) == {"ticker": "AAPL", "exchange": "NASDAQ"}
    assert first.id != second.id and all(c.id.startswith("call_") for c in result.tool_calls)
    assert result.choices[0].message()["tool_calls"][1]["function"]["name"] == "get_stock_price"


def test_assemble_groq_whole_call_in_one_chunk_and_x_groq_usage() -> None:
    result, error, done = assemble(_corpus("groq_tool_call_whole_in_one_chunk_x_groq_usage.txt"))
    assert error is None and done
    (call,) = result.tool_calls
    assert call.id == "fc_bfb39741-3748-4def-9886-a93fc9c64a90"
    assert call.name == "get_something_by_name"
    assert call.arguments == '{"name":"example"}'
    assert result.usage is not None and result.usage["total_tokens"] == 353
    assert result.reasoning and result.reasoning.startswith("We need to call the function")


def test_assemble_n3_interleaved_choices() -> None:
    result, _, _ = assemble(_corpus("openai_n3_interleaved_choices.txt"))
    assert [c.index for c in result.choices] == [0, 1, 2]
    temps = [json.loads(c.text)["temperature"] for c in result.choices]
    assert temps == [65, 61, 59]
    assert all(c.finish_reason == "stop" for c in result.choices)
    assert result.usage is not None and result.usage["completion_tokens"] == 42


def test_assemble_refusal() -> None:
    result, _, _ = assemble(_corpus("openai_refusal_deltas.txt"))
    assert result.refusal == "I'm sorry, I can't assist with that request."
    assert result.text == ""


def test_assemble_reasoning_content_deepseek() -> None:
    result, _, _ = assemble(_corpus("deepseek_reasoner_reasoning_content.txt"))
    assert result.text == "Hello there! 😊 How can I help you today?"
    assert result.reasoning is not None and result.reasoning.startswith("Hmm, the user just said")
    assert result.usage is not None and result.usage["total_tokens"] == 218


def test_assemble_openrouter_reasoning_and_comments() -> None:
    result, _, _ = assemble(_corpus("openrouter_claude_reasoning_via_google_vertex.txt"))
    assert result.text == "2 + 2 = 4"
    assert result.reasoning == "This is a simple arithmetic question. 2+2 equals 4."


def test_assemble_groq_error_event() -> None:
    result, error, done = assemble(_corpus("groq_event_error_tool_use_failed.txt"))
    assert isinstance(error, StreamError) and not done
    assert error.code == "tool_use_failed"
    assert error.status == 400
    assert "Tool call validation failed" in error.message
    assert result.chunks == 94 and result.finish_reason is None


def test_assemble_keepalive_then_error_chunk() -> None:
    result, error, _ = assemble(_corpus("openrouter_keepalive_then_error_chunk.txt"))
    assert isinstance(error, StreamError)
    assert error.status == 400 and "Token limit reached" in error.message
    assert result.finish_reason == "length" and result.chunks == 3


def test_assemble_azure_empty_first_chunk_and_snowflake_no_finish() -> None:
    azure, _, _ = assemble(_corpus("azure_openai_prompt_filter_first_chunk.txt"))
    assert azure.id == "chatcmpl-DPTBaSsimU1JbOyrWiQNkSSfOPQE7"  # not the first chunk's ""
    assert azure.model == "gpt-4.1-mini-2025-04-14"
    assert azure.text.endswith("trace every step!")
    snow, _, done = assemble(_corpus("snowflake_cortex_claude_openai_compat.txt"))
    assert snow.text == "4" and snow.finish_reason is None and done
    assert snow.refusal is None  # refusal "" on every chunk is not a refusal


def test_assemble_length_and_reasoning_only() -> None:
    one, _, _ = assemble(_corpus("openai_finish_length_max_tokens1.txt"))
    assert (one.text, one.finish_reason) == ('{"', "length")
    nano, _, _ = assemble(_corpus("openai_gpt5nano_reasoning_only_length_obfuscation.txt"))
    assert nano.text == "" and nano.finish_reason == "length"
    assert nano.usage is not None
    assert nano.usage["completion_tokens_details"]["reasoning_tokens"] == 100


# ----------------------------------------------------------------- assembler quirks


def _chunk(*calls: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "choices": [{"index": 0, "delta": {"tool_calls": list(calls)}, "finish_reason": finish}]
    }


def test_blank_first_tool_delta_then_id_and_name_later() -> None:
    asm = ChunkAssembler()
    asm.add(_chunk({"index": 0, "function": {"arguments": ""}}))
    asm.add(_chunk({"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}))
    asm.add(_chunk({"index": 0, "function": {"arguments": '{"a"'}}))
    asm.add(_chunk({"index": 0, "function": {"arguments": ": 1}"}}, finish="tool_calls"))
    (call,) = asm.result().tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')


def test_tool_call_id_nested_under_function_and_missing_index() -> None:
    asm = ChunkAssembler()
    asm.add(_chunk({"function": {"id": "toolu_1", "name": "a", "arguments": "{}"}}))
    asm.add(_chunk({"function": {"id": "toolu_2", "name": "b", "arguments": '{"x"'}}))
    asm.add(_chunk({"function": {"arguments": ": 2}"}}))
    first, second = asm.result().tool_calls
    assert (first.id, first.name, first.arguments) == ("toolu_1", "a", "{}")
    assert (second.id, second.name, second.arguments) == ("toolu_2", "b", '{"x": 2}')


def test_text_so_far_tracks_choice_zero() -> None:
    asm = ChunkAssembler()
    assert asm.text_of(0) == ""
    asm.add({"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    assert asm.text_of(0) == "Hel"
    asm.add({"choices": [{"index": 1, "delta": {"content": "other"}}]})
    asm.add({"choices": [{"index": 0, "delta": {"content": "lo"}}]})
    assert asm.text_of(0) == "Hello" and asm.text_of(1) == "other"
