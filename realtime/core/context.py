"""Rolling conversation context: what each request carries, within a budget. Pure.

The conversation is a bounded, ordered log of user turns (recorded when a turn fires) and
assistant replies (a placeholder when the response is created, the text when it ends). A
request holds the instructions, then as many of the most recent turns as fit in
`max_context_tokens` and `max_context_turns`, oldest dropped first, never the current turn
(PROTOCOL.md "Rolling context").

Two rules keep the history equal to what the user actually heard (voice-frameworks.md section
3, pain point 5): a cancelled or failed reply is kept only as far as it was delivered, and
`response.truncate` keeps only a prefix of it. Context can never grow without bound: the log
holds at most `max_entries` entries, and a request is built by walking back from the newest
entry, so its cost follows the window, not the length of the session.

Long conversations (PROTOCOL.md "Long conversations"): user turns keep their speaker label
(`speaker_line` renders it); the latest completed summary and the newest turn folded into it
are kept here. `build_summary` makes the next refine step (the summary plus the turns not yet
folded, oldest first, in chunks within the budget); `build_fold` does the same for an
assistant's turns that left the context window (`context_strategy: summarize`).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from realtime.core.config import SessionConfig

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "NO_SUMMARY",
    "UNKNOWN_SPEAKERS",
    "Conversation",
    "SummaryRequest",
    "speaker_line",
]

# Chat formats wrap each message in a few tokens of role markers; counted per message.
MESSAGE_OVERHEAD_TOKENS = 4
_RATIO_START = 4.0  # characters per token of English text, before any usage is seen
_RATIO_MIN, _RATIO_MAX = 1.5, 8.0
_RATIO_ALPHA = 0.2  # weight of a new observation in the moving average
_PLACEHOLDER = re.compile(r"\{\{(turn|history|summary)\}\}")
NO_SUMMARY = "(none yet: the conversation has just begun)"
MEMORY_NOTE = "Summary of the earlier part of this conversation (no longer shown in full):\n"
FOLD_INSTRUCTIONS = (
    "You maintain the memory of a long conversation between a user and an assistant. "
    "Given the summary so far and the next part of the conversation, write the new whole "
    "summary: every fact, name, preference, decision and open request worth remembering, "
    "in short plain sentences. Keep what the summary so far says unless the conversation "
    "changed it. Answer with the summary only."
)  # {{summary}} before the first


@dataclass(slots=True)
class _Entry:
    turn_order: int
    role: str  # "user" | "assistant"
    text: str
    finished: bool = True  # a reply is unfinished while it streams: never sent, never shown
    speaker: str | None = None  # a user turn's speaker_label, when diarized


# Labels AssemblyAI gives a turn too short to attribute: rendered as an unknown speaker.
UNKNOWN_SPEAKERS = frozenset({"UNKNOWN", "PENDING", ""})


def speaker_line(text: str, speaker: str | None) -> str:
    """A transcript line: `A: text` for a known speaker, `?: text` for UNKNOWN/PENDING, and
    the bare text when the turn carried no label (speaker labels off)."""
    if speaker is None:
        return text
    return f"{'?' if speaker.upper() in UNKNOWN_SPEAKERS else speaker}: {text}"


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    """The messages of one summary step and the turns it folds in: every unfolded turn up to
    `upto`; `partial` when newer unfolded turns did not fit (the next step takes them)."""

    messages: list[dict[str, object]]
    upto: int
    partial: bool


_Key = tuple[str, int | str]  # ("u", turn_order) or ("a", response_id)


class Conversation:
    """The history of one session and the request builder over it."""

    def __init__(self, *, max_entries: int = 400) -> None:
        if max_entries < 2:
            raise ValueError("max_entries must be >= 2")
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()  # oldest first
        self._ratio = _RATIO_START
        # The incremental summary (PROTOCOL.md "Long conversations"): the latest completed
        # one, the newest turn folded into it, and a version bumped at each new summary.
        self.summary: str | None = None
        self.folded_upto = -1
        self.summary_version = 0
        self.window_start: int | None = None  # the oldest turn of the last dialogue window

    # ---- recording ------------------------------------------------------------------------

    def add_user(self, turn_order: int, text: str, speaker: str | None = None) -> None:
        """Record a fired turn. A turn already recorded keeps its place, with the new text."""
        key: _Key = ("u", turn_order)
        entry = self._entries.get(key)
        if entry is not None:
            entry.text = text
            if speaker is not None:
                entry.speaker = speaker
            return
        self._append(key, _Entry(turn_order, "user", text, speaker=speaker))

    def relabel(self, turn_order: int, speaker: str) -> bool:
        """Set a recorded turn's speaker (a SpeakerRevision). False if it is not recorded."""
        entry = self._entries.get(("u", turn_order))
        if entry is None:
            return False
        entry.speaker = speaker
        return True

    def replace_user(self, turn_order: int, text: str) -> bool:
        """Replace a recorded turn's text (its formatted copy). False if it is not recorded."""
        entry = self._entries.get(("u", turn_order))
        if entry is None:
            return False
        entry.text = text
        return True

    def start_reply(self, response_id: str, turn_order: int) -> None:
        """Reserve the reply's place after its turn; it is left out until `finish_reply`."""
        self._append(("a", response_id), _Entry(turn_order, "assistant", "", finished=False))

    def finish_reply(self, response_id: str, text: str) -> None:
        """The reply ended: `text` is its full text (done) or what was delivered (cancelled,
        failed). An empty text removes it. An unknown id (never started, or already dropped
        by the bound) is ignored."""
        key: _Key = ("a", response_id)
        entry = self._entries.get(key)
        if entry is None:
            return
        if not text:
            del self._entries[key]
            return
        entry.text, entry.finished = text, True

    def truncate_reply(self, response_id: str, text: str) -> None:
        """Keep only the prefix `text` of a finished reply (what the user heard).

        Raises ValueError if the reply is unknown, still streaming, or `text` is not a prefix
        of the text kept so far. An empty `text` removes the reply.
        """
        key: _Key = ("a", response_id)
        entry = self._entries.get(key)
        if entry is None:
            raise ValueError("no reply with this response_id in the history")
        if not entry.finished:
            raise ValueError("the reply is still streaming")
        if not entry.text.startswith(text):
            raise ValueError("text is not a prefix of the reply")
        self.finish_reply(response_id, text)

    def reply_text(self, response_id: str) -> str | None:
        """The reply's kept text ("" while it streams); None if it is not in the history."""
        entry = self._entries.get(("a", response_id))
        return None if entry is None else entry.text

    def history(self, live: Mapping[str, str] | None = None) -> list[dict[str, object]]:
        """Every finished entry, oldest first, for a joining connection's `session.created`.

        `live` maps the response_id of each reply still streaming to its text so far: those
        replies are listed in their place with `"status": "in_progress"`, so a late joiner's
        text plus the deltas that follow adds up to the reply's `response.done` text.
        """
        out: list[dict[str, object]] = []
        for key, e in self._entries.items():
            if e.finished:
                if e.text:
                    item: dict[str, object] = {
                        "turn_order": e.turn_order,
                        "role": e.role,
                        "text": e.text,
                    }
                    if e.speaker is not None and e.speaker.upper() not in UNKNOWN_SPEAKERS:
                        item["speaker"] = e.speaker
                    out.append(item)
            elif live is not None and key[0] == "a" and key[1] in live:
                out.append(
                    {
                        "turn_order": e.turn_order,
                        "role": "assistant",
                        "response_id": key[1],
                        "text": live[str(key[1])],
                        "status": "in_progress",
                    }
                )
        return out

    # ---- the incremental summary ----------------------------------------------------------

    def set_summary(self, text: str, upto: int) -> None:
        """A summary step completed: `text` is the new whole summary, folding every turn up
        to and including `upto`."""
        self.summary = text
        self.folded_upto = max(self.folded_upto, upto)
        self.summary_version += 1

    def newest_user(self) -> tuple[int, str] | None:
        """The newest recorded turn (turn_order, text), or None."""
        for entry in reversed(self._entries.values()):
            if entry.role == "user" and entry.text:
                return entry.turn_order, entry.text
        return None

    def user_turns_after(self, turn_order: int) -> int:
        """How many recorded turns are newer than `turn_order` (walks back from the newest)."""
        count = 0
        for entry in reversed(self._entries.values()):
            if entry.role != "user":
                continue
            if entry.turn_order <= turn_order:
                break
            count += 1
        return count

    def build_summary(
        self, cfg: SessionConfig, current: tuple[int, str, str | None] | None = None
    ) -> SummaryRequest | None:
        """The next summary step under `cfg.prompt` (which renders `{{summary}}`), or None
        when every recorded turn is folded.

        `{{summary}}` is the latest summary, `{{history}}` the turns not yet folded, oldest
        first, one `speaker_line` each, as many as fit in `max_context_tokens` and
        `max_context_turns` (never fewer than one), and `{{turn}}` the last of them. The
        turns that do not fit are left for the next step, never dropped: folding in chunks.
        The summary takes at most half of the room left by the fixed text; a longer one is
        cut. `current` is an unrecorded turn to fold last (turn_order, text, speaker).
        """
        template = cfg.prompt or "{{summary}}\n{{history}}"
        turns = [
            (e.turn_order, e.text, e.speaker)
            for e in self._entries.values()
            if e.role == "user" and e.text and e.turn_order > self.folded_upto
        ]
        if (
            current is not None
            and current[0] > self.folded_upto
            and ("u", current[0]) not in self._entries
        ):
            turns.append(current)
        if not turns:
            return None
        messages: list[dict[str, object]] = []
        if cfg.instructions:
            messages.append({"role": "system", "content": cfg.instructions})
        budget = cfg.max_context_tokens - sum(self._cost(str(m["content"])) for m in messages)
        budget -= self._cost(_PLACEHOLDER.sub("", template))
        summary = self.summary or NO_SUMMARY
        if "{{summary}}" in template:
            cap = max(budget // 2, 0)
            if self.estimate_tokens(summary) > cap:
                summary = summary[: int(cap * self._ratio)]
            budget -= self.estimate_tokens(summary)
        has_turn = "{{turn}}" in template
        lines: list[str] = []
        upto, last_text, used = -1, "", 0
        for turn_order, text, speaker in turns[: cfg.max_context_turns]:
            line = speaker_line(text, speaker)
            cost = self.estimate_tokens(line) + 1  # +1: the newline
            turn_cost = self.estimate_tokens(text) if has_turn else 0
            if lines and used + cost + turn_cost > budget:
                break
            lines.append(line)
            used += cost
            upto, last_text = turn_order, text
        values = {"turn": last_text, "history": "\n".join(lines), "summary": summary}

        def fill(match: re.Match[str]) -> str:
            return values.pop(match.group(1), "")

        messages.append({"role": "user", "content": _PLACEHOLDER.sub(fill, template)})
        return SummaryRequest(messages, upto, partial=len(lines) < len(turns))

    def _capped(self, text: str, tokens: int) -> str:
        """`text`, cut to at most `tokens` estimated tokens."""
        if self.estimate_tokens(text) <= tokens:
            return text
        return text[: max(int(tokens * self._ratio), 0)]

    def build_fold(self, cfg: SessionConfig) -> SummaryRequest | None:
        """The next memory fold (`context_strategy: summarize`): the summary so far and the
        turns (with their replies) that fell out of the last dialogue window and are not
        folded yet, oldest first, whole turns, as many as fit in `max_context_tokens` (never
        fewer than one); None when there are none."""
        if self.window_start is None:
            return None
        groups: list[tuple[int, list[str]]] = []
        for e in self._entries.values():
            if not (self.folded_upto < e.turn_order < self.window_start):
                continue
            if not (e.finished and e.text):
                continue
            line = ("User: " if e.role == "user" else "Assistant: ") + e.text
            if groups and groups[-1][0] == e.turn_order:
                groups[-1][1].append(line)
            else:
                groups.append((e.turn_order, [line]))
        if not groups:
            return None
        budget = cfg.max_context_tokens - self._cost(FOLD_INSTRUCTIONS)
        head = "Summary so far:\n{}\n\nThe conversation since, oldest first:\n"
        summary = self._capped(self.summary or NO_SUMMARY, budget // 2)
        budget -= self._cost(head.format(summary))
        lines: list[str] = []
        upto = -1
        for turn_order, group in groups[: cfg.max_context_turns]:
            cost = sum(self.estimate_tokens(line) + 1 for line in group)
            if lines and cost > budget:
                break
            budget -= cost
            lines += group
            upto = turn_order
        messages: list[dict[str, object]] = [
            {"role": "system", "content": FOLD_INSTRUCTIONS},
            {"role": "user", "content": head.format(summary) + "\n".join(lines)},
        ]
        return SummaryRequest(messages, upto, partial=upto != groups[-1][0])

    def __len__(self) -> int:
        return len(self._entries)

    def _append(self, key: _Key, entry: _Entry) -> None:
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    # ---- token estimate -------------------------------------------------------------------

    def estimate_tokens(self, text: str) -> int:
        """Estimated tokens of `text`: characters divided by the calibrated ratio, rounded up."""
        return math.ceil(len(text) / self._ratio)

    def observe_usage(self, prompt_chars: int, prompt_tokens: int) -> None:
        """Calibrate the estimate with a request's real usage (moving average, clamped)."""
        if prompt_chars <= 0 or prompt_tokens <= 0:
            return
        sample = min(max(prompt_chars / prompt_tokens, _RATIO_MIN), _RATIO_MAX)
        ratio = self._ratio + _RATIO_ALPHA * (sample - self._ratio)
        self._ratio = min(max(ratio, _RATIO_MIN), _RATIO_MAX)

    @property
    def chars_per_token(self) -> float:
        return self._ratio

    def _cost(self, text: str) -> int:
        return self.estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS

    # ---- building a request ---------------------------------------------------------------

    def build_messages(
        self,
        cfg: SessionConfig,
        turn_order: int,
        current_text: str | None = None,
        speaker: str | None = None,
    ) -> list[dict[str, object]]:
        """The chat messages of the request for turn `turn_order`.

        `current_text` is the turn's text when it is not recorded (a speculation); otherwise
        the recorded text is used (KeyError if there is none). Only entries of older turns
        form the history. The estimated total stays within `cfg.max_context_tokens` and the
        turns within `cfg.max_context_turns`, except that the current turn is always sent,
        even alone over budget. In characters, the request is at most the instructions, the
        prompt, twice the turn's text (with a template that has both placeholders) and the
        history budget (`max_context_tokens` times at most 8 characters per token).
        """
        text = self._current_text(turn_order, current_text)
        if cfg.prompt is not None and "{{summary}}" in cfg.prompt:
            step = self.build_summary(cfg, (turn_order, text, speaker))
            if step is not None:
                return step.messages
        messages: list[dict[str, object]] = []
        if cfg.instructions:
            messages.append({"role": "system", "content": cfg.instructions})
        budget = cfg.max_context_tokens - sum(self._cost(str(m["content"])) for m in messages)
        if cfg.prompt is None:
            budget -= self._cost(text)
            if cfg.context_strategy == "summarize" and self.summary:
                note = MEMORY_NOTE + self._capped(self.summary, budget // 2)
                messages.append({"role": "system", "content": note})
                budget -= self._cost(note)
            messages += self._dialogue(turn_order, budget, cfg.max_context_turns - 1)
            messages.append({"role": "user", "content": text})
        else:
            content = self._render(
                cfg.prompt, turn_order, text, budget, cfg.max_context_turns, speaker
            )
            messages.append({"role": "user", "content": content})
        return messages

    def _current_text(self, turn_order: int, current_text: str | None) -> str:
        if current_text is not None:
            return current_text
        entry = self._entries.get(("u", turn_order))
        if entry is None:
            raise KeyError(f"turn {turn_order} is not recorded and no text was given")
        return entry.text

    def _older(self, turn_order: int) -> Iterator[_Entry]:
        """Finished, non-empty entries of turns before `turn_order`, newest first."""
        for entry in reversed(self._entries.values()):
            if entry.turn_order < turn_order and entry.finished and entry.text:
                yield entry

    def _dialogue(self, turn_order: int, budget: int, max_turns: int) -> list[dict[str, object]]:
        """Prior turns as user/assistant messages, whole turns only, newest kept first.

        A turn (its user message and the replies after it) goes in whole or not at all, so
        the history never starts with an orphan assistant message.
        """
        kept: list[_Entry] = []
        group: list[_Entry] = []  # replies seen (walking back) before their user message
        group_cost = turns = 0
        for entry in self._older(turn_order):
            if turns >= max_turns:
                break
            group.append(entry)
            group_cost += self._cost(entry.text)
            if entry.role != "user":
                continue
            if group_cost > budget:
                break
            budget -= group_cost
            kept += group
            group, group_cost, turns = [], 0, turns + 1
        self.window_start = kept[-1].turn_order if kept else turn_order
        return [{"role": e.role, "content": e.text} for e in reversed(kept)]

    def _render(
        self,
        template: str,
        turn_order: int,
        text: str,
        budget: int,
        max_turns: int,
        speaker: str | None = None,
    ) -> str:
        """Fill the prompt template in one pass (a turn's text that happens to contain a
        placeholder is not expanded again).

        Each placeholder is filled once: config.py refuses a prompt that repeats one, and a
        repeat in a config built without validation is dropped. So the content is at most the
        template, plus the turn's text, plus the history window (which ends with the turn's
        text again): a long turn or prompt can never be multiplied.
        """
        history = ""
        summary = ""
        if "{{summary}}" in template:  # only when nothing is left to fold (build_summary)
            summary = self._capped(self.summary or NO_SUMMARY, budget // 2)
        if "{{history}}" in template:
            fixed = _PLACEHOLDER.sub("", template) + (text if "{{turn}}" in template else "")
            fixed += summary
            room = budget - self._cost(fixed)
            lines = self._transcript(turn_order, text, room, max_turns, speaker)
            history = "\n".join(lines)
        values = {"turn": text, "history": history, "summary": summary}

        def fill(match: re.Match[str]) -> str:
            return values.pop(match.group(1), "")  # the first copy only

        return _PLACEHOLDER.sub(fill, template)

    def _transcript(
        self, turn_order: int, text: str, budget: int, max_turns: int, speaker: str | None = None
    ) -> list[str]:
        """User turns up to the current one, one line each, oldest first, within `budget`
        and `max_turns` lines (the current turn's line is always there).

        Assistant replies are left out: the template's reader is summarising what was said,
        and its own earlier answers would be echoed back into the summary.
        """
        if speaker is None:
            current = self._entries.get(("u", turn_order))
            speaker = current.speaker if current is not None else None
        lines = [speaker_line(text, speaker)]
        budget -= self.estimate_tokens(lines[0]) + 1
        for entry in self._older(turn_order):
            if len(lines) >= max_turns:
                break
            if entry.role != "user":
                continue
            line = speaker_line(entry.text, entry.speaker)
            cost = self.estimate_tokens(line) + 1  # +1: the newline
            if cost > budget:
                break
            budget -= cost
            lines.append(line)
        lines.reverse()
        return lines
