"""The reading side of a streamed chat completion: :class:`ChatStream` and its state.

Contract:

* :class:`StreamState` turns the bytes of one open :class:`~gateway_client._transport.Attempt`
  into :class:`~gateway_client.models.ChatChunk` objects (SSE decoder, then ``parse_chunk``),
  queueing them; an in-stream error is held and raised only after the chunks decoded before
  it were handed out.
* :class:`ChatStream` is entered once. ``__aenter__`` runs the opener, which returns only once
  the first chunk is queued (or the stream ended): that is the last moment a retry or a
  fallback may happen. After it, a failure is raised from the iteration, never replayed.
* Leaving the block after a clean end (``[DONE]`` and end of body) releases the connection to
  the pool; any other exit -- early ``break``, an exception, cancellation -- closes it with
  ``response.close()``, so the server sees the client leave at once. ``CancelledError`` is
  never swallowed.
* ``result()`` assembles exactly the chunks handed out so far, not what was read ahead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from gateway_client._transport import TRANSPORT_ERRORS, Attempt, json_body
from gateway_client.assemble import ChunkAssembler, StreamResult
from gateway_client.errors import GatewayError, scrub
from gateway_client.models import ChatChunk, ChatCompletion, completion_to_chunk
from gateway_client.repair import repair_stream_result
from gateway_client.sse import DONE, SSEDecoder, parse_chunk

__all__ = ["DRAIN_WAIT", "ChatStream", "Opener", "StreamState", "completion_from_stream"]

log = logging.getLogger("gateway_client")

# After [DONE] the chunked-encoding terminator is normally already buffered; wait this long at
# most for it so the connection can go back to the pool, else just close it.
DRAIN_WAIT = 0.25


class StreamState:
    """Reading side of an open stream: decoder, assembler and a queue of ready chunks."""

    __slots__ = (
        "assembler",
        "attempt",
        "debug",
        "decoder",
        "done",
        "error",
        "got_first",
        "queue",
        "secrets",
    )

    def __init__(self, attempt: Attempt, secrets: Sequence[str | None]) -> None:
        self.attempt = attempt
        self.decoder = SSEDecoder()
        self.assembler = ChunkAssembler()
        self.queue: collections.deque[ChatChunk] = collections.deque()
        self.done = False
        self.error: GatewayError | None = None
        self.got_first = False
        self.secrets = secrets
        self.debug = log.isEnabledFor(logging.DEBUG)

    async def fill(self) -> None:
        """Read until at least one chunk is queued, the stream ended, or an error is pending.

        Chunks decoded before an in-stream error are delivered first; the error is raised
        after them (see ``ChatStream.__anext__``).
        """
        queue = self.queue
        while not queue and not self.done:
            data = await self.attempt.read(not self.got_first, self.secrets)
            if data:
                try:
                    events = self.decoder.feed(data)
                except GatewayError as exc:
                    self._fail(exc)
                    return
            else:
                events = self.decoder.close()
                self.done = True
            for event in events:
                try:
                    payload = parse_chunk(event)
                except GatewayError as exc:
                    self._fail(exc)
                    return
                if payload is None:
                    if event.data == DONE:
                        self.done = True
                        break
                    continue
                queue.append(ChatChunk(payload))
                if self.debug:
                    log.debug("chunk %d: %s", self.assembler.chunks, event.data[:200])
            if queue:
                self.got_first = True

    def _fail(self, exc: GatewayError) -> None:
        exc.request_id = exc.request_id or self.assembler.request_id or self.attempt.request_id()
        exc.model = exc.model or self.attempt.model
        exc.message = scrub(exc.message, self.secrets)
        self.error = exc
        self.done = True

    def load_json(self, body: bytes) -> None:
        """A stream request answered with plain JSON: queue it as one equivalent chunk."""
        data = json_body(body, self.secrets, None)
        chunk = completion_to_chunk(data)
        self.queue.append(ChatChunk(chunk))
        self.got_first = True
        self.done = True


class ChatStream:
    """An open streamed chat completion. Use only as ``async with gw.stream(body) as s``.

    ``__aenter__`` sends the request (retrying / falling back as configured) and waits for the
    first chunk; iterating yields :class:`~gateway_client.models.ChatChunk` objects; leaving the
    block closes the connection unless the stream ended cleanly.

    Attributes: ``status`` (HTTP status), ``request_id``, ``model`` (the model that answered,
    after any client-side fallback; None until one did), ``attempts`` (HTTP attempts made),
    ``text_so_far``, and ``failed_attempts``: ``(model, error)`` for every HTTP attempt that
    ended in a :class:`~gateway_client.errors.GatewayError`, in order -- the retries and
    fallbacks before the first chunk, and the serving attempt itself if it fails mid-stream.
    Whenever the stream raised a ``GatewayError``, that error is the last entry; a stream
    that succeeded after failures still lists them.

    Built by :meth:`GatewayClient.stream() <gateway_client.client.GatewayClient.stream>`:
    ``opener(stream)`` is the client's coroutine that sends the request (with its retries and
    fallbacks, recording them on ``stream``) and returns the state read up to the first chunk.
    """

    def __init__(self, opener: Opener, *, json_repair: bool = False) -> None:
        self._opener = opener
        self._json_repair = json_repair
        self._state: StreamState | None = None
        self._raised = False
        self.attempts = 0
        self.model: str | None = None
        self.failed_attempts: list[tuple[str, GatewayError]] = []

    async def __aenter__(self) -> ChatStream:
        if self._state is not None:
            raise RuntimeError("a ChatStream can be entered only once")
        self._state = await self._opener(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        if state is None:
            return
        response = state.attempt.response
        if exc_type is None and state.done and state.error is None:
            if not response.content.at_eof():
                try:
                    await self._drain(state)
                except BaseException:
                    response.close()
                    raise
            if response.content.at_eof():
                response.release()
                return
        # Early exit, cancellation or failure: drop the socket now (release() would read on).
        response.close()

    @staticmethod
    async def _drain(state: StreamState) -> None:
        try:
            async with asyncio.timeout(DRAIN_WAIT):
                while await state.attempt.response.content.readany():
                    pass
        except (TimeoutError, *TRANSPORT_ERRORS):
            pass

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> ChatChunk:
        state = self._state
        if state is None:
            raise RuntimeError("use 'async with gw.stream(...) as stream' before iterating")
        queue = state.queue
        if not queue:
            try:
                await state.fill()
            except GatewayError as exc:  # a read deadline or a lost connection
                self._record_failure(state, exc)
                raise
        if queue:
            # Assemble as chunks are handed out, so text_so_far and result() describe what
            # the caller has seen, not what was read ahead.
            chunk = queue.popleft()
            state.assembler.add(chunk.raw)
            return chunk
        if state.error is not None and not self._raised:
            self._raised = True
            self._record_failure(state, state.error)
            raise state.error
        raise StopAsyncIteration

    def _record_failure(self, state: StreamState, exc: GatewayError) -> None:
        """The serving attempt failed after its first chunk: no retry, but it is counted."""
        exc.attempts = exc.attempts or self.attempts
        self.failed_attempts.append((state.attempt.model, exc))

    @property
    def status(self) -> int | None:
        return self._state.attempt.response.status if self._state else None

    @property
    def request_id(self) -> str | None:
        if self._state is None:
            return None
        return (
            self._state.attempt.request_id()
            or self._state.assembler.request_id
            or (self._state.assembler.id)
        )

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (e.g. the gateway's X-RateLimit-*); empty before opening."""
        return self._state.attempt.response.headers if self._state else {}

    @property
    def text_so_far(self) -> str:
        return self._state.assembler.text_of(0) if self._state else ""

    def result(self) -> StreamResult:
        """The completion assembled from every chunk handed out so far.

        Complete once iteration finished; json-repair (if requested) is applied here.
        """
        if self._state is None:
            raise RuntimeError("the stream was never opened")
        result = self._state.assembler.result()
        result.request_id = self.request_id
        if not result.model:
            result.model = self.model
        if self._json_repair:
            repair_stream_result(result)
        return result

Opener = Callable[[ChatStream], Awaitable[StreamState]]
"""Sends the request for a :class:`ChatStream` and returns its state read up to the first chunk."""


def completion_from_stream(result: StreamResult, request_id: str | None) -> ChatCompletion:
    """Build a ChatCompletion envelope from an assembled stream."""
    choices = []
    for choice in result.choices:
        message: dict[str, Any] = {"role": choice.role, "content": choice.text or None}
        if choice.tool_calls:
            message["tool_calls"] = [tc.to_dict() for tc in choice.tool_calls]
        if choice.refusal is not None:
            message["refusal"] = choice.refusal
        if choice.reasoning is not None:
            message["reasoning"] = choice.reasoning
        choices.append(
            {"index": choice.index, "message": message, "finish_reason": choice.finish_reason}
        )
    return ChatCompletion.model_validate(
        {
            "request_id": result.request_id or request_id,
            "id": result.id,
            "model": result.model,
            "choices": choices,
            "usage": result.usage,
        }
    )
