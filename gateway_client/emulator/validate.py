"""Request validation for the emulated ``POST /v1/chat/completions``. Pure.

:func:`field_errors` lists every failing field at once (the real gateway reports them all in
``metadata.errors``); the unknown-model check is separate because an unknown primary model
hands over to ``fallbacks`` instead of failing. Wording follows the messages the docs quote
("one of messages or prompt required", "model X is not supported", "fallback_config depth
cannot be greater than 2", "model_region can only be set to global"); the rest is ours.
"""

from __future__ import annotations

from typing import Any

from gateway_client.emulator.models import MODELS

MAX_FALLBACK_DEPTH = 2
MAX_STOP = 4
ROLES = frozenset({"user", "assistant", "system", "tool"})
EFFORTS = frozenset({"low", "medium", "high"})


def unsupported_model(model: Any) -> str | None:
    """The "not supported" message for a string model id the catalogue lacks, else None."""
    if isinstance(model, str) and model not in MODELS:
        return f"model {model} is not supported"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_errors(body: dict[str, Any]) -> list[str]:
    """Every problem with ``body`` except an unknown (but well-typed) model id."""
    errors: list[str] = []
    model = body.get("model")
    if model is None:
        errors.append("model is required")
    elif not isinstance(model, str) or not model:
        errors.append("model must be a non-empty string")
    errors += _message_errors(body)
    errors += _number_errors(body, MODELS.get(model) if isinstance(model, str) else None)
    errors += _tool_errors(body)
    errors += _response_format_errors(body, model)
    errors += _extension_errors(body)
    return errors


def _message_errors(body: dict[str, Any]) -> list[str]:
    has_messages, has_prompt = "messages" in body, "prompt" in body
    if not has_messages and not has_prompt:
        return ["one of messages or prompt required"]
    if has_messages and has_prompt:
        return ["only one of messages or prompt may be set"]
    if has_prompt:
        prompt = body["prompt"]
        return [] if isinstance(prompt, str) and prompt else ["prompt must be a non-empty string"]
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty array"]
    errors: list[str] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            errors.append(f"{where} must be an object")
            continue
        role = msg.get("role")
        if role not in ROLES:
            errors.append(f"{where}.role must be one of assistant, system, tool, user")
        content = msg.get("content")
        if content is None:
            if not (role == "assistant" and msg.get("tool_calls")):
                errors.append(f"{where}.content is required")
        elif isinstance(content, list):
            if role != "user":
                errors.append(f"{where}.content may be an array only for user messages")
            elif not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ):
                errors.append(f"{where}.content parts must be text parts")
        elif not isinstance(content, str):
            errors.append(f"{where}.content must be a string or an array of text parts")
        if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
            errors.append(f"{where}.tool_call_id is required for tool messages")
    return errors


def _number_errors(body: dict[str, Any], info: Any) -> list[str]:
    errors: list[str] = []
    if "max_tokens" in body and body["max_tokens"] is not None:
        value = body["max_tokens"]
        if not _is_int(value):
            errors.append("max_tokens must be an integer")
        elif value < 1:
            errors.append("max_tokens must be at least 1")
        elif info is not None and value >= info.context_length:
            errors.append(
                f"max_tokens must be less than the model context length ({info.context_length})"
            )
    if "temperature" in body and body["temperature"] is not None:
        value = body["temperature"]
        if not _is_number(value):
            errors.append("temperature must be a number")
        elif not 0 <= value <= 2:
            errors.append("temperature must be between 0 and 2")
    if "stop" in body and body["stop"] is not None:
        stop = body["stop"]
        if isinstance(stop, list):
            if len(stop) > MAX_STOP:
                errors.append(f"stop may hold at most {MAX_STOP} sequences")
            if not all(isinstance(s, str) for s in stop):
                errors.append("stop must be a string or an array of strings")
        elif not isinstance(stop, str):
            errors.append("stop must be a string or an array of strings")
    for flag in ("stream", "async"):
        if flag in body and not isinstance(body[flag], bool):
            errors.append(f"{flag} must be a boolean")
    if body.get("stream") is True and body.get("async") is True:
        errors.append("async cannot be combined with stream")
    return errors


def tool_names(body: dict[str, Any]) -> list[str]:
    """Names of the well-formed function tools in ``body`` (in order)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        t["function"]["name"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]


def _tool_errors(body: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return ["tools must be an array"]
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                errors.append(f"tools[{i}].function.name is required")
            elif "parameters" in fn and not isinstance(fn["parameters"], dict):
                errors.append(f"tools[{i}].function.parameters must be an object")
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return errors
    name = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    if not isinstance(name, str):
        errors.append('tool_choice must be "none", "auto" or {"type": "function", ...}')
    elif name not in tool_names(body):
        errors.append(f"tool_choice names an unknown function: {name}")
    return errors


def _response_format_errors(body: dict[str, Any], model: Any) -> list[str]:
    fmt = body.get("response_format")
    if fmt is None:
        return []
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "text", "json_object"):
        return ["response_format is invalid: type must be json_schema"]
    if fmt["type"] != "json_schema":
        return []
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return ["response_format is invalid: json_schema.name is required"]
    if not isinstance(spec.get("schema"), dict):
        return ["response_format is invalid: json_schema.schema must be an object"]
    info = MODELS.get(model) if isinstance(model, str) else None
    if info is not None and not info.structured_outputs:
        return [f"response_format is invalid: model {model} does not support structured output"]
    return []


def _extension_errors(body: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    fallbacks = body.get("fallbacks")
    if fallbacks is not None:
        if not isinstance(fallbacks, list):
            errors.append("fallbacks must be an array")
        else:
            for i, item in enumerate(fallbacks):
                if not isinstance(item, dict) or not isinstance(item.get("model"), str):
                    errors.append(f"fallbacks[{i}].model is required")
    config = body.get("fallback_config")
    if config is not None:
        if not isinstance(config, dict):
            errors.append("fallback_config must be an object")
        else:
            depth = config.get("depth")
            if depth is None:
                pass
            elif not _is_int(depth):
                errors.append("fallback_config depth must be an integer")
            elif depth > MAX_FALLBACK_DEPTH:
                errors.append("fallback_config depth cannot be greater than 2")
            elif depth < 0:
                errors.append("fallback_config depth cannot be negative")
            if "retry" in config and not isinstance(config["retry"], bool):
                errors.append("fallback_config retry must be a boolean")
    steps = body.get("post_processing_steps")
    if steps is not None:
        if not isinstance(steps, list):
            errors.append("post_processing_steps must be an array")
        else:
            for step in steps:
                kind = step.get("type") if isinstance(step, dict) else None
                if kind != "json-repair":
                    errors.append(f"post_processing_steps type {kind} is not supported")
    if "model_region" in body and body["model_region"] != "global":
        errors.append("model_region can only be set to global")
    if "transcript_id" in body and not isinstance(body["transcript_id"], str):
        errors.append("transcript_id must be a string")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        ok = isinstance(reasoning, dict) and (
            reasoning.get("effort") in EFFORTS
            or (_is_int(reasoning.get("max_tokens")) and reasoning["max_tokens"] >= 1)
        )
        if not ok:
            errors.append("reasoning must be {effort: low|medium|high} or {max_tokens: int}")
    return errors


def merge_fallback(body: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """A fallback attempt: the request's fields, overridden by the item's (which has ``model``)."""
    merged = {k: v for k, v in body.items() if k not in ("fallbacks", "fallback_config")}
    if "messages" in item:
        merged.pop("prompt", None)
    if "prompt" in item:
        merged.pop("messages", None)
    return merged | item
