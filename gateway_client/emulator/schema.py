"""Minimal valid JSON values from a JSON Schema, for the emulator's tool calls and JSON replies.

Pure. Handles what tool and ``response_format`` schemas use in practice: ``type`` (one or a
list), ``enum``, ``const``, ``properties``/``required``, ``items``/``minItems``/``maxItems``,
``minimum``/``maximum`` (and the exclusive forms), ``minLength``/``maxLength``, common
``format``s, ``anyOf``/``oneOf``/``allOf`` (first branch) and local ``$ref``s
(``#/$defs/...``, ``#/definitions/...``). ``pattern`` is not honoured.
"""

from __future__ import annotations

import math
from typing import Any

_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}
_MAX_DEPTH = 8  # recursive $refs stop here: only required properties below it


def example_value(schema: Any, text: str = "example", *, root: Any = None, depth: int = 0) -> Any:
    """A value that validates against ``schema``; free-form strings carry ``text``.

    Objects get every listed property (only the required ones once ``depth`` is deep, so a
    recursive schema terminates).
    """
    if not isinstance(schema, dict):
        return text  # `true` / missing schema: anything goes
    root = schema if root is None else root
    if "$ref" in schema:
        return example_value(_resolve(root, schema["$ref"]), text, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            merged = {k: v for k, v in schema.items() if k != key}
            if isinstance(branches[0], dict):
                merged.update(branches[0])
            return example_value(merged, text, root=root, depth=depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return _object(schema, text, root, depth)
    if kind == "array":
        return _array(schema, text, root, depth)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, text)


def _resolve(root: Any, ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _object(schema: dict[str, Any], text: str, root: Any, depth: int) -> dict[str, Any]:
    found = schema.get("properties")
    props: dict[str, Any] = found if isinstance(found, dict) else {}
    required = [r for r in schema.get("required", []) if isinstance(r, str)]
    names = list(props) if depth < _MAX_DEPTH else [r for r in required if r in props]
    out = {name: example_value(props[name], text, root=root, depth=depth + 1) for name in names}
    for name in required:  # required but not described: any value will do
        out.setdefault(name, text)
    return out


def _array(schema: dict[str, Any], text: str, root: Any, depth: int) -> list[Any]:
    low = int(schema.get("minItems", 1 if depth < _MAX_DEPTH else 0))
    high = schema.get("maxItems")
    count = min(low, int(high)) if isinstance(high, int) else low
    items = schema.get("items", {})
    return [example_value(items, text, root=root, depth=depth + 1) for _ in range(count)]


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 0
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low, int | float):
        value = max(value, low)
    if isinstance(ex_low, int | float) and value <= ex_low:
        value = math.floor(ex_low) + 1 if integer else ex_low + 0.5
    if isinstance(high, int | float) and value > high:
        value = high
    if isinstance(ex_high, int | float) and value >= ex_high:
        value = math.ceil(ex_high) - 1 if integer else ex_high - 0.5
    return math.ceil(value) if integer else value


def _string(schema: dict[str, Any], text: str) -> str:
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, text) if isinstance(fmt, str) else text
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(high, int) and len(value) > high:
        value = value[:high]
    if isinstance(low, int) and len(value) < low:
        value = value + "x" * (low - len(value))
    return value
