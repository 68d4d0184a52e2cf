"""Request, response and chunk models for the LLM Gateway (reference section 3).

* Request and response envelopes are pydantic v2 models with ``extra="allow"``: fields the
  gateway adds tomorrow pass through both ways. They are built once per request, never per
  token.
* Stream chunks are *not* pydantic models: :class:`ChatChunk` is a slotted attribute view over
  the ``orjson``-decoded dict (``chunk.choices[0].delta.content``; ``chunk.raw`` is the dict).
* :func:`validate_request` turns a dict or model into the JSON bytes to send, or raises
  :class:`~gateway_client.errors.InvalidRequestError` naming the failing field -- before any
  network call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway_client.errors import InvalidRequestError

__all__ = [
    "AssistantMessage",
    "ChatChunk",
    "ChatCompletion",
    "ChatRequest",
    "Choice",
    "ContentPart",
    "FallbackConfig",
    "FallbackModel",
    "FunctionCall",
    "FunctionDef",
    "JsonSchemaFormat",
    "PostProcessingStep",
    "ReasoningConfig",
    "ResponseFormat",
    "ResponseMessage",
    "SystemMessage",
    "Tool",
    "ToolCallModel",
    "ToolChoiceFunction",
    "ToolMessage",
    "Usage",
    "UserMessage",
    "completion_to_chunk",
    "validate_request",
]


class _Open(BaseModel):
    """Base: unknown fields are kept and re-emitted; models are mutable plain records."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------- request


class ContentPart(_Open):
    """A content part; the gateway documents only ``{"type": "text", "text": ...}``."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_required(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


Content = str | list[ContentPart]


class FunctionCall(_Open):
    name: str
    arguments: str = ""


class ToolCallModel(_Open):
    """``message.tool_calls[i]``; ``arguments`` is a JSON string."""

    id: str | None = None
    type: str = "function"
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallModel] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Open):
    role: Literal["tool"]
    tool_call_id: str = Field(min_length=1)
    content: Content


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


class FunctionDef(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class _ToolChoiceName(_Open):
    name: str = Field(min_length=1)


class ToolChoiceFunction(_Open):
    type: Literal["function"] = "function"
    function: _ToolChoiceName


class JsonSchemaFormat(_Open):
    name: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["json_schema", "json_object", "text"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class FallbackModel(_Open):
    """One gateway-side fallback: ``model`` plus any request fields to override."""

    model: str = Field(min_length=1)


class FallbackConfig(_Open):
    retry: StrictBool | None = None
    depth: StrictInt | None = Field(default=None, ge=0, le=2)


class PostProcessingStep(_Open):
    type: Literal["json-repair"]


class ReasoningConfig(_Open):
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    max_tokens: int | None = Field(default=None, ge=1)


class ChatRequest(_Open):
    """The body of ``POST /v1/chat/completions`` (gateway extensions included).

    ``model`` accepts bare ids (``claude-sonnet-4-6``) and ``provider/model`` ids alike.
    Exactly one of ``messages`` / ``prompt`` is required. ``async`` is spelled
    ``async_`` in Python and serialised by alias.
    """

    model: str = Field(min_length=1)
    messages: list[Message] | None = None
    prompt: str | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: StrictInt | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: StrictBool | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    response_format: ResponseFormat | None = None
    fallbacks: list[FallbackModel] | None = None
    fallback_config: FallbackConfig | None = None
    post_processing_steps: list[PostProcessingStep] | None = None
    transcript_id: str | None = Field(default=None, min_length=1)
    model_region: Literal["global"] | None = None
    reasoning: ReasoningConfig | None = None
    async_: StrictBool | None = Field(default=None, alias="async")

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str) -> str:
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("model id must not contain whitespace")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> ChatRequest:
        if self.messages is None and self.prompt is None:
            raise ValueError("messages: one of messages or prompt is required")
        if self.messages is not None and not self.messages:
            raise ValueError("messages: must not be empty")
        return self

    def wants_json_repair(self) -> bool:
        return any(step.type == "json-repair" for step in self.post_processing_steps or ())


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's union-member tags (e.g. "user", "str") from the location.
        loc = ".".join(
            str(p)
            for p in err["loc"]
            if not (isinstance(p, str) and (p in ("system", "user", "assistant", "tool")))
            and not (isinstance(p, str) and ("[" in p or p in ("str", "list", "function-after")))
        )
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate_request(body: Mapping[str, Any] | ChatRequest) -> ChatRequest:
    """Validate a request dict (or re-check a model); raise InvalidRequestError on failure."""
    try:
        if isinstance(body, ChatRequest):
            return ChatRequest.model_validate(body.model_dump(by_alias=True, exclude_unset=True))
        if not isinstance(body, Mapping):
            raise InvalidRequestError("invalid request: body must be a mapping")
        return ChatRequest.model_validate(dict(body))
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid request: {_describe(exc)}") from None


def request_dict(req: ChatRequest) -> dict[str, Any]:
    """The wire form of a validated request: only fields the caller set, extras kept."""
    return req.model_dump(by_alias=True, exclude_unset=True, mode="json")


# -------------------------------------------------------------------------- response


class Usage(_Open):
    """Token usage; the gateway sends input/output_tokens, OpenAI prompt/completion_tokens."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @property
    def inputs(self) -> int | None:
        return self.input_tokens if self.input_tokens is not None else self.prompt_tokens

    @property
    def outputs(self) -> int | None:
        if self.output_tokens is not None:
            return self.output_tokens
        return self.completion_tokens


class ResponseMessage(_Open):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallModel] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    thinking: str | None = None
    reasoning_content: str | None = None


class Choice(_Open):
    index: int = 0
    message: ResponseMessage = Field(default_factory=ResponseMessage)
    finish_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _sibling_tool_calls(cls, data: Any) -> Any:
        # Mar-2026 docs put tool_calls beside message, not inside it (reference 3.4).
        if isinstance(data, dict) and data.get("tool_calls"):
            message = dict(data.get("message") or {})
            if not message.get("tool_calls"):
                message["tool_calls"] = data["tool_calls"]
                data = {**data, "message": message}
        return data


class ChatCompletion(_Open):
    """A non-streamed completion (gateway envelope; OpenAI fields optional)."""

    request_id: str | None = None
    id: str | None = None
    model: str | None = None
    choices: list[Choice] = Field(default_factory=list)
    request: dict[str, Any] | None = None
    usage: Usage | None = None
    http_status_code: int | None = None
    response_time: int | float | None = None
    llm_status_code: int | None = None

    @property
    def text(self) -> str:
        """Content of choice 0 ("" when absent)."""
        if not self.choices:
            return ""
        return self.choices[0].message.content or ""

    @property
    def tool_calls(self) -> list[ToolCallModel]:
        if not self.choices:
            return []
        return self.choices[0].message.tool_calls or []

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


def completion_to_chunk(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a plain completion dict into one equivalent ``chat.completion.chunk`` dict.

    Used when a stream request is answered with JSON (non-OpenAI gateway models may do
    that): each choice's message becomes its delta, tool calls gain their ``index``.
    """
    choices = []
    for pos, choice in enumerate(data.get("choices") or ()):
        message = dict(choice.get("message") or {})
        delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
        for key in ("content", "refusal", "reasoning", "reasoning_content"):
            if message.get(key) is not None:
                delta[key] = message[key]
        calls = message.get("tool_calls") or choice.get("tool_calls")
        if calls:
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
        choices.append(
            {
                "index": choice.get("index", pos),
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    chunk: dict[str, Any] = {
        "id": data.get("id") or data.get("request_id"),
        "object": "chat.completion.chunk",
        "model": data.get("model"),
        "choices": choices,
    }
    for key in ("request_id", "usage", "created"):
        if data.get(key) is not None:
            chunk[key] = data[key]
    return chunk


# ---------------------------------------------------------------------------- chunks


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return _View(value)
    if isinstance(value, list):
        return [_View(v) if isinstance(v, dict) else _wrap(v) for v in value]
    return value


class _View:
    """Attribute access over a JSON dict. Missing keys read as ``None`` (like OpenAI's
    optional fields); ``raw`` is the underlying dict, never copied."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self.raw.get(name))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _View):
            return self.raw == other.raw
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw!r})"


class ChatChunk(_View):
    """One ``chat.completion.chunk`` from a stream; cheap to build (one object, lazy views).

    ``chunk.choices[0].delta.content``, ``.delta.tool_calls[0].function.arguments``,
    ``.delta.role``, ``chunk.choices[0].finish_reason``, ``chunk.usage``, ``chunk.id``,
    ``chunk.model``; ``chunk.raw`` is the decoded dict.
    """

    __slots__ = ()

    @property
    def id(self) -> str | None:
        return self.raw.get("id")

    @property
    def model(self) -> str | None:
        return self.raw.get("model")

    @property
    def choices(self) -> list[Any]:
        return [_View(c) for c in self.raw.get("choices") or ()]

    @property
    def usage(self) -> Any:
        usage = self.raw.get("usage")
        return _View(usage) if isinstance(usage, dict) else None

    @property
    def text(self) -> str:
        """Convenience: the content delta of choice 0 ("" when none)."""
        choices = self.raw.get("choices")
        if not choices:
            return ""
        delta = choices[0].get("delta")
        return (delta.get("content") if delta else None) or ""
