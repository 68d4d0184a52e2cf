"""Assemble streamed ``chat.completion.chunk`` objects into one completion. Pure: no I/O.

Feed each decoded chunk dict to :meth:`ChunkAssembler.add`; read :meth:`ChunkAssembler.result`
at any time (it reflects everything seen so far). Handles, per choice index (``n > 1``):

* text in ``delta.content``; refusals in ``delta.refusal``; reasoning in
  ``delta.reasoning_content`` (DeepSeek) or ``delta.reasoning`` (OpenRouter, Groq);
* tool calls keyed by ``index``: the OpenAI shape (id/name first, argument fragments after),
  a whole call in one delta (Groq), a blank first delta whose id/name arrive later, the id
  nested as ``function.id``, and deltas that omit ``index`` (treated as "same call unless a
  new id appears");
* ``finish_reason`` (last non-null wins; some servers repeat it or never send one);
* ``usage`` wherever it appears (a ``choices: []`` chunk, the last content chunk, Groq's
  ``x_groq.usage``); the last non-null one wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["AssembledChoice", "ChunkAssembler", "StreamResult", "ToolCall", "ToolFunction"]


@dataclass(slots=True)
class ToolFunction:
    """The function part of a tool call; ``arguments`` is a JSON *string*."""

    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class ToolCall:
    """One assembled tool call, shaped like OpenAI's ``message.tool_calls[i]``."""

    id: str = ""
    type: str = "function"
    function: ToolFunction = field(default_factory=ToolFunction)
    index: int = 0

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def arguments(self) -> str:
        return self.function.arguments

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI wire shape, ready to be appended to the next request's history."""
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.function.name, "arguments": self.function.arguments},
        }


@dataclass(slots=True)
class AssembledChoice:
    """Everything one choice index produced."""

    index: int
    role: str = "assistant"
    text: str = ""
    refusal: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation history (OpenAI shape)."""
        msg: dict[str, Any] = {"role": self.role, "content": self.text or None}
        if self.tool_calls:
            msg["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        return msg


@dataclass(slots=True)
class StreamResult:
    """The assembled completion of a stream. Top-level fields mirror choice 0."""

    choices: list[AssembledChoice]
    usage: dict[str, Any] | None = None
    request_id: str | None = None
    id: str | None = None
    model: str | None = None
    chunks: int = 0

    def _first(self) -> AssembledChoice | None:
        return self.choices[0] if self.choices else None

    @property
    def text(self) -> str:
        first = self._first()
        return first.text if first else ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        first = self._first()
        return first.tool_calls if first else []

    @property
    def finish_reason(self) -> str | None:
        first = self._first()
        return first.finish_reason if first else None

    @property
    def refusal(self) -> str | None:
        first = self._first()
        return first.refusal if first else None

    @property
    def reasoning(self) -> str | None:
        first = self._first()
        return first.reasoning if first else None


class _ChoiceState:
    __slots__ = ("calls", "finish", "index", "last_call", "reasoning", "refusal", "role", "text")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.text: list[str] = []
        self.refusal: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.calls: dict[int, ToolCall] = {}
        self.last_call: ToolCall | None = None
        self.finish: str | None = None


class ChunkAssembler:
    """Accumulates chunk dicts; cheap per chunk (a few dict lookups and list appends)."""

    __slots__ = ("_choices", "_text0", "chunks", "id", "model", "request_id", "usage")

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self._text0: str | None = ""
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.request_id: str | None = None
        self.id: str | None = None
        self.model: str | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one decoded chunk into the running state."""
        self.chunks += 1
        if not self.id:
            self.id = chunk.get("id") or None
        if not self.model:
            self.model = chunk.get("model") or None
        if self.request_id is None:
            rid = chunk.get("request_id")
            if isinstance(rid, str) and rid:
                self.request_id = rid
        usage = chunk.get("usage")
        if usage is None:
            extra = chunk.get("x_groq")
            if isinstance(extra, dict):
                usage = extra.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return
        for choice in choices:
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index") or 0
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState(index)
        delta = choice.get("delta") or choice.get("message")
        if delta:
            role = delta.get("role")
            if role:
                state.role = role
            content = delta.get("content")
            if content:
                state.text.append(content)
                if index == 0:
                    self._text0 = None
            refusal = delta.get("refusal")
            if refusal:
                if state.refusal is None:
                    state.refusal = []
                state.refusal.append(refusal)
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                if state.reasoning is None:
                    state.reasoning = []
                state.reasoning.append(reasoning)
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    self._add_call(state, call)
        finish = choice.get("finish_reason")
        if finish:
            state.finish = finish

    @staticmethod
    def _add_call(state: _ChoiceState, call: dict[str, Any]) -> None:
        fn = call.get("function") or {}
        call_id = call.get("id") or fn.get("id") or ""
        index = call.get("index")
        if index is None:
            # No index: a new id starts a new call, otherwise continue the last one.
            last = state.last_call
            if last is not None and (not call_id or not last.id or call_id == last.id):
                index = last.index
            else:
                index = len(state.calls)
        tc = state.calls.get(index)
        if tc is None:
            tc = state.calls[index] = ToolCall(index=index)
        state.last_call = tc
        if call_id and not tc.id:
            tc.id = call_id
        ctype = call.get("type")
        if ctype:
            tc.type = ctype
        name = fn.get("name")
        if name and not tc.function.name:
            tc.function.name = name
        args = fn.get("arguments")
        if args:
            if isinstance(args, dict):  # a few servers send parsed arguments
                args = orjson.dumps(args).decode()
            tc.function.arguments += args

    def text_of(self, index: int = 0) -> str:
        """The text assembled so far for choice ``index``."""
        state = self._choices.get(index)
        if state is None:
            return ""
        if index == 0:
            if self._text0 is None:
                self._text0 = "".join(state.text)
            return self._text0
        return "".join(state.text)

    def result(self) -> StreamResult:
        """Snapshot of the completion assembled so far."""
        choices = []
        for index in sorted(self._choices):
            st = self._choices[index]
            choices.append(
                AssembledChoice(
                    index=index,
                    role=st.role,
                    text="".join(st.text),
                    refusal="".join(st.refusal) if st.refusal is not None else None,
                    reasoning="".join(st.reasoning) if st.reasoning is not None else None,
                    tool_calls=[
                        ToolCall(
                            id=tc.id,
                            type=tc.type,
                            function=ToolFunction(tc.function.name, tc.function.arguments),
                            index=tc.index,
                        )
                        for _, tc in sorted(st.calls.items())
                    ],
                    finish_reason=st.finish,
                )
            )
        return StreamResult(
            choices=choices,
            usage=self.usage,
            request_id=self.request_id,
            id=self.id,
            model=self.model,
            chunks=self.chunks,
        )
