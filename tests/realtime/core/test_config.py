"""SessionConfig: defaults, presets, validation and the wire/request views, with plain calls."""

import orjson
import pytest

from realtime.core.config import PRESETS, ConfigError, SessionConfig


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
