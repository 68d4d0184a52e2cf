"""The rolling context, with plain calls: order, budget, templates, replies, calibration."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from realtime.core.config import MAX_PROMPT_CHARS, SessionConfig
from realtime.core.context import MESSAGE_OVERHEAD_TOKENS, Conversation

NO_SYSTEM = SessionConfig(instructions="")


def chat(conv, n, *, user="u", reply="a", start=0):
    """Record n finished exchanges: turn i asked `user{i}`, response r{i} answered `reply{i}`."""
    for i in range(start, start + n):
        conv.add_user(i, f"{user}{i}")
        conv.start_reply(f"r{i}", i)
        conv.finish_reply(f"r{i}", f"{reply}{i}")


def contents(messages):
    return [(m["role"], m["content"]) for m in messages]


def total_tokens(conv, messages):
    return sum(conv.estimate_tokens(str(m["content"])) + MESSAGE_OVERHEAD_TOKENS for m in messages)


# ---- order and content ----------------------------------------------------------------------


def test_messages_are_system_then_alternating_history_then_current_turn():
    conv = Conversation()
    chat(conv, 2)
    conv.add_user(2, "now")
    cfg = SessionConfig(instructions="Be brief.")
    assert contents(conv.build_messages(cfg, 2)) == [
        ("system", "Be brief."),
        ("user", "u0"),
        ("assistant", "a0"),
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "now"),
    ]


def test_empty_instructions_send_no_system_message():
    conv = Conversation()
    conv.add_user(0, "hi")
    assert contents(conv.build_messages(NO_SYSTEM, 0)) == [("user", "hi")]


def test_current_text_for_an_unrecorded_turn_and_keyerror_without_it():
    conv = Conversation()
    chat(conv, 1)
    msgs = conv.build_messages(NO_SYSTEM, 1, current_text="speculated")
    assert contents(msgs)[-1] == ("user", "speculated")
    with pytest.raises(KeyError):
        conv.build_messages(NO_SYSTEM, 1)


def test_history_excludes_newer_and_unfinished_entries():
    conv = Conversation()
    chat(conv, 1)
    conv.add_user(1, "u1")
    conv.start_reply("r1", 1)  # still streaming: not sent, not shown
    conv.add_user(2, "u2")
    assert contents(conv.build_messages(NO_SYSTEM, 2)) == [
        ("user", "u0"),
        ("assistant", "a0"),
        ("user", "u1"),
        ("user", "u2"),
    ]
    # building for turn 1 ignores turn 2 even though it is recorded
    assert contents(conv.build_messages(NO_SYSTEM, 1))[-1] == ("user", "u1")
    assert [e["text"] for e in conv.history()] == ["u0", "a0", "u1", "u2"]


def test_replies_keep_their_place_after_their_turn_whatever_the_finish_order():
    conv = Conversation()
    conv.add_user(0, "q0")
    conv.start_reply("r0", 0)
    conv.add_user(1, "q1")
    conv.start_reply("r1", 1)
    conv.finish_reply("r1", "second")
    conv.finish_reply("r0", "first")
    assert conv.history() == [
        {"turn_order": 0, "role": "user", "text": "q0"},
        {"turn_order": 0, "role": "assistant", "text": "first"},
        {"turn_order": 1, "role": "user", "text": "q1"},
        {"turn_order": 1, "role": "assistant", "text": "second"},
    ]


def test_add_user_again_replaces_in_place():
    conv = Conversation()
    chat(conv, 2)
    conv.add_user(0, "again")
    assert [e["text"] for e in conv.history()] == ["again", "a0", "u1", "a1"]


# ---- formatted replacement, cancelled and truncated replies ---------------------------------


def test_formatted_text_replaces_the_turn_for_later_requests():
    conv = Conversation()
    chat(conv, 1)
    assert conv.replace_user(0, "U zero.") is True
    assert conv.replace_user(9, "nothing") is False
    conv.add_user(1, "next")
    assert contents(conv.build_messages(NO_SYSTEM, 1))[0] == ("user", "U zero.")


def test_cancelled_reply_keeps_only_what_was_delivered():
    conv = Conversation()
    conv.add_user(0, "q")
    conv.start_reply("r0", 0)
    conv.finish_reply("r0", "Paris is")
    assert conv.reply_text("r0") == "Paris is"
    conv.add_user(1, "q2")
    conv.start_reply("r1", 1)
    conv.finish_reply("r1", "")  # cancelled before any delta: no trace
    assert conv.reply_text("r1") is None
    conv.add_user(2, "q3")
    assert contents(conv.build_messages(NO_SYSTEM, 2)) == [
        ("user", "q"),
        ("assistant", "Paris is"),
        ("user", "q2"),
        ("user", "q3"),
    ]
    conv.finish_reply("unknown", "text")  # ignored
    assert conv.reply_text("unknown") is None


def test_truncate_keeps_a_prefix_and_rejects_anything_else():
    conv = Conversation()
    conv.add_user(0, "q")
    conv.start_reply("r0", 0)
    with pytest.raises(ValueError, match="streaming"):
        conv.truncate_reply("r0", "")
    assert conv.reply_text("r0") == ""
    conv.finish_reply("r0", "Paris is the capital of France.")
    with pytest.raises(ValueError, match="prefix"):
        conv.truncate_reply("r0", "Lyon")
    with pytest.raises(ValueError, match="response_id"):
        conv.truncate_reply("r9", "Paris")
    conv.truncate_reply("r0", "Paris is the")
    assert conv.reply_text("r0") == "Paris is the"
    with pytest.raises(ValueError, match="prefix"):
        conv.truncate_reply("r0", "Paris is the capital")  # longer than what is kept now
    conv.truncate_reply("r0", "Paris")
    assert conv.reply_text("r0") == "Paris"
    conv.truncate_reply("r0", "")
    assert conv.reply_text("r0") is None
    assert conv.history() == [{"turn_order": 0, "role": "user", "text": "q"}]


# ---- budget ---------------------------------------------------------------------------------


def test_budget_by_tokens_drops_the_oldest_whole_turns():
    conv = Conversation()
    # 40 characters each: 10 tokens + 4 overhead per message, 28 per exchange
    chat(conv, 20, user="u" * 38, reply="a" * 38)
    conv.add_user(20, "c" * 40)
    cfg = SessionConfig(instructions="", max_context_tokens=256)
    msgs = conv.build_messages(cfg, 20)
    # 256 - 14 (current) = 242 -> 8 exchanges of 28
    assert len(msgs) == 17
    assert msgs[0] == {"role": "user", "content": "u" * 38 + "12"}
    assert msgs[-1] == {"role": "user", "content": "c" * 40}
    assert total_tokens(conv, msgs) <= 256


def test_budget_never_leaves_an_orphan_reply_first():
    conv = Conversation()
    conv.add_user(0, "short")
    conv.start_reply("r0", 0)
    conv.finish_reply("r0", "x" * 60)
    conv.add_user(1, "y" * 900)
    cfg = SessionConfig(instructions="", max_context_tokens=256)
    # the reply alone (19 tokens) would fit, its question with it too; check no orphan ever
    for budget in range(256, 300):
        msgs = conv.build_messages(cfg.update({"max_context_tokens": budget}), 1)
        assert msgs[0]["role"] == "user"


def test_budget_by_turns():
    conv = Conversation()
    chat(conv, 10)
    conv.add_user(10, "now")
    msgs = conv.build_messages(SessionConfig(instructions="", max_context_turns=3), 10)
    assert contents(msgs) == [
        ("user", "u8"),
        ("assistant", "a8"),
        ("user", "u9"),
        ("assistant", "a9"),
        ("user", "now"),
    ]
    one = conv.build_messages(SessionConfig(instructions="", max_context_turns=1), 10)
    assert contents(one) == [("user", "now")]


def test_current_turn_is_sent_even_alone_over_budget():
    conv = Conversation()
    chat(conv, 3)
    conv.add_user(3, "z" * 5000)
    cfg = SessionConfig(instructions="sys", max_context_tokens=256)
    assert contents(conv.build_messages(cfg, 3)) == [("system", "sys"), ("user", "z" * 5000)]
    summary = cfg.update({"preset": "summary"})
    # the summary prompt folds the oldest unfolded turns first: the older ones are folded
    conv.set_summary("earlier", 2)
    msgs = conv.build_messages(summary, 3)
    assert msgs[-1]["content"].count("z" * 5000) == 1  # type: ignore[union-attr]
    assert "u2" not in str(msgs[-1]["content"])


# ---- templates ------------------------------------------------------------------------------


def test_per_turn_template_sends_the_turn_alone():
    conv = Conversation()
    chat(conv, 5)
    conv.add_user(5, "translate this")
    cfg = SessionConfig(instructions="Translate.").update({"preset": "per_turn"})
    assert contents(conv.build_messages(cfg, 5)) == [
        ("system", "Translate."),
        ("user", "translate this"),
    ]


def test_history_template_is_one_line_per_user_turn():
    conv = Conversation()
    chat(conv, 3)
    conv.add_user(3, "last")
    cfg = SessionConfig(instructions="", prompt="Transcript:\n{{history}}\nLatest: {{turn}}")
    msgs = conv.build_messages(cfg, 3)
    assert contents(msgs) == [("user", "Transcript:\nu0\nu1\nu2\nlast\nLatest: last")]
    few = conv.build_messages(cfg.update({"max_context_turns": 2}), 3)
    assert few[0]["content"] == "Transcript:\nu2\nlast\nLatest: last"


def test_history_template_respects_the_token_budget():
    conv = Conversation()
    for i in range(50):
        conv.add_user(i, f"{i:03d}" + "w" * 37)  # 40 chars: 10 tokens, 11 with the newline
    cfg = SessionConfig(instructions="", prompt="{{history}}", max_context_tokens=256)
    msgs = conv.build_messages(cfg, 49)
    lines = str(msgs[0]["content"]).split("\n")
    assert lines[-1].startswith("049") and lines[0].startswith("028")  # 22 lines of 11 = 242
    assert total_tokens(conv, msgs) <= 256


def test_placeholders_inside_the_turn_text_are_not_expanded():
    conv = Conversation()
    chat(conv, 1)
    conv.add_user(1, "say {{history}} literally")
    cfg = SessionConfig(instructions="", prompt="Q: {{turn}}")
    assert conv.build_messages(cfg, 1)[0]["content"] == "Q: say {{history}} literally"


def biggest_prompt() -> str:
    """The longest prompt the config accepts, with each placeholder once."""
    head = "Transcript:\n{{history}}\n\nLatest: {{turn}}\n\n"
    prompt = head + "p" * (MAX_PROMPT_CHARS - len(head))
    assert SessionConfig().update({"prompt": prompt}).prompt == prompt
    return prompt


@pytest.mark.parametrize("ratio", [None, (10_000, 1_250)])  # 4 and 8 characters per token
def test_the_biggest_prompt_with_a_long_turn_renders_bounded(ratio):
    conv = Conversation()
    if ratio:
        for _ in range(100):
            conv.observe_usage(*ratio)
    for i in range(300):
        conv.add_user(i, f"{i:04d}" + "h" * 996)  # a long history of 1,000-char turns
    turn = "t" * 1000
    conv.add_user(300, turn)
    prompt = biggest_prompt()
    cfg = SessionConfig().update({"prompt": prompt})
    content = str(conv.build_messages(cfg, 300)[-1]["content"])
    assert content.count(turn) == 2  # once for {{turn}}, once as the history's last line
    assert len(content) < 100_000
    budget_chars = cfg.max_context_tokens * conv.chars_per_token
    assert len(content) <= len(prompt) + 2 * len(turn) + budget_chars


def test_a_history_budget_bounds_the_rendered_history():
    conv = Conversation()
    for i in range(300):
        conv.add_user(i, "h" * 1000)
    conv.add_user(300, "now")
    cfg = SessionConfig(
        instructions="", prompt="{{history}}", max_context_tokens=20_000, max_context_turns=1000
    )
    content = str(conv.build_messages(cfg, 300)[0]["content"])
    assert 70_000 < len(content) <= 20_000 * conv.chars_per_token


def test_a_repeated_placeholder_is_filled_once_even_without_validation():
    # The old bug: {{turn}} x 100,000 with a 1,000-char turn built a 100-million-char request.
    # The config refuses such a prompt; a config built directly still renders one copy.
    conv = Conversation()
    conv.add_user(0, "older")
    conv.add_user(1, "t" * 1000)
    cfg = SessionConfig(instructions="", prompt="{{turn}}" * 100_000 + "{{history}}" * 3)
    content = str(conv.build_messages(cfg, 1)[0]["content"])
    assert content == "t" * 1000 + "older\n" + "t" * 1000


# ---- calibration and bounds -----------------------------------------------------------------


def test_calibration_moves_the_estimate_and_is_clamped():
    conv = Conversation()
    assert conv.estimate_tokens("x" * 400) == 100
    conv.observe_usage(1000, 500)  # 2 chars per token observed
    assert conv.chars_per_token == pytest.approx(3.6)
    assert conv.estimate_tokens("x" * 400) == 112
    for _ in range(100):
        conv.observe_usage(1000, 1000)  # 1 char per token: below the floor
    assert conv.chars_per_token == pytest.approx(1.5)
    for _ in range(100):
        conv.observe_usage(10_000, 10)
    assert conv.chars_per_token == pytest.approx(8.0)
    conv.observe_usage(0, 10)
    conv.observe_usage(10, 0)
    assert conv.chars_per_token == pytest.approx(8.0)
    assert conv.estimate_tokens("") == 0


def test_max_entries_bound_drops_the_oldest():
    conv = Conversation(max_entries=10)
    chat(conv, 30)
    assert len(conv) == 10
    assert conv.history()[0]["text"] == "u25"
    conv.finish_reply("r0", "late")  # dropped long ago: ignored
    assert len(conv) == 10
    with pytest.raises(ValueError):
        Conversation(max_entries=1)


# ---- property: the request fits the budget and ends with the current turn --------------------

# Short random texts, and long ones (hypothesis favours short texts; budgets need long ones).
LONG = st.integers(0, 400).map(lambda n: ("ab {c}. " * 60)[:n])
TEXT = st.one_of(st.text(alphabet="ab {}.", max_size=40), LONG, LONG)
TURNS = st.lists(
    st.tuples(TEXT, TEXT, st.sampled_from(["done", "cancelled", "streaming", "truncated"])),
    min_size=1,
    max_size=40,
)
PROMPTS = st.sampled_from([None, "{{turn}}", "H:\n{{history}}\nNow: {{turn}}", "{{history}}"])


@settings(max_examples=200, deadline=None)
@given(
    turns=TURNS,
    current=TEXT,
    prompt=PROMPTS,
    instructions=st.text(alphabet="s ", max_size=300),
    max_tokens=st.integers(256, 1200),
    max_turns=st.integers(1, 40),
    ratio=st.sampled_from([None, (1000, 200), (1000, 900)]),
)
@example(  # a long conversation under pressure, for each context style
    turns=[("ab " * 100, "cd " * 100, "done")] * 12,
    current="now",
    prompt=None,
    instructions="",
    max_tokens=256,
    max_turns=40,
    ratio=None,
)
@example(
    turns=[("ab " * 100, "cd " * 100, "done")] * 12,
    current="now",
    prompt="{{history}}",
    instructions="s",
    max_tokens=300,
    max_turns=40,
    ratio=(1000, 200),
)
def test_request_fits_the_budget_and_ends_with_the_current_turn(
    turns, current, prompt, instructions, max_tokens, max_turns, ratio
):
    conv = Conversation(max_entries=50)
    if ratio:
        conv.observe_usage(*ratio)
    turn = 0
    for turn, (question, answer, fate) in enumerate(turns):
        conv.add_user(turn, question)
        conv.start_reply(f"r{turn}", turn)
        if fate == "done":
            conv.finish_reply(f"r{turn}", answer)
        elif fate == "cancelled":
            conv.finish_reply(f"r{turn}", answer[: len(answer) // 2])
        elif fate == "truncated" and answer:
            conv.finish_reply(f"r{turn}", answer)
            conv.truncate_reply(f"r{turn}", answer[:3])
    turn += 1
    conv.add_user(turn, current)
    cfg = SessionConfig(
        instructions=instructions,
        prompt=prompt,
        max_context_tokens=max_tokens,
        max_context_turns=max_turns,
    )
    msgs = conv.build_messages(cfg, turn)
    last = msgs[-1]
    assert last["role"] == "user"
    if prompt is None:
        assert last["content"] == current
        history_turns = sum(1 for m in msgs[:-1] if m["role"] == "user")
        lone = history_turns == 0
        assert history_turns <= max_turns - 1
        if len(msgs) > 1 + bool(instructions):
            assert msgs[1 if instructions else 0]["role"] == "user"  # no orphan reply first
    else:
        content = str(last["content"])
        if prompt == "{{turn}}":
            assert content == current
            lone = True
        else:
            history = content.removeprefix("H:\n").rsplit("\nNow: ", 1)[0]
            assert history.endswith(current)
            lines = history[: len(history) - len(current)].rstrip("\n")
            lone = lines == ""
            assert history.count("\n") - current.count("\n") <= max_turns - 1
    assert msgs[0]["role"] == ("system" if instructions else "user")
    if not lone:
        assert total_tokens(conv, msgs) <= max_tokens
