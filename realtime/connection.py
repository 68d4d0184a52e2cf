"""One WebSocket connection, whatever its endpoint: bounded outbox, owned writer, deadlines.

`Connection.serve(read)` is the one runner: it owns the connection's writer task and runs the
endpoint's reader until the peer leaves; on every path the outbox is closed in `finally` and
the writer is awaited, so nothing of the connection outlives its handler.

Outbound path. Messages are encoded once per session and queued here with `offer`, which never
waits: publishing to many connections is one synchronous step, so whatever a session queued
before a terminal message is queued before it on every connection. A response producer awaits
`wait_writable()` so a slow participant slows only its own session, while a connection whose
queue overflows is dropped (close 1008).

Write deadline (PROTOCOL.md "Close codes"). The writer stamps `send_started` while a send waits
for the socket to drain; the server's watchdog aborts a connection whose send has waited
longer than the write deadline: the transport is aborted, not closed, because a close would
wait for a buffer that a peer which stopped reading never drains. No timer per frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from realtime.core.outbound import Outbound
from realtime.core.session import CLOSE_GOING_AWAY, CLOSE_NORMAL

log = logging.getLogger("realtime.connection")

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008


class Connection:
    """A bounded, ordered outbound queue and the writer that drains it."""

    # One per WebSocket: slots keep an idle connection's memory small.
    __slots__ = (
        "_close_code",
        "_close_reason",
        "_queue",
        "_wakeup",
        "_writable",
        "aborted",
        "close_timeout",
        "closed",
        "dropped",
        "endpoint",
        "high_water",
        "id",
        "limit",
        "role",
        "send_started",
        "transport",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        conn_id: int,
        role: str,
        limit: int,
        close_timeout: float = 1.0,
        endpoint: str = "/v1/realtime",
    ) -> None:
        self.endpoint = endpoint
        self.ws = ws
        self.transport = request.transport
        self.id = conn_id
        self.role = role
        self.limit = limit
        self.high_water = max(1, limit // 2)
        self.close_timeout = close_timeout
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._close_code: int | None = None
        self._close_reason = ""
        self.closed = False  # no more messages are accepted
        self.dropped = False  # closed because it fell behind
        self.aborted = False  # its transport was aborted (write deadline, stuck close)
        self.send_started = 0.0  # loop time at which the pending send began; 0.0: none

    def __len__(self) -> int:
        return len(self._queue)

    # ---- outbound ---------------------------------------------------------------------

    def offer(self, message: Outbound, data: bytes) -> bool:
        """Queue one encoded message; False when the queue is full (drop the connection)."""
        return self.offer_bytes(data)

    def offer_bytes(self, data: bytes) -> bool:
        if self.closed:
            return True  # a closing connection silently takes nothing more
        queue = self._queue
        if len(queue) >= self.limit:
            return False
        queue.append(data)
        if len(queue) >= self.high_water:
            self._writable.clear()
        self._wakeup.set()
        return True

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        """Wait until the queue is below its high-water mark (or the connection closes)."""
        if not self._writable.is_set():
            await self._writable.wait()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send what is queued, then close with `code`. The first close wins."""
        if self.closed:
            return
        self.closed = True
        self._close_code = code
        self._close_reason = reason
        self._writable.set()
        self._wakeup.set()

    def drop(self, code: int = CLOSE_POLICY, reason: str = "") -> None:
        """Drop what is queued and close at once (a connection that fell behind)."""
        self._queue.clear()
        self.dropped = True
        self.close(code, reason)

    def abort(self) -> None:
        """Abort the transport without a close frame: the peer could not receive one."""
        if self.aborted:
            return
        self.aborted = True
        self._queue.clear()
        self.close(self._close_code or CLOSE_GOING_AWAY)
        if self.transport is not None:
            self.transport.abort()

    def stalled(self, now: float, deadline: float) -> bool:
        """Whether a send has waited for the peer longer than `deadline` seconds."""
        return bool(self.send_started) and now - self.send_started > deadline

    # ---- the runner -------------------------------------------------------------------

    async def serve(self, read: Callable[[], Awaitable[None]], *, session_id: str = "") -> None:
        """Run the writer and the endpoint's `read` loop until the connection ends."""
        ids = {"session_id": session_id, "role": self.role, "endpoint": self.endpoint}
        log.info("connection opened", extra=ids)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write())
                try:
                    await read()
                finally:
                    self.close(CLOSE_NORMAL)
        finally:
            how = "aborted" if self.aborted else "dropped" if self.dropped else "closed"
            log.info(
                "connection closed",
                extra={
                    **ids,
                    "close_code": None if self.aborted else self.ws.close_code,
                    "close_reason": self._close_reason or how,
                    "how": how,
                },
            )

    async def _write(self) -> None:
        ws, queue = self.ws, self._queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                while queue:
                    data = queue.popleft()
                    if len(queue) < self.high_water:
                        self._writable.set()
                    self.send_started = loop.time()
                    await ws.send_frame(data, WSMsgType.TEXT)
                    self.send_started = 0.0
                    data = b""  # an idle writer must not keep its last message alive
                if self.closed:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            # The peer went away, or the watchdog aborted it: nothing more can reach it.
            log.debug("writer stopped: %s", type(exc).__name__)
        finally:
            self.closed = True
            self._writable.set()
            queue.clear()
            self.send_started = 0.0
            await self._close_ws(loop)

    async def _close_ws(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.aborted or self.ws.closed:
            return
        self.send_started = loop.time()
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.ws.close(
                    code=self._close_code or CLOSE_GOING_AWAY,
                    message=self._close_reason.encode()[:120],
                )
        except TimeoutError:
            self.abort()  # the peer does not answer the close handshake
        except Exception as exc:  # a transport already gone: nothing left to close
            log.debug("close failed: %s", type(exc).__name__)
        finally:
            self.send_started = 0.0
