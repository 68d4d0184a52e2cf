"""Local JSON repair for ``post_processing_steps: [{"type": "json-repair"}]``.

The gateway repairs model output server-side; OpenAI-compatible servers (and streams, which
the gateway cannot repair before sending) do not. When a request asks for json-repair, the
client repairs message content and tool-call arguments that are not valid JSON using the
``json_repair`` library. Valid JSON is never touched; text that cannot be repaired into
anything is left as it was (the caller still sees what the model said).
"""

from __future__ import annotations

from typing import Any

import json_repair
import orjson

from gateway_client.assemble import StreamResult
from gateway_client.models import ChatCompletion

__all__ = ["repair_completion", "repair_json_text", "repair_stream_result", "wants_json_repair"]


def wants_json_repair(body: dict[str, Any]) -> bool:
    """True when the wire body asks for the json-repair post-processing step."""
    steps = body.get("post_processing_steps") or ()
    return any(isinstance(s, dict) and s.get("type") == "json-repair" for s in steps)


def repair_json_text(text: str | None) -> str | None:
    """Return ``text`` if it is valid JSON, else its repaired JSON form (or ``text`` unchanged)."""
    if not text:
        return text
    try:
        orjson.loads(text)
        return text
    except orjson.JSONDecodeError:
        pass
    repaired = json_repair.repair_json(text, return_objects=False)
    if not isinstance(repaired, str) or not repaired or repaired == '""':
        return text
    return repaired


def repair_completion(completion: ChatCompletion) -> ChatCompletion:
    """Repair content and tool-call arguments of every choice, in place; returns it."""
    for choice in completion.choices:
        msg = choice.message
        msg.content = repair_json_text(msg.content)
        for call in msg.tool_calls or ():
            call.function.arguments = repair_json_text(call.function.arguments) or ""
    return completion


def repair_stream_result(result: StreamResult) -> StreamResult:
    """Repair content and tool-call arguments of an assembled stream, in place; returns it."""
    for choice in result.choices:
        choice.text = repair_json_text(choice.text) or ""
        for call in choice.tool_calls:
            call.function.arguments = repair_json_text(call.function.arguments) or ""
    return result
