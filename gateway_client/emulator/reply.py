"""What the emulated model says, and the JSON shapes that carry it. Pure: no I/O, no clock.

:func:`make_reply` is the deterministic "model": it echoes the last user message, calls a
tool when asked, answers after a tool result, or fills a ``response_format`` JSON schema.
:func:`completion_envelope` and :func:`stream_chunks` wrap a :class:`Reply` in the gateway's
non-streaming envelope or in OpenAI-format ``chat.completion.chunk`` objects.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import json_repair

from gateway_client.emulator.models import ModelInfo
from gateway_client.emulator.schema import example_value
from gateway_client.emulator.validate import tool_names

TRANSCRIPT_TAG = "{{ transcript }}"  # exact spacing: other spellings are left alone
FILLER = "and here is some more deterministic filler text from the gateway emulator".split()
_PIECE = re.compile(r"\s*\S+|\s+$")  # a word with the whitespace before it
_ARG_PIECE = 8  # characters of tool-call arguments per streamed fragment
_TOOL_HINTS = ("weather", "call")


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as text (the wire carries a string)


@dataclass(slots=True)
class Reply:
    """One completion. ``pieces`` joined is the content; each piece is one streamed chunk."""

    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def content(self) -> str | None:
        return "".join(self.pieces) if not self.tool_calls else None

    @property
    def completion_tokens(self) -> int:
        if self.tool_calls:
            return sum(math.ceil((len(c.name) + len(c.arguments)) / 4) for c in self.tool_calls)
        return len(self.pieces)


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation: ``messages``, or ``prompt`` as a single user message."""
    if isinstance(body.get("prompt"), str):
        return [{"role": "user", "content": body["prompt"]}]
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def substitute_transcript(messages: list[dict[str, Any]], transcript: str) -> list[dict[str, Any]]:
    """Replace the first ``{{ transcript }}`` in the first message holding one (string content).

    Returns a new list; the input is not changed. Text parts count as content too.
    """
    out = [dict(m) for m in messages]
    for msg in out:
        content = msg.get("content")
        if isinstance(content, str) and TRANSCRIPT_TAG in content:
            msg["content"] = content.replace(TRANSCRIPT_TAG, transcript, 1)
            return out
        if isinstance(content, list):
            for i, part in enumerate(content):
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str) and TRANSCRIPT_TAG in text:
                    parts = list(content)
                    parts[i] = {**part, "text": text.replace(TRANSCRIPT_TAG, transcript, 1)}
                    msg["content"] = parts
                    return out
    return out


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A deterministic prompt-size estimate: 4 characters a token plus 3 per message."""
    return max(1, sum(math.ceil(len(message_text(m)) / 4) + 3 for m in messages))


def split_pieces(text: str) -> list[str]:
    """Split into streamable words; each keeps the whitespace before it, so joining is exact."""
    return _PIECE.findall(text) or [""]


def make_reply(
    body: dict[str, Any],
    messages: list[dict[str, Any]],
    info: ModelInfo,
    *,
    reply_words: int | None = None,
    broken_json: str | None = None,
) -> Reply:
    """The deterministic answer of ``info``'s model to ``body`` (with ``messages`` resolved).

    ``broken_json`` ("1" or "unrepairable") makes the model emit damaged JSON in its content
    and tool arguments, for exercising the ``json-repair`` post-processing step.
    """
    prompt_tokens = estimate_tokens(messages)
    last = messages[-1] if messages else {}
    tool = None if last.get("role") == "tool" else _chosen_tool(body, messages)
    if tool is not None:
        name, schema = tool
        user_text = _last_user_text(messages)
        args = json.dumps(example_value(schema, user_text or name))
        if broken_json:
            args = args[:-1] if broken_json != "unrepairable" else "<<" + args
        digest = hashlib.sha256(f"{info.id}\n{name}\n{args}".encode()).hexdigest()[:24]
        call = ToolCall(id=f"call_{digest}", name=name, arguments=args)
        reason = "tool_use" if info.is_claude else "tool_calls"
        return Reply([], reason, prompt_tokens, [call])
    text = _reply_text(body, messages)
    if broken_json == "unrepairable":
        text = "<<< " + text
    elif broken_json:
        text = text[:-1] if _json_schema(body) else '{"reply": ' + json.dumps(text)[:-1]
    pieces = split_pieces(text)
    words = sum(1 for p in pieces if p.strip())
    if reply_words is not None and words < reply_words:
        pieces += [" " + FILLER[i % len(FILLER)] for i in range(reply_words - words)]
    return Reply(pieces, "end_turn" if info.is_claude else "stop", prompt_tokens)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            text = message_text(msg)
            name = msg.get("name")
            return text if not isinstance(name, str) else f"{name}: {text}"
    return ""


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", {}).get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _reply_text(body: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    last = messages[-1] if messages else {}
    schema = _json_schema(body)
    if last.get("role") == "tool":
        result = message_text(last)
        text = f"The {_tool_name_for(messages, last)} tool returned: {result}"
    else:
        text = f"You said: {_last_user_text(messages)}"
    if schema is not None:
        return json.dumps(example_value(schema, text))
    return text


def _tool_name_for(messages: list[dict[str, Any]], tool_message: dict[str, Any]) -> str:
    wanted = tool_message.get("tool_call_id")
    for msg in messages:
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == wanted:
                name = (call.get("function") or {}).get("name")
                if isinstance(name, str):
                    return name
    return "requested"


def _chosen_tool(
    body: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """(name, parameters schema) of the function to call, or None for a text answer."""
    names = tool_names(body)
    choice = body.get("tool_choice")
    if not names or choice == "none":
        return None
    schemas = {
        t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
        for t in body["tools"]
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return (name, schemas[name]) if isinstance(name, str) and name in schemas else None
    text = _last_user_text(messages).lower()
    for name in names:
        if name.lower() in text or name.replace("_", " ").lower() in text:
            return name, schemas[name]
    if choice == "required" or any(hint in text for hint in _TOOL_HINTS):
        name = next((n for n in names if any(h in n.lower() for h in _TOOL_HINTS)), names[0])
        return name, schemas[name]
    return None


def repair_reply(reply: Reply) -> Reply | None:
    """Apply the ``json-repair`` step to content and tool arguments; None if unrepairable.

    Content that already parses as JSON is left byte for byte; damaged JSON is rewritten as
    the repaired document. Anything that does not repair to an object or array is
    unrepairable (the gateway then answers 500 rather than pass the raw text on).
    """
    calls = []
    for call in reply.tool_calls:
        fixed = _repair(call.arguments)
        if fixed is None:
            return None
        calls.append(ToolCall(call.id, call.name, fixed))
    pieces = reply.pieces
    if not reply.tool_calls:
        fixed = _repair("".join(reply.pieces))
        if fixed is None:
            return None
        pieces = split_pieces(fixed)
    return Reply(pieces, reply.finish_reason, reply.prompt_tokens, calls)


def _repair(text: str) -> str | None:
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    value = json_repair.repair_json(text, return_objects=True)
    return json.dumps(value) if isinstance(value, dict | list) and value else None


def usage(reply: Reply, *, both_names: bool) -> dict[str, Any]:
    """The usage object. ``both_names`` adds ``input_tokens``/``output_tokens`` (envelope only:
    the stream forwards the provider's own usage chunk, which has only the OpenAI names)."""
    out: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if both_names:
        out["input_tokens"] = reply.prompt_tokens
        out["output_tokens"] = reply.completion_tokens
    return out


def _wire_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in reply.tool_calls
    ]


def completion_envelope(
    reply: Reply,
    *,
    request_id: str,
    completion_id: str,
    model: str,
    created: int,
    request_echo: dict[str, Any],
    response_time_ns: int,
) -> dict[str, Any]:
    """The non-streaming answer: gateway fields plus OpenAI's ``id/object/created/model``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = _wire_calls(reply)
    return {
        "request_id": request_id,
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "request": request_echo,
        "usage": usage(reply, both_names=True),
        "http_status_code": 200,
        "response_time": response_time_ns,
        "llm_status_code": 200,
    }


def stream_chunks(
    reply: Reply, *, request_id: str, completion_id: str, model: str, created: int
) -> list[dict[str, Any]]:
    """Every chunk of the stream, in order: role, content words or tool-call deltas, finish,
    usage. The first chunk also carries the gateway's ``request_id``."""
    head = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    chunks: list[dict[str, Any]] = []
    if reply.tool_calls:
        for index, call in enumerate(reply.tool_calls):
            opening = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [opening]}
            if index == 0:
                delta = {"role": "assistant", "content": None, **delta}
            chunks.append(chunk(delta))
            for start in range(0, len(call.arguments), _ARG_PIECE):
                fragment = call.arguments[start : start + _ARG_PIECE]
                chunks.append(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                )
    else:
        chunks.append(chunk({"role": "assistant", "content": ""}))
        chunks.extend(chunk({"content": piece}) for piece in reply.pieces if piece)
    chunks.append(chunk({}, reply.finish_reason))
    chunks.append({**head, "choices": [], "usage": usage(reply, both_names=False)})
    chunks[0] = {**chunks[0], "request_id": request_id}
    return chunks
