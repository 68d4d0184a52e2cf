"""Session configuration: defaults, presets and `session.update` validation, pure.

Contract (PROTOCOL.md "Session config"): every field of a patch is optional and replaces that
field only; `preset` first resets the fields it governs, then the rest of the same patch
applies; unknown fields are ignored; an invalid value raises `ConfigError` naming the field
and leaves the old config untouched (a `SessionConfig` is immutable, `update` returns a new
one). `SessionConfig` is a frozen slotted dataclass: the session reads it on every turn, so it
must be cheap to read, and it is never built on a per-token path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "FORMATS",
    "ON_NEW_TURN",
    "PRESETS",
    "TRIGGERS",
    "ConfigError",
    "SessionConfig",
]

TRIGGERS = ("end_of_turn", "formatted", "eager")
ON_NEW_TURN = ("cancel", "supersede", "keep")
FORMATS = ("json_schema", "json_object", "text")
TOOL_CHOICES = ("none", "auto", "required")
MAX_FALLBACKS = 5
MAX_MODEL_CHARS = 256

SUMMARY_PROMPT = (
    "Below is the transcript of a live conversation so far, one line per speaker turn, "
    "oldest first.\n\n"
    "{{history}}\n\n"
    "Write a running summary of it: the topics discussed, the decisions made, the open "
    "questions and the action items with their owners, if any were named. Keep it short and "
    "factual, in plain sentences or bullet points, and do not invent anything that was not said."
)

# What each preset resets. The "context style" follows from `prompt`: null sends the history
# as alternating user/assistant messages, a template sends one user message (context.py).
PRESETS: dict[str, dict[str, object]] = {
    "assistant": {"trigger": "end_of_turn", "on_new_turn": "cancel", "prompt": None},
    "per_turn": {"trigger": "end_of_turn", "on_new_turn": "keep", "prompt": "{{turn}}"},
    "summary": {"trigger": "end_of_turn", "on_new_turn": "supersede", "prompt": SUMMARY_PROMPT},
}


class ConfigError(ValueError):
    """An invalid config value. The message starts with the field name: `max_tokens: ...`."""


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
    interrupt_min_words: int = 1
    max_inflight: int = 4
    format_wait_ms: int = 300

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

        Atomic: either every field of the patch applies or none does (self never changes).
        """
        changes: dict[str, object] = {}
        if "preset" in patch:
            preset = _enum("preset", patch["preset"], tuple(PRESETS))
            changes["preset"] = preset
            changes.update(PRESETS[preset])
        for name, value in patch.items():
            check = _VALIDATORS.get(name)
            if check is not None and name != "preset":
                changes[name] = check(name, value)
        return replace(self, **changes) if changes else self  # type: ignore[arg-type]

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


def _model(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_CHARS:
        raise ConfigError(f"{name}: must be a non-empty string (at most {MAX_MODEL_CHARS} chars)")
    return value


def _instructions(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string")
    return value


def _prompt(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string or null")
    if "{{turn}}" not in value and "{{history}}" not in value:
        raise ConfigError(f"{name}: a template must contain {{{{turn}}}} or {{{{history}}}}")
    return value


def _temperature(name: str, value: object) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= 2:  # type: ignore[arg-type,operator]
        raise ConfigError(f"{name}: must be null or a number from 0 to 2")
    return float(value)  # type: ignore[arg-type]


def _fallbacks(name: str, value: object) -> list[dict[str, Any]]:
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
        out.append(copy.deepcopy(item))
    return out


def _response_format(name: str, value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in FORMATS:
        raise ConfigError(f"{name}: must be null or an object with 'type' in {', '.join(FORMATS)}")
    return copy.deepcopy(value)


def _tools(name: str, value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{name}: must be null or a list of objects")
    return copy.deepcopy(value)


def _tool_choice(name: str, value: object) -> str | dict[str, Any] | None:
    if value is None or (isinstance(value, str) and value in TOOL_CHOICES):
        return value
    if isinstance(value, dict):
        return copy.deepcopy(value)
    raise ConfigError(f"{name}: must be null, {', '.join(TOOL_CHOICES)} or an object")


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
    "interrupt_min_words": _int_range(1, 50),
    "max_inflight": _int_range(1, 32),
    "format_wait_ms": _int_range(0, 5000),
}
