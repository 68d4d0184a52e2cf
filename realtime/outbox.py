"""One WebSocket connection's outbound path: a bounded queue drained by one writer task.

Messages are serialised once (orjson bytes) and queued here; `run_writer` sends them in
order as text frames. `offer` never waits, so publishing a message to many connections is a
synchronous step: whatever was published before a terminal message is queued before it on
every connection. Backpressure is separate: a response producer awaits `wait_writable()` so a
slow participant slows only its own session's reading of the gateway stream, while a viewer
that overflows its queue is dropped (close 1008) and never slows anybody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from aiohttp import WSMsgType, web

log = logging.getLogger("realtime.outbox")

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class Outbox:
    """A bounded, ordered outbound queue for one connection."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        role: str,
        limit: int,
        high_water: int | None = None,
        close_timeout: float = 2.0,
    ) -> None:
        self.ws = ws
        self.role = role
        self.limit = limit
        self.high_water = high_water if high_water is not None else max(1, limit // 2)
        self.close_timeout = close_timeout
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._close_code: int | None = None
        self._close_reason = ""
        self.closed = False  # no more messages are accepted
        self.dropped = False  # closed because it fell behind

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, data: bytes) -> bool:
        """Queue one message; False when the queue is full (the caller drops the connection)."""
        if self.closed:
            return True  # a closing connection silently takes nothing more
        if len(self._queue) >= self.limit:
            return False
        self._queue.append(data)
        if len(self._queue) >= self.high_water:
            self._writable.clear()
        self._wakeup.set()
        return True

    async def wait_writable(self) -> None:
        """Wait until the queue is below its high-water mark (or the connection closes)."""
        if not self._writable.is_set():
            await self._writable.wait()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send what is queued, then close with `code`."""
        if self.closed:
            return
        self.closed = True
        self._close_code = code
        self._close_reason = reason
        self._writable.set()
        self._wakeup.set()

    def abort(self, code: int = CLOSE_POLICY, reason: str = "") -> None:
        """Drop what is queued and close at once (used for connections that fell behind)."""
        self._queue.clear()
        self.dropped = True
        self.close(code, reason)

    async def run_writer(self) -> None:
        """Send queued messages until closed; then send the close frame. Owned by the handler."""
        ws = self.ws
        queue = self._queue
        try:
            while True:
                while queue:
                    data = queue.popleft()
                    if len(queue) < self.high_water:
                        self._writable.set()
                    # No timer per frame (it cost more than the send): send_frame only waits
                    # when the socket buffer is full, and a peer that stops reading is caught
                    # by the WebSocket heartbeat, whose failure closes the transport and
                    # ends this wait with a ConnectionError.
                    await ws.send_frame(data, WSMsgType.TEXT)
                if self.closed:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            # The peer went away or stopped reading: nothing more can be delivered to it.
            log.debug("writer stopped: %s", type(exc).__name__)
            self.closed = True
            self._writable.set()
            self._queue.clear()
        finally:
            if not ws.closed:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.close_timeout):
                        await ws.close(
                            code=self._close_code or CLOSE_GOING_AWAY,
                            message=self._close_reason.encode()[:120],
                        )
