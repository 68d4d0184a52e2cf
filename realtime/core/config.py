"""Session configuration: defaults, presets and `session.update` validation, pure.

Contract (PROTOCOL.md "Session config"): every field of a patch is optional and replaces that
field only; `preset` first resets the fields it governs, then the rest of the same patch
applies; unknown fields are ignored; an invalid value raises `ConfigError` naming the field
and leaves the old config untouched (a `SessionConfig` is immutable, `update` returns a new
one). `SessionConfig` is a frozen slotted dataclass: the session reads it on every turn, so it
must be cheap to read, and it is never built on a per-token path.

Every value is bounded, because a patch is hostile input: a JSON-valued field (`tools`,
`tool_choice`, `response_format`, `fallbacks`, `metadata`) is at most `MAX_JSON_DEPTH` levels
deep and `MAX_JSON_BYTES` long as JSON; `instructions` and `prompt` are at most
`MAX_INSTRUCTIONS_CHARS` and `MAX_PROMPT_CHARS` characters, and each placeholder appears at
most once in `prompt`, so a request rendered from the config stays bounded (context.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from realtime.core.errors import ClientFault

__all__ = [
    "FORMATS",
    "MAX_INSTRUCTIONS_CHARS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PROMPT_CHARS",
    "ON_NEW_TURN",
    "PLACEHOLDERS",
    "PRESETS",
    "TRIGGERS",
    "ConfigError",
    "SessionConfig",
]

TRIGGERS = ("end_of_turn", "formatted", "eager")
CONTEXT_STRATEGIES = ("drop", "summarize")
ON_NEW_TURN = ("cancel", "supersede", "keep")
FORMATS = ("json_schema", "json_object", "text")
TOOL_CHOICES = ("none", "auto", "required")
MAX_FALLBACKS = 5
MAX_MODEL_CHARS = 256
MAX_JSON_DEPTH = 32  # nested arrays/objects in one JSON-valued field; `[]` is 1 level
MAX_JSON_BYTES = 65_536  # one JSON-valued field, as orjson serializes it
MAX_INSTRUCTIONS_CHARS = 32_768
MAX_PROMPT_CHARS = 32_768
PLACEHOLDERS = ("{{turn}}", "{{history}}", "{{summary}}")
MAX_SUMMARY_EVERY_TURNS = 1000
MAX_SUMMARY_EVERY_SECONDS = 3600
# orjson serializes integers from -2**63 to 2**64 - 1 and refuses the rest.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1

SUMMARY_PROMPT = (
    "You keep the running summary of a live conversation.\n\n"
    "The summary so far:\n{{summary}}\n\n"
    'What was said since then, one line per speaker turn ("A: ..." names the speaker, '
    '"?" an unknown one), oldest first:\n{{history}}\n\n'
    "Write the new whole summary: the summary so far refined with what was said since, "
    "covering the whole conversation from its beginning: the topics discussed, the decisions "
    "made, the open questions and the action items with their owners, if any were named. "
    "Keep it short and factual, in plain sentences or bullet points, and do not invent "
    "anything that was not said. Answer with the summary only."
)
# The summary preset's cadence: a summary at every 5th new turn or 30 s, whichever first.
SUMMARY_EVERY_DEFAULT: dict[str, int | float | None] = {"turns": 5, "seconds": 30}

# What each preset resets. The "context style" follows from `prompt`: null sends the history
# as alternating user/assistant messages, a template sends one user message (context.py).
PRESETS: dict[str, dict[str, object]] = {
    "assistant": {
        "trigger": "end_of_turn",
        "on_new_turn": "cancel",
        "prompt": None,
        "summary_every": None,
    },
    "per_turn": {
        "trigger": "end_of_turn",
        "on_new_turn": "keep",
        "prompt": "{{turn}}",
        "summary_every": None,
    },
    "summary": {
        "trigger": "end_of_turn",
        "on_new_turn": "supersede",
        "prompt": SUMMARY_PROMPT,
        "summary_every": SUMMARY_EVERY_DEFAULT,
    },
}


class ConfigError(ClientFault, ValueError):
    """An invalid config value. The message starts with the field name: `max_tokens: ...`."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_config", message)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The effective config of one session. Build with `from_defaults`, change with `update`."""

    preset: str = "assistant"
    model: str = "gpt-4.1"
    instructions: str = "You are a helpful voice assistant. Answer briefly."
    prompt: str | None = None
    trigger: str = "end_of_turn"
    on_new_turn: str = "cancel"
    max_context_tokens: int = 8000
    max_context_turns: int = 50
    temperature: float | None = None
    max_tokens: int | None = 1000
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None  # the client's own data: echoed, never sent upstream
    interrupt_min_words: int = 1
    max_inflight: int = 4
    format_wait_ms: int = 300
    # How long a session whose last participant dropped (without Termination) stays alive,
    # detached, for a participant to resume it (PROTOCOL.md "Resuming a session"); 0: it ends.
    resume_window_ms: int = 30_000
    # Meeting cadence (PROTOCOL.md "Long conversations"): null fires per turn; an object
    # {"turns": N, "seconds": S} records turns and fires one summary when either is reached.
    summary_every: dict[str, int | float | None] | None = None
    # prompt null: turns evicted from the context budget are dropped, or folded into a
    # running summary (by a background request to `summary_model`, null: `model`) that every
    # request carries as a system note.
    context_strategy: str = "drop"
    summary_model: str | None = None

    @classmethod
    def from_defaults(cls, **overrides: object) -> SessionConfig:
        """The server-level defaults: the built-in ones with `overrides` applied.

        Unlike a client patch, an unknown name here is an operator's typo: it raises.
        """
        unknown = cls.ignored_fields(overrides)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config field")
        return cls().update(overrides)

    @staticmethod
    def ignored_fields(patch: Mapping[str, object]) -> list[str]:
        """The keys of `patch` that `update` ignores (not config fields), sorted."""
        return sorted(k for k in patch if k not in _VALIDATORS)

    def update(self, patch: Mapping[str, object]) -> SessionConfig:
        """Return a new config with `patch` applied; raise `ConfigError` on any invalid value.

        Atomic: either every field of the patch applies or none does (self never changes):
        the whole new config is validated and built before it is returned. Whatever the
        input, the only exception raised is `ConfigError`.
        """
        try:
            changes = _changes(patch)
            return replace(self, **changes) if changes else self  # type: ignore[arg-type]
        except ConfigError:
            raise
        except Exception as exc:  # a validator's bug on hostile input is still bad input
            raise ConfigError(f"session: invalid config ({type(exc).__name__})") from exc

    def to_wire(self) -> dict[str, object]:
        """The whole effective config as JSON-able data (for session.created/updated)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def request_fields(self) -> dict[str, object]:
        """The chat-completions body fields passed through on every request.

        Only the ones that are set: None values and an empty fallback list are left out, so
        the gateway applies its own defaults.
        """
        body: dict[str, object] = {"model": self.model}
        optional: dict[str, object] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "fallbacks": self.fallbacks or None,
        }
        body.update({k: copy.deepcopy(v) for k, v in optional.items() if v is not None})
        return body


def _changes(patch: Mapping[str, object]) -> dict[str, object]:
    """The validated field values of `patch`, the preset's first (see the module docstring)."""
    changes: dict[str, object] = {}
    if "preset" in patch:
        preset = _enum("preset", patch["preset"], tuple(PRESETS))
        changes["preset"] = preset
        changes.update(copy.deepcopy(PRESETS[preset]))
    for name, value in patch.items():
        if name in _VALIDATORS and name != "preset":
            changes[name] = _validate(name, value)
    return changes


def _validate(name: str, value: object) -> object:
    """Run the field's validator; any exception but ConfigError becomes one naming the field."""
    try:
        return _VALIDATORS[name](name, value)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{name}: invalid value ({type(exc).__name__})") from exc


# ---- validators: (field name, raw JSON value) -> normalised value, or ConfigError ----------


def _is_int(value: object) -> bool:
    # JSON true/false arrive as bool, which is an int subclass: never accept them as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _enum(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}")
    return value


def _int_range(lo: int, hi: int, *, nullable: bool = False) -> Callable[[str, object], object]:
    def check(name: str, value: object) -> object:
        if value is None and nullable:
            return None
        if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
            null = "null or " if nullable else ""
            raise ConfigError(f"{name}: must be {null}an integer from {lo} to {hi}")
        return value

    return check


def _enum_of(allowed: tuple[str, ...]) -> Callable[[str, object], object]:
    return lambda name, value: _enum(name, value, allowed)


def _unicode(name: str, value: str) -> str:
    """`value`, if it can be sent as JSON (a lone surrogate cannot: orjson refuses it)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{name}: must be valid Unicode text") from None
    return value


def _model(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_CHARS:
        raise ConfigError(f"{name}: must be a non-empty string (at most {MAX_MODEL_CHARS} chars)")
    return _unicode(name, value)


def _instructions(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string")
    if len(value) > MAX_INSTRUCTIONS_CHARS:
        raise ConfigError(f"{name}: must be at most {MAX_INSTRUCTIONS_CHARS} characters")
    return _unicode(name, value)


def _prompt(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string or null")
    if len(value) > MAX_PROMPT_CHARS:
        raise ConfigError(f"{name}: must be at most {MAX_PROMPT_CHARS} characters")
    counts = [value.count(p) for p in PLACEHOLDERS]
    if not any(counts):
        raise ConfigError(
            f"{name}: a template must contain {{{{turn}}}}, {{{{history}}}} or {{{{summary}}}}"
        )
    for placeholder, count in zip(PLACEHOLDERS, counts, strict=True):
        # Each copy would repeat the turn or the history: one request could grow without bound.
        if count > 1:
            raise ConfigError(f"{name}: {placeholder} may appear at most once")
    return _unicode(name, value)


def _temperature(name: str, value: object) -> float | None:
    if value is None:
        return None
    # The range test comes first: NaN fails it, and a huge int never reaches float().
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise ConfigError(f"{name}: must be null or a number from 0 to 2")
    return float(value)


def _check_json(name: str, value: object) -> None:
    """Refuse `value` unless it is plain JSON data within the depth and size bounds.

    Iterative, with an explicit stack: a value nested far deeper than Python's recursion limit
    is refused here, before anything recursive (copy.deepcopy, orjson) sees it. It sums a
    lower bound of the serialized size as it walks and stops past the bound, so the walk is
    bounded too (even over a cyclic or shared structure built in Python).
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    size = 0  # bytes of compact JSON so far, a lower bound (escapes and UTF-8 only add)
    while stack:
        item, depth = stack.pop()
        children: list[Any] = []
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ConfigError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
            size += 1 + max(len(item), 1)  # the brackets and the commas
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise ConfigError(f"{name}: object keys must be strings")
                    size += len(key) + 3  # "key":
                children = list(item.values())
            else:
                children = item
        elif isinstance(item, str):
            size += len(item) + 2
        elif item is None or isinstance(item, bool):
            size += 4
        elif isinstance(item, int):
            if not _JSON_INT_MIN <= item <= _JSON_INT_MAX:
                raise ConfigError(f"{name}: integer out of the 64-bit range")
            size += 1
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ConfigError(f"{name}: numbers must be finite")
            size += 1
        else:
            raise ConfigError(f"{name}: must be JSON data, not {type(item).__name__}")
        if size > MAX_JSON_BYTES:
            raise ConfigError(f"{name}: larger than {MAX_JSON_BYTES} bytes as JSON")
        stack.extend((child, depth + 1) for child in children)


def _json_copy(name: str, value: Any) -> Any:
    """A private copy of checked JSON data, after the exact size test (orjson's own length)."""
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise ConfigError(f"{name}: must be valid Unicode text") from None
    if len(data) > MAX_JSON_BYTES:
        raise ConfigError(f"{name}: larger than {MAX_JSON_BYTES} bytes as JSON")
    return orjson.loads(data)


def _fallbacks(name: str, value: object) -> list[dict[str, Any]]:
    _check_json(name, value)
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list of objects with a string 'model'")
    if len(value) > MAX_FALLBACKS:
        raise ConfigError(f"{name}: at most {MAX_FALLBACKS} fallbacks")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"model": item}  # shorthand: a bare model id
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("model"), str)
            or not item["model"]
        ):
            raise ConfigError(f"{name}[{i}]: must be an object with a non-empty string 'model'")
        out.append(item)
    copied: list[dict[str, Any]] = _json_copy(name, out)
    return copied


def _response_format(name: str, value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    _check_json(name, value)
    if not isinstance(value, dict) or value.get("type") not in FORMATS:
        raise ConfigError(f"{name}: must be null or an object with 'type' in {', '.join(FORMATS)}")
    copied: dict[str, Any] = _json_copy(name, value)
    return copied


def _tools(name: str, value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    _check_json(name, value)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{name}: must be null or a list of objects")
    copied: list[dict[str, Any]] = _json_copy(name, value)
    return copied


def _tool_choice(name: str, value: object) -> str | dict[str, Any] | None:
    if value is None or (isinstance(value, str) and value in TOOL_CHOICES):
        return value
    if isinstance(value, dict):
        _check_json(name, value)
        copied: dict[str, Any] = _json_copy(name, value)
        return copied
    raise ConfigError(f"{name}: must be null, {', '.join(TOOL_CHOICES)} or an object")


def _metadata(name: str, value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be null or an object")
    _check_json(name, value)
    copied: dict[str, Any] = _json_copy(name, value)
    return copied


def _summary_every(name: str, value: object) -> dict[str, int | float | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value or set(value) - {"turns", "seconds"}:
        raise ConfigError(f"{name}: must be null or an object with 'turns' and/or 'seconds'")
    turns, seconds = value.get("turns"), value.get("seconds")
    if turns is not None and (not _is_int(turns) or not 1 <= turns <= MAX_SUMMARY_EVERY_TURNS):
        raise ConfigError(f"{name}.turns: must be an integer from 1 to {MAX_SUMMARY_EVERY_TURNS}")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 1 <= seconds <= MAX_SUMMARY_EVERY_SECONDS
    ):
        raise ConfigError(f"{name}.seconds: must be a number from 1 to {MAX_SUMMARY_EVERY_SECONDS}")
    if turns is None and seconds is None:
        raise ConfigError(f"{name}: needs 'turns' or 'seconds'")
    return {"turns": turns, "seconds": seconds}


_VALIDATORS: dict[str, Callable[[str, object], object]] = {
    "preset": _enum_of(tuple(PRESETS)),
    "model": _model,
    "instructions": _instructions,
    "prompt": _prompt,
    "trigger": _enum_of(TRIGGERS),
    "on_new_turn": _enum_of(ON_NEW_TURN),
    "max_context_tokens": _int_range(256, 1_000_000),
    "max_context_turns": _int_range(1, 1000),
    "temperature": _temperature,
    "max_tokens": _int_range(1, 200_000, nullable=True),
    "fallbacks": _fallbacks,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "metadata": _metadata,
    "interrupt_min_words": _int_range(1, 50),
    "max_inflight": _int_range(1, 32),
    "format_wait_ms": _int_range(0, 5000),
    "resume_window_ms": _int_range(0, 600_000),
    "summary_every": _summary_every,
    "context_strategy": _enum_of(CONTEXT_STRATEGIES),
    "summary_model": lambda name, value: None if value is None else _model(name, value),
}
