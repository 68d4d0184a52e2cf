"""Request validation, response envelopes, chunk views, error bodies and local json-repair."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway_client.assemble import ChunkAssembler
from gateway_client.errors import (
    AuthenticationError,
    BadRequestError,
    HTTPStatusError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServerError,
    error_for_status,
    parse_error_body,
    scrub,
)
from gateway_client.models import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    completion_to_chunk,
    request_dict,
    validate_request,
)
from gateway_client.repair import (
    repair_completion,
    repair_json_text,
    repair_stream_result,
    wants_json_repair,
)

USER = [{"role": "user", "content": "hi"}]


def ok(**fields: Any) -> dict[str, Any]:
    return request_dict(validate_request({"model": "gpt-4.1", "messages": USER, **fields}))


# ------------------------------------------------------------------ request validation


def test_full_request_round_trips_with_extensions_and_unknown_fields() -> None:
    body = {
        "model": "anthropic/claude-sonnet-4-6",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}], "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
        "tools": [
            {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "w"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True},
        },
        "fallbacks": [{"model": "gpt-4.1", "temperature": 0.5}],
        "fallback_config": {"depth": 2, "retry": False},
        "post_processing_steps": [{"type": "json-repair"}],
        "transcript_id": "t-1",
        "model_region": "global",
        "reasoning": {"effort": "low"},
        "cache_control": {"type": "ephemeral"},
        "brand_new_field": {"nested": [1, 2]},
    }
    wire = request_dict(validate_request(body))
    assert wire == body  # nothing added, nothing lost, aliases restored ("schema")
    assert validate_request(body).wants_json_repair()


def test_prompt_instead_of_messages_and_async_alias() -> None:
    wire = request_dict(validate_request({"model": "gpt-4.1", "prompt": "hi", "async": True}))
    assert wire == {"model": "gpt-4.1", "prompt": "hi", "async": True}


def test_typed_model_is_accepted_too() -> None:
    req = ChatRequest(model="gpt-4.1", prompt="x", max_tokens=5)
    assert request_dict(validate_request(req)) == {
        "model": "gpt-4.1",
        "prompt": "x",
        "max_tokens": 5,
    }


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": "gpt 4"}, "model: model id must not contain whitespace"),
        ({"messages": None}, "messages: one of messages or prompt is required"),
        ({"messages": []}, "messages: must not be empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "assistant"}]}, "needs content or tool_calls"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "needs 'text'"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "needs a 'json_schema'"),
        ({"fallbacks": [{"temperature": 1}]}, "fallbacks.0.model"),
        ({"fallback_config": {"depth": 3}}, "fallback_config.depth"),
        ({"post_processing_steps": [{"type": "spellcheck"}]}, "post_processing_steps.0.type"),
        ({"model_region": "us"}, "model_region"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"fallback_config": {"depth": 1.5}}, "fallback_config.depth"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, Any], needle: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4.1", "messages": USER, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequestError) as info:
        validate_request(body)
    assert str(info.value).startswith("invalid request: ")
    assert needle in str(info.value)
    assert info.value.status is None


def test_non_mapping_body_is_rejected() -> None:
    with pytest.raises(InvalidRequestError):
        validate_request(["not", "a", "dict"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ responses


GATEWAY_ENVELOPE = {
    "request_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "SF"}'},
                    }
                ],
            },
            "finish_reason": "tool_use",
        }
    ],
    "request": {"model": "claude-sonnet-4-6", "max_tokens": 123},
    "usage": {
        "input_tokens": 12,
        "output_tokens": 8,
        "total_tokens": 20,
        "prompt_tokens_details": {},
    },
    "http_status_code": 200,
    "response_time": 275510459,
    "llm_status_code": 200,
    "surprise": True,
}


def test_gateway_envelope_parses_and_keeps_unknown_fields() -> None:
    c = ChatCompletion.model_validate(GATEWAY_ENVELOPE)
    assert c.request_id == "3c90c3cc-0d44-4b50-8888-8dd25736052a"
    assert c.tool_calls[0].function.name == "get_weather"
    assert json.loads(c.tool_calls[0].function.arguments) == {"location": "SF"}
    assert c.finish_reason == "tool_use"
    assert c.usage is not None and (c.usage.inputs, c.usage.outputs) == (12, 8)
    assert c.response_time == 275510459 and c.llm_status_code == 200
    dumped = c.model_dump(exclude_unset=True)
    assert dumped["surprise"] is True
    assert dumped["usage"]["prompt_tokens_details"] == {}


def test_openai_usage_names_and_sibling_tool_calls() -> None:
    c = ChatCompletion.model_validate(
        {
            "choices": [
                {
                    "message": {"role": "assistant", "content": None},
                    "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{}"}}],
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    )
    assert c.tool_calls[0].id == "x"  # Mar-2026 docs shape: tool_calls beside message
    assert c.usage is not None and (c.usage.inputs, c.usage.outputs) == (3, 4)
    assert c.text == ""


# ------------------------------------------------------------------ chunks


def test_chat_chunk_attribute_access() -> None:
    raw = {
        "id": "chatcmpl-1",
        "model": "gpt-4.1",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": "Hi",
                    "tool_calls": [
                        {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
                "finish_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 1},
    }
    chunk = ChatChunk(raw)
    assert chunk.raw is raw
    assert (chunk.id, chunk.model) == ("chatcmpl-1", "gpt-4.1")
    choice = chunk.choices[0]
    assert choice.delta.content == "Hi" and choice.delta.role == "assistant"
    assert choice.finish_reason is None and choice.index == 0
    assert choice.delta.tool_calls[0].function.arguments == "{"
    assert choice.delta.refusal is None  # absent optional fields read as None
    assert chunk.usage.prompt_tokens == 1
    assert chunk.text == "Hi"
    assert ChatChunk({"choices": []}).usage is None
    with pytest.raises(AttributeError):
        _ = chunk.__deepcopy_hook__  # dunder-like probes are not swallowed


def test_plain_completion_becomes_one_equivalent_chunk() -> None:
    chunk = completion_to_chunk(GATEWAY_ENVELOPE)
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["request_id"] == GATEWAY_ENVELOPE["request_id"]
    asm = ChunkAssembler()
    asm.add(chunk)
    result = asm.result()
    (call,) = result.tool_calls
    assert (call.id, call.name, call.index) == ("call_abc123", "get_weather", 0)
    assert result.finish_reason == "tool_use"
    assert result.usage == GATEWAY_ENVELOPE["usage"]


# ------------------------------------------------------------------ error bodies


def test_three_error_body_generations() -> None:
    nested = parse_error_body(
        b'{"error": {"code": 400, "message": "Invalid request: missing model", "metadata": {}}}'
    )
    assert (nested["message"], nested["code"], nested["status"]) == (
        "Invalid request: missing model",
        400,
        400,
    )
    flat = parse_error_body(
        orjson.dumps(
            {
                "code": 400,
                "message": "invalid request body",
                "request_id": "rid-2",
                "metadata": {"errors": ["one of messages or prompt required"]},
            }
        )
    )
    assert flat["message"] == "invalid request body"
    assert flat["errors"] == ["one of messages or prompt required"]
    assert flat["request_id"] == "rid-2"
    auth = parse_error_body(
        b'{"error": "Authentication error, API token missing/invalid", "status": "error",'
        b' "request_id": "rid-3"}'
    )
    assert auth["message"] == "Authentication error, API token missing/invalid"
    assert auth["request_id"] == "rid-3"
    assert parse_error_body(b"<html>bad gateway</html>")["message"] == "<html>bad gateway</html>"
    assert parse_error_body(b"")["message"] is None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (418, HTTPStatusError),
    ],
)
def test_error_for_status_classes(status: int, cls: type[Exception]) -> None:
    err = error_for_status(status, b'{"message": "m"}', request_id="hdr-rid", retry_after=2.0)
    assert type(err) is cls
    assert (err.status, err.request_id, err.retry_after) == (status, "hdr-rid", 2.0)


def test_error_for_status_lists_field_errors_and_scrubs_secrets() -> None:
    key = "sk-very-secret-key-123"
    body = orjson.dumps(
        {"code": 400, "message": f"bad header {key}", "metadata": {"errors": ["a: wrong", key]}}
    )
    err = error_for_status(400, body, secrets=[key])
    assert key not in str(err) and key not in repr(err.details)
    assert "a: wrong" in str(err)
    assert scrub("x sk-very-secret-key-123 y", [key, None]) == "x *** y"


# ------------------------------------------------------------------ json-repair


def test_repair_json_text() -> None:
    assert repair_json_text('{"a": 1}') == '{"a": 1}'  # valid JSON untouched
    assert json.loads(repair_json_text('{"a": 1,') or "") == {"a": 1}
    assert json.loads(repair_json_text("{'a': 'b'}") or "") == {"a": "b"}
    assert repair_json_text(None) is None
    assert repair_json_text("") == ""


def test_repair_completion_and_stream_result() -> None:
    broken = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": '{"answer": 42',
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{'x': 1"}}],
                }
            }
        ]
    }
    c = repair_completion(ChatCompletion.model_validate(broken))
    assert json.loads(c.text) == {"answer": 42}
    assert json.loads(c.tool_calls[0].function.arguments) == {"x": 1}
    asm = ChunkAssembler()
    asm.add(completion_to_chunk(broken))
    r = repair_stream_result(asm.result())
    assert json.loads(r.text) == {"answer": 42}
    assert json.loads(r.tool_calls[0].arguments) == {"x": 1}
    assert wants_json_repair({"post_processing_steps": [{"type": "json-repair"}]})
    assert not wants_json_repair({"post_processing_steps": []})
