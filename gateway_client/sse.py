"""Incremental Server-Sent Events decoder and chunk payload parsing. Pure: no I/O, no asyncio.

The decoder follows the WHATWG "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end in CRLF, LF or CR -- a CR at the end of one ``feed()`` and the LF at the start of
  the next are one line ending, never an extra blank line;
* a leading UTF-8 BOM is dropped once, even when it arrives split across feeds;
* ``:`` starts a comment (keep-alives such as ``: OPENROUTER PROCESSING``) -- counted, not emitted;
* ``field: value`` with one optional space after the colon; ``data`` lines are joined with
  ``\\n``; ``event``, ``id`` (ignored when it contains NUL) and ``retry`` (digits only) are kept;
* a blank line dispatches the event; an event with no ``data`` lines is not dispatched.

At end of stream (``close()``) the spec discards a half-received event. We are more lenient
and dispatch it when its last line was complete or the buffer holds a ``data:`` line, because
several OpenAI-compatible servers end the body right after ``data: [DONE]`` without the blank
line; a truncated *connection* is detected by the transport layer, not here.

Every buffer is bounded: a line longer than ``max_line_bytes`` or an event whose data exceeds
``max_event_bytes`` raises :class:`~gateway_client.errors.ProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway_client.errors import ProtocolError, StreamError, stream_error

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DONE",
    "Event",
    "SSEDecoder",
    "parse_chunk",
]

DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB
DEFAULT_MAX_EVENT_BYTES = 4 << 20  # 4 MiB
DONE = "[DONE]"

_BOM = b"\xef\xbb\xbf"
_LINE_SPLIT = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True, frozen=True)
class Event:
    """One dispatched SSE event. ``event`` defaults to ``"message"`` as the spec says."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turn arbitrary byte pieces of an SSE body into :class:`Event` objects.

    ``feed(piece)`` returns the events completed by that piece (possibly none);
    ``close()`` flushes at end of body. The decoded events never depend on how the body was
    split into pieces. ``comments`` counts comment lines (keep-alives) seen so far.
    """

    __slots__ = (
        "_bom_checked",
        "_buf",
        "_data",
        "_data_size",
        "_event",
        "_last_id",
        "_max_event",
        "_max_line",
        "_retry",
        "_skip_lf",
        "comments",
    )

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        self._buf = b""
        self._skip_lf = False
        self._bom_checked = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self.comments = 0

    def feed(self, piece: bytes) -> list[Event]:
        """Consume ``piece`` and return the events it completed, in order."""
        if not piece:
            return []
        if self._skip_lf:
            # The previous piece ended in CR; an LF here belongs to that same line ending.
            self._skip_lf = False
            if piece[:1] == b"\n":
                piece = piece[1:]
                if not piece:
                    return []
        buf = self._buf + piece if self._buf else piece
        if not self._bom_checked:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # could still become a BOM; wait for more bytes
                return []
            self._bom_checked = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        if b"\r" in buf:
            lines = _LINE_SPLIT.split(buf)
            # A trailing CR completes its line now; a following LF must not count again.
            self._skip_lf = buf.endswith(b"\r")
        else:
            lines = buf.split(b"\n")
        rest = lines.pop()
        if len(rest) > self._max_line:
            self._buf = b""
            raise ProtocolError(f"SSE line longer than {self._max_line} bytes")
        self._buf = rest
        events: list[Event] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[Event]:
        """Signal end of body; return a last event left without its terminating blank line."""
        events: list[Event] = []
        if self._buf:
            rest, self._buf = self._buf, b""
            if self._bom_checked or not _BOM.startswith(rest):
                self._line(rest, events)
        self._skip_lf = False
        if self._data:
            self._dispatch(events)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if len(line) > self._max_line:
            raise ProtocolError(f"SSE line longer than {self._max_line} bytes")
        if not line:
            self._dispatch(events)
            return
        if line[0] == 0x3A:  # ":" comment / keep-alive
            self.comments += 1
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_event:
                self._data = []
                self._data_size = 0
                raise ProtocolError(f"SSE event larger than {self._max_event} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
        # Unknown field names are ignored, as the spec requires.

    def _dispatch(self, events: list[Event]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            events.append(
                Event(
                    data.decode("utf-8", "replace"),
                    self._event or "message",
                    self._last_id,
                    self._retry,
                )
            )
        self._data = []
        self._data_size = 0
        self._event = ""


def parse_chunk(event: Event) -> dict[str, Any] | None:
    """Decode one event of a chat-completions stream into its JSON object.

    Returns ``None`` for the ``[DONE]`` sentinel and for events with blank data (some proxies
    send those as keep-alives). Raises :class:`StreamError` for ``event: error`` or any object
    carrying a non-null ``error`` (OpenRouter, Groq, the gateway's mid-stream failures), and
    :class:`ProtocolError` when the data is not a JSON object.
    """
    data = event.data
    if data == DONE:
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        if not data.strip():
            return None
        if event.event == "error":
            raise StreamError(f"stream error event 'error': {data[:1000]}") from None
        raise ProtocolError(f"malformed JSON in SSE data: {data[:200]!r}") from None
    if not isinstance(payload, dict):
        if event.event == "error":
            raise StreamError(f"stream error event 'error': {data[:1000]}")
        raise ProtocolError(f"SSE data is not a JSON object: {data[:200]!r}")
    if event.event == "error":
        raise stream_error(payload, event="error")
    if payload.get("error") is not None:
        raise stream_error(payload)
    return payload
