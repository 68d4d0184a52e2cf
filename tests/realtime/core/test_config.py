"""SessionConfig: defaults, presets, validation and the wire/request views, with plain calls."""

import math
from dataclasses import fields

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.core.config import (
    MAX_INSTRUCTIONS_CHARS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_PROMPT_CHARS,
    PRESETS,
    ConfigError,
    SessionConfig,
)


def test_defaults_match_the_protocol():
    c = SessionConfig()
    assert (c.preset, c.trigger, c.on_new_turn, c.prompt) == (
        "assistant",
        "end_of_turn",
        "cancel",
        None,
    )
    assert (c.max_context_tokens, c.max_context_turns, c.max_tokens) == (8000, 50, 1000)
    assert (c.interrupt_min_words, c.max_inflight, c.format_wait_ms) == (1, 4, 300)
    assert c.metadata is None


def test_update_replaces_only_the_fields_sent_and_returns_a_new_config():
    c = SessionConfig()
    d = c.update({"model": "claude-sonnet-4-6", "temperature": 0.5})
    assert d.model == "claude-sonnet-4-6"
    assert d.temperature == 0.5
    assert d.instructions == c.instructions
    assert c.model == "gpt-4.1"  # the old config is untouched


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sets_its_defaults(preset):
    c = SessionConfig(trigger="eager", on_new_turn="keep", prompt="x {{turn}}").update(
        {"preset": preset}
    )
    assert c.preset == preset
    for name, value in PRESETS[preset].items():
        assert getattr(c, name) == value


def test_preset_values():
    assert SessionConfig().update({"preset": "per_turn"}).prompt == "{{turn}}"
    s = SessionConfig().update({"preset": "summary"})
    assert (s.trigger, s.on_new_turn) == ("end_of_turn", "supersede")
    assert s.prompt is not None and "{{history}}" in s.prompt
    a = s.update({"preset": "assistant"})
    assert (a.prompt, a.on_new_turn) == (None, "cancel")


def test_fields_of_the_same_patch_apply_after_the_preset():
    c = SessionConfig().update({"on_new_turn": "keep", "preset": "summary", "trigger": "eager"})
    assert (c.on_new_turn, c.trigger) == ("keep", "eager")
    assert c.prompt == PRESETS["summary"]["prompt"]


def test_unknown_fields_are_ignored_and_reported():
    c = SessionConfig()
    d = c.update({"voice": "alloy", "model": "m"})
    assert d.model == "m"
    assert SessionConfig.ignored_fields({"voice": 1, "model": "m", "zz": 2}) == ["voice", "zz"]


BAD = [
    ("preset", "chatty"),
    ("trigger", "whenever"),
    ("on_new_turn", "ignore"),
    ("model", ""),
    ("model", 5),
    ("instructions", None),
    ("prompt", "no placeholder"),
    ("prompt", 3),
    ("max_context_tokens", 255),
    ("max_context_tokens", 1_000_001),
    ("max_context_tokens", 1000.0),
    ("max_context_turns", 0),
    ("max_context_turns", 1001),
    ("temperature", 2.5),
    ("temperature", -0.1),
    ("temperature", True),
    ("temperature", "0.3"),
    ("temperature", float("nan")),
    ("max_tokens", 0),
    ("max_tokens", 200_001),
    ("max_tokens", True),
    ("fallbacks", "m"),
    ("fallbacks", [{"name": "m"}]),
    ("fallbacks", [{"model": ""}]),
    ("fallbacks", [3]),
    ("fallbacks", ["a", "b", "c", "d", "e", "f"]),
    ("response_format", {"type": "yaml"}),
    ("response_format", "json_object"),
    ("tools", {"type": "function"}),
    ("tools", ["f"]),
    ("tool_choice", "always"),
    ("tool_choice", 1),
    ("metadata", []),
    ("metadata", "note"),
    ("metadata", 1),
    ("interrupt_min_words", 0),
    ("interrupt_min_words", 51),
    ("interrupt_min_words", True),
    ("max_inflight", 0),
    ("max_inflight", 33),
    ("format_wait_ms", -1),
    ("format_wait_ms", 5001),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_invalid_values_raise_naming_the_field(name, value):
    with pytest.raises(ConfigError) as info:
        SessionConfig().update({name: value})
    assert str(info.value).startswith(f"{name}")
    assert isinstance(info.value, ValueError)


def test_update_is_atomic():
    c = SessionConfig()
    with pytest.raises(ConfigError, match=r"^max_tokens: "):
        c.update({"model": "other", "preset": "summary", "max_tokens": -1})
    assert c.model == "gpt-4.1" and c.preset == "assistant"


GOOD = [
    ("temperature", 0, 0.0),
    ("temperature", 2, 2.0),
    ("temperature", None, None),
    ("max_tokens", None, None),
    ("max_tokens", 200_000, 200_000),
    ("max_context_tokens", 256, 256),
    ("max_context_turns", 1000, 1000),
    ("prompt", "History:\n{{history}}", "History:\n{{history}}"),
    ("prompt", None, None),
    ("instructions", "", ""),
    ("response_format", {"type": "json_object"}, {"type": "json_object"}),
    ("response_format", None, None),
    ("tools", [{"type": "function"}], [{"type": "function"}]),
    ("tool_choice", "required", "required"),
    ("tool_choice", {"type": "function"}, {"type": "function"}),
    ("format_wait_ms", 0, 0),
    ("max_inflight", 32, 32),
    ("interrupt_min_words", 50, 50),
    ("metadata", {"user": "u1", "tags": ["a", 1]}, {"user": "u1", "tags": ["a", 1]}),
    ("metadata", {}, {}),
    ("metadata", None, None),
]


@pytest.mark.parametrize(("name", "value", "expected"), GOOD)
def test_valid_values_are_accepted(name, value, expected):
    c = SessionConfig().update({name: value})
    assert getattr(c, name) == expected


def test_fallbacks_accept_bare_strings_and_objects():
    c = SessionConfig().update({"fallbacks": ["a", {"model": "b", "temperature": 0.1}]})
    assert c.fallbacks == [{"model": "a"}, {"model": "b", "temperature": 0.1}]
    assert SessionConfig().update({"fallbacks": ["a"] * 5}).fallbacks == [{"model": "a"}] * 5


def test_patch_values_are_copied_not_shared():
    tools = [{"type": "function", "function": {"name": "f"}}]
    c = SessionConfig().update({"tools": tools})
    tools[0]["type"] = "changed"
    assert c.tools == [{"type": "function", "function": {"name": "f"}}]
    wire = c.to_wire()
    wire["tools"][0]["type"] = "changed"  # type: ignore[index]
    assert c.tools[0]["type"] == "function"


def test_to_wire_is_the_whole_config_and_json_able():
    c = SessionConfig().update({"preset": "summary", "fallbacks": ["m2"]})
    wire = c.to_wire()
    assert orjson.loads(orjson.dumps(wire)) == wire
    assert wire["preset"] == "summary"
    assert wire["fallbacks"] == [{"model": "m2"}]
    for key in ("model", "instructions", "prompt", "trigger", "on_new_turn", "max_context_tokens"):
        assert key in wire
    assert {"interrupt_min_words", "max_inflight", "format_wait_ms", "tool_choice"} <= set(wire)


def test_request_fields_leave_out_unset_values():
    assert SessionConfig().request_fields() == {"model": "gpt-4.1", "max_tokens": 1000}
    c = SessionConfig().update(
        {
            "max_tokens": None,
            "temperature": 0.2,
            "fallbacks": ["b"],
            "response_format": {"type": "text"},
            "tools": [{"type": "function"}],
            "tool_choice": "auto",
        }
    )
    assert c.request_fields() == {
        "model": "gpt-4.1",
        "temperature": 0.2,
        "fallbacks": [{"model": "b"}],
        "response_format": {"type": "text"},
        "tools": [{"type": "function"}],
        "tool_choice": "auto",
    }


def test_from_defaults_validates_and_rejects_unknown_names():
    c = SessionConfig.from_defaults(model="claude-haiku-4-5", max_inflight=2)
    assert (c.model, c.max_inflight) == ("claude-haiku-4-5", 2)
    with pytest.raises(ConfigError, match=r"^modle: "):
        SessionConfig.from_defaults(modle="x")
    with pytest.raises(ConfigError, match=r"^max_inflight: "):
        SessionConfig.from_defaults(max_inflight=0)
    assert SessionConfig.from_defaults() == SessionConfig()


# ---- bounds: hostile input is refused as ConfigError, before anything recursive sees it ------


def nested(depth: int, leaf: object = 1) -> object:
    """`depth` levels of alternating arrays and objects around `leaf` (built without recursion)."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# Each JSON-valued field, with the levels its own shape takes before the free-form part.
JSON_FIELDS = {
    "tools": (lambda v: [{"type": "function", "x": v}], 2),
    "tool_choice": (lambda v: {"type": "function", "x": v}, 1),
    "response_format": (lambda v: {"type": "json_schema", "x": v}, 1),
    "fallbacks": (lambda v: [{"model": "m", "x": v}], 2),
    "metadata": (lambda v: {"x": v}, 1),
}


def test_limits_are_exported():
    assert (MAX_JSON_DEPTH, MAX_JSON_BYTES) == (32, 65536)
    assert MAX_INSTRUCTIONS_CHARS == MAX_PROMPT_CHARS == 32_768


@pytest.mark.parametrize("name", sorted(JSON_FIELDS))
def test_json_fields_accept_32_levels_and_refuse_33(name):
    wrap, levels = JSON_FIELDS[name]
    deepest = wrap(nested(MAX_JSON_DEPTH - levels))
    assert getattr(SessionConfig().update({name: deepest}), name) == deepest
    with pytest.raises(ConfigError) as info:
        SessionConfig().update({name: wrap(nested(MAX_JSON_DEPTH - levels + 1))})
    assert str(info.value) == f"{name}: nested deeper than 32 levels"


@pytest.mark.parametrize("name", sorted(JSON_FIELDS))
@pytest.mark.parametrize("depth", [250, 300, 100_000])
def test_json_nested_past_the_recursion_limits_is_a_config_error(name, depth):
    # ~250 deep used to make deepcopy raise RecursionError; orjson refuses more than 255.
    wrap, _ = JSON_FIELDS[name]
    with pytest.raises(ConfigError, match=rf"^{name}: nested deeper than 32 levels$"):
        SessionConfig().update({name: wrap(nested(depth))})


def sized(wrap, total: int) -> object:
    """`wrap` around a string padded so the field's JSON is exactly `total` bytes."""
    base = len(orjson.dumps(wrap("")))
    value = wrap("a" * (total - base))
    assert len(orjson.dumps(value)) == total
    return value


@pytest.mark.parametrize("name", sorted(JSON_FIELDS))
def test_json_fields_accept_64_kib_and_refuse_one_byte_more(name):
    wrap, _ = JSON_FIELDS[name]
    largest = sized(wrap, MAX_JSON_BYTES)
    assert getattr(SessionConfig().update({name: largest}), name) == largest
    with pytest.raises(ConfigError) as info:
        SessionConfig().update({name: sized(wrap, MAX_JSON_BYTES + 1)})
    assert str(info.value) == f"{name}: larger than 65536 bytes as JSON"


def test_json_size_counts_escapes_and_utf8_as_orjson_does():
    value = {"type": "text", "x": "é" * (MAX_JSON_BYTES // 2)}  # 2 bytes each in UTF-8
    with pytest.raises(ConfigError, match=r"^response_format: larger than 65536 bytes"):
        SessionConfig().update({"response_format": value})


def test_many_small_values_count_towards_the_size():
    with pytest.raises(ConfigError, match=r"^tools: larger than 65536 bytes"):
        SessionConfig().update({"tools": [{}] * 30_000})


def test_instructions_and_prompt_are_limited_in_length():
    c = SessionConfig().update({"instructions": "x" * MAX_INSTRUCTIONS_CHARS})
    assert len(c.instructions) == 32_768
    with pytest.raises(ConfigError) as info:
        c.update({"instructions": "x" * (MAX_INSTRUCTIONS_CHARS + 1)})
    assert str(info.value) == "instructions: must be at most 32768 characters"
    longest = "{{turn}}" + "x" * (MAX_PROMPT_CHARS - 8)
    assert SessionConfig().update({"prompt": longest}).prompt == longest
    with pytest.raises(ConfigError) as info:
        SessionConfig().update({"prompt": longest + "x"})
    assert str(info.value) == "prompt: must be at most 32768 characters"


@pytest.mark.parametrize("placeholder", ["{{turn}}", "{{history}}"])
def test_each_placeholder_appears_at_most_once_in_the_prompt(placeholder):
    ok = SessionConfig().update({"prompt": "{{history}}\n\nNow: {{turn}}"})
    assert ok.prompt == "{{history}}\n\nNow: {{turn}}"
    with pytest.raises(ConfigError) as info:
        SessionConfig().update({"prompt": f"{placeholder} and {placeholder}"})
    assert str(info.value) == f"prompt: {placeholder} may appear at most once"
    with pytest.raises(ConfigError, match="at most once"):
        SessionConfig().update({"prompt": placeholder * 1000})


def test_metadata_is_echoed_but_never_sent_upstream():
    c = SessionConfig().update({"metadata": {"room": "r1", "n": [1, 2]}})
    assert c.to_wire()["metadata"] == {"room": "r1", "n": [1, 2]}
    assert "metadata" not in c.request_fields()
    assert c.update({"metadata": None}).metadata is None
    assert SessionConfig.ignored_fields({"metadata": {}}) == []


def cyclic() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def shared(depth: int) -> object:
    value: object = "x" * 10  # 2**depth leaves when walked, a few objects in memory
    for _ in range(depth):
        value = [value, value]
    return value


NOT_JSON = [
    ("tools", [{"x": (1, 2)}], r"not tuple"),
    ("tools", [{"x": {1, 2}}], r"not set"),
    ("tools", [{"x": b"bytes"}], r"not bytes"),
    ("tools", [{"x": object()}], r"not object"),
    ("tools", [{1: "non-string key"}], r"keys must be strings"),
    ("tools", [{"x": 2**64}], r"64-bit"),
    ("tools", [{"x": -(2**63) - 1}], r"64-bit"),
    ("tools", [{"x": math.nan}], r"finite"),
    ("tools", [{"x": math.inf}], r"finite"),
    ("tools", [{"x": "\ud800"}], r"Unicode"),
    ("metadata", {"loop": cyclic()}, r"nested deeper"),
    ("metadata", {"dag": shared(30)}, r"larger than"),
    ("fallbacks", [{"model": "m", "x": cyclic()}], r"nested deeper"),
    ("instructions", "\ud800", r"Unicode"),
    ("prompt", "{{turn}} \udfff", r"Unicode"),
    ("model", "m\ud800", r"Unicode"),
    ("temperature", 10**400, r"number from 0 to 2"),
    ("max_tokens", 10**400, r"integer from"),
]


@pytest.mark.parametrize(("name", "value", "message"), NOT_JSON)
def test_values_that_are_not_plain_json_are_refused(name, value, message):
    # Only an operator (from_defaults) can pass these; a client's patch comes from orjson.
    with pytest.raises(ConfigError, match=rf"^{name}: .*{message}"):
        SessionConfig.from_defaults(**{name: value})


def test_accepted_values_at_the_edges_of_json():
    tools = [{"big": 2**64 - 1, "small": -(2**63), "f": 1e308, "u": "é✓"}]
    c = SessionConfig().update({"tools": tools})
    assert c.tools == tools
    assert orjson.loads(orjson.dumps(c.to_wire()))["tools"] == tools


def test_a_refused_bound_leaves_the_config_as_it_was():
    c = SessionConfig().update({"metadata": {"a": 1}})
    with pytest.raises(ConfigError, match=r"^tools: nested deeper"):
        c.update({"model": "other", "metadata": {"b": 2}, "tools": [nested(300)]})
    assert (c.model, c.metadata, c.tools) == ("gpt-4.1", {"a": 1}, None)


# ---- property: whatever a client sends, the answer is a config or a ConfigError ------------

FIELDS = [f.name for f in fields(SessionConfig)]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["{{turn}}", "{{history}}", "json_object", "auto", "function", "m"])
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "model", "x", "name"]) | st.text(max_size=5), inner, max_size=4
        )
    ),
    max_leaves=20,
)
DEEP = st.builds(nested, st.integers(0, 400), JSON_LIKE)
VALUES = (
    JSON_LIKE
    | DEEP
    | st.builds(lambda v: [v], DEEP)
    | st.builds(lambda v: [{"model": "m", "x": v}], DEEP)
)
PATCHES = st.dictionaries(st.sampled_from([*FIELDS, "voice"]), VALUES, max_size=5)


def check_accepted(c: SessionConfig) -> None:
    wire = orjson.loads(orjson.dumps(c.to_wire()))
    assert set(wire) == set(FIELDS)
    orjson.dumps(c.request_fields())


@settings(max_examples=400, deadline=None)
@given(patch=PATCHES)
def test_any_json_patch_gives_a_config_or_a_config_error(patch):
    before = SessionConfig()
    try:
        c = before.update(patch)
    except ConfigError as exc:
        assert str(exc).split(":")[0].split("[")[0] in {*patch, "session"}
        return
    check_accepted(c)


@settings(max_examples=200, deadline=None)
@given(patch=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5))
def test_any_defaults_give_a_config_or_a_config_error(patch):
    try:
        c = SessionConfig.from_defaults(**patch)
    except ConfigError:
        return
    check_accepted(c)
