"""The service's app: routes, the registry of sessions and connections, owned shutdown.

Each WebSocket connection is served by its aiohttp handler task, which the server tracks: the
connection runner (`realtime.connection`) owns the connection's writer, and the handler of the
connection that created a session owns the session (`Session.running`). `stop()` ends every
session (one terminal per live reply, reason `shutdown`), closes connections with 1001, aborts
those that do not finish closing within a second, and awaits every handler. A watchdog task
aborts connections whose sends wait longer than the write deadline.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from realtime.connection import Connection
from realtime.core.config import SessionConfig
from realtime.limits import Limiter
from realtime.logs import RateLimitFilter
from realtime.metrics import ServiceMetrics
from realtime.session import Deps, Session
from realtime.strict_ws import harden

if TYPE_CHECKING:
    from realtime.cluster.rates import SharedWindows

log = logging.getLogger("realtime.server")

VIEWER_SNDBUF = 64 * 1024  # a viewer's kernel send buffer: lag shows early, memory stays bounded
# A participant's: enough for text at any realistic round trip (256 KiB per 100 ms RTT is
# 2.5 MB/s), small enough that one that stops reading meets the write deadline early.
PARTICIPANT_SNDBUF = 256 * 1024
FDS_PER_CONNECTION = 2  # its socket, and an upstream speech-to-text socket when it sends audio
FDS_RESERVED = 128  # listening sockets, the gateway pool's base, logs, /healthz and /metrics
SHUTDOWN_CLOSE_S = 1.0  # connections not closed by then are aborted
ENDED_IDS_KEPT = 10_000  # ids of ended sessions remembered (bounded memory)
ENDED_IDS_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    auth_tokens: tuple[str, ...] = ()
    max_frame_bytes: int = 1024 * 1024
    max_concurrent_requests: int = 512
    rate_limit_per_minute: int = 0
    participant_queue: int = 4096
    viewer_queue: int = 1024
    heartbeat_s: float = 30.0
    # A connection whose queued data is not accepted within this is aborted (PROTOCOL.md).
    write_timeout_s: float = 10.0
    # WebSocket upgrades beyond this get 503 over_capacity; None: derived from the fd limit.
    max_connections: int | None = None
    # Upstream speech-to-text for audio (binary frames, /v3/ws); None: audio is refused.
    stt_url: str | None = None
    stt_api_key: str | None = None
    # /v3/ws clients that pass no `llm_gateway` get the server's default model and preset
    # (for clients that cannot pass it, e.g. Pipecat); False: they get speech-to-text only.
    v3_default_llm: bool = False
    # With auth on, /metrics needs a token too unless this is set (/healthz never does).
    public_metrics: bool = False
    # Models a session may choose must start with one of these (AssemblyAI's EU gateway
    # serves Claude and Gemini models only); empty: any model.
    model_prefixes: tuple[str, ...] = ()
    # Cluster mode: per-model rate windows shared through this Redis; None: in-process only.
    redis_url: str | None = None
    default_config: SessionConfig = field(default_factory=SessionConfig)


def fd_limits() -> tuple[int, int]:
    """The process's (soft, hard) open-file limits."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; returns (soft, hard) afterwards."""
    soft, hard = fd_limits()
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", extra={"reason": str(exc)})
    return fd_limits()


def default_max_connections() -> int:
    soft, _ = fd_limits()
    return max(8, (soft - FDS_RESERVED) // FDS_PER_CONNECTION)


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers=headers or None,
    )


class Server:
    """The realtime service on one aiohttp app. `start()` binds; `stop()` shuts down."""

    def __init__(self, settings: ServerSettings, gateway: Any) -> None:
        from realtime.endpoints import aai_ws, http, realtime_ws
        from realtime.endpoints import web as web_page

        self.settings = settings
        self.gateway = gateway
        self.metrics = ServiceMetrics()
        self.rates: SharedWindows | None = None  # the shared rate windows (cluster mode)
        if settings.redis_url:
            from realtime.cluster.rates import SharedWindows

            self.rates = SharedWindows(settings.redis_url)
        self.limiter = Limiter(
            max_concurrent=settings.max_concurrent_requests,
            per_model_per_minute=settings.rate_limit_per_minute,
            shared=self.rates,
        )
        self.deps = Deps(
            gateway=gateway,
            limiter=self.limiter,
            metrics=self.metrics,
            default_config=settings.default_config,
            participant_queue=settings.participant_queue,
            viewer_queue=settings.viewer_queue,
            model_prefixes=settings.model_prefixes,
        )
        self.max_connections = settings.max_connections or default_max_connections()
        self.sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, float] = OrderedDict()  # session id -> when it ended
        self.connections: dict[int, Connection] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._admitted = 0  # WebSocket handlers running (upgraded or about to be)
        self._conn_ids = itertools.count(1)
        self._watchdog: asyncio.Task[None] | None = None
        self.stopping = False
        self.app = web.Application()
        self.app.router.add_routes(realtime_ws.routes(self))
        self.app.router.add_routes(http.routes(self))
        self.app.router.add_routes(web_page.routes(self))
        if settings.stt_url:
            self.app.router.add_routes(aai_ws.routes(self))
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        _quiet_accept_errors()
        if self.rates is not None:
            await self.rates.start()  # bounded; with Redis down, windows fall back to local
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        # With port 0 the kernel picks the port; read it back from the listening socket.
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._watchdog = asyncio.create_task(self._watch_writes())

    async def stop(self) -> None:
        """Stop accepting; end every session (reason `shutdown`, close 1001); abort what does
        not close within a second; await every handler."""
        self.stopping = True
        for session in list(self.sessions.values()):
            session.shutdown()
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        handlers = [t for t in (*self._handlers, *self._session_tasks) if not t.done()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=SHUTDOWN_CLOSE_S)
            if pending:
                for conn in list(self.connections.values()):
                    conn.abort()
                _, pending = await asyncio.wait(pending, timeout=SHUTDOWN_CLOSE_S / 2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_CLOSE_S / 2)
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.rates is not None:
            await self.rates.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def residue(self) -> dict[str, int]:
        """What the server still holds; every value is 0 once everything was released."""
        gauge = self.metrics.connections_active
        return {
            "sessions": len(self.sessions),
            "connections": len(self.connections),
            "handlers": sum(1 for t in self._handlers if not t.done()),
            "session_runs": sum(1 for t in self._session_tasks if not t.done()),
            "session_tasks": sum(len(s._streams) for s in self.sessions.values()),
            "gauge_sessions": int(self.metrics.sessions_active.value()),
            "gauge_connections": int(gauge.value("participant") + gauge.value("viewer")),
            "gateway_slots": self.limiter.in_flight,
        }

    # ---- admission --------------------------------------------------------------------

    def authorized(self, request: web.Request, *, raw_header: bool = False) -> bool:
        tokens = self.settings.auth_tokens
        if not tokens:
            return True
        presented: list[str] = []
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            presented.append(header[7:].strip())
        elif raw_header and header:
            presented.append(header.strip())
        if "token" in request.query:
            presented.append(request.query["token"])
        return any(hmac.compare_digest(p.encode(), t.encode()) for p in presented for t in tokens)

    def refuse_upgrade(self, request: web.Request, *, raw_header: bool = False) -> web.Response | None:
        """The refusal every WebSocket endpoint checks before upgrading, or None."""
        if not self.authorized(request, raw_header=raw_header):
            return self._refused(
                401, "unauthorized", "a valid auth token is required", WWW_Authenticate="Bearer"
            )
        if self.stopping:
            return self._refused(503, "shutting_down", "the server is shutting down")
        if self.at_capacity():
            return self._refused(
                503, "over_capacity", "the server is at its connection limit; retry later"
            )
        return None

    def _refused(self, status: int, code: str, message: str, **headers: str) -> web.Response:
        self.metrics.connections_refused_total.inc(code)
        fixed = {k.replace("_", "-"): v for k, v in headers.items()}
        return json_error(status, code, message, **fixed)

    @asynccontextmanager
    async def handler(self) -> AsyncIterator[None]:
        """Track the current handler task for shutdown, and hold a connection place."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1
            self._handlers.discard(task)

    async def upgrade(
        self, request: web.Request, *, decode_text: bool = True
    ) -> web.WebSocketResponse:
        # aiohttp refuses a message whose size equals its limit: one more byte makes a frame
        # of exactly --max-frame-bytes pass and one byte more fail (PROTOCOL.md close 1009).
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes + 1,
            heartbeat=self.settings.heartbeat_s,
            decode_text=decode_text,
            timeout=SHUTDOWN_CLOSE_S,
        )
        await ws.prepare(request)
        harden(ws, request)
        return ws

    def next_conn_id(self) -> int:
        return next(self._conn_ids)

    def add_connection(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def new_connection(
        self, ws: web.WebSocketResponse, request: web.Request, role: str, limit: int
    ) -> Connection:
        conn = Connection(ws, request, conn_id=self.next_conn_id(), role=role, limit=limit)
        self.add_connection(conn)
        return conn

    def at_capacity(self) -> bool:
        return self._admitted >= self.max_connections

    def forget_connection(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)

    # ---- sessions ---------------------------------------------------------------------

    def register(self, session: Session) -> None:
        """Register a new session; called before its creator's handler first awaits."""
        self.sessions[session.id] = session

    def start_session(self, session: Session) -> None:
        """Register a new session and start its own task, which the server owns (a session
        may outlive the connection that created it, for the resume window) and awaits on
        shutdown. Called before the creator's handler first awaits."""
        self.register(session)
        task = asyncio.create_task(self._live(session))
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)

    async def _live(self, session: Session) -> None:
        try:
            await session.live()
        finally:
            self.unregister(session)

    def unregister(self, session: Session) -> None:
        """Only the session that registered an id removes it. The id is remembered for a
        while, so a late joiner learns the session ended (404) instead of starting anew."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self._ended[session.id] = time.monotonic()
            self._ended.move_to_end(session.id)
            while len(self._ended) > ENDED_IDS_KEPT:
                self._ended.popitem(last=False)

    def ended_recently(self, session_id: str) -> bool:
        """Whether a session with this id ended within the last ENDED_IDS_TTL_S seconds."""
        at = self._ended.get(session_id)
        return at is not None and time.monotonic() - at < ENDED_IDS_TTL_S

    # ---- the write deadline -----------------------------------------------------------

    async def _watch_writes(self) -> None:
        deadline = self.settings.write_timeout_s
        tick = min(1.0, max(0.05, deadline / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in list(self.connections.values()):
                if conn.stalled(now, deadline):
                    self.metrics.write_timeouts_total.inc(conn.role)
                    log.warning(
                        "connection did not accept data within the write deadline; aborting it",
                        extra={"role": conn.role, "write_timeout_s": deadline},
                    )
                    conn.abort()


def shrink_send_buffer(request: web.Request, size: int = VIEWER_SNDBUF) -> None:
    """A small kernel send buffer makes a peer's lag show early and bounds memory."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass


_quieted = False


def _quiet_accept_errors() -> None:
    """Out of file descriptors, asyncio logs a failed accept() every time it retries: keep
    one such line per 10 seconds."""
    global _quieted
    if not _quieted:
        logging.getLogger("asyncio").addFilter(RateLimitFilter(10.0))
        _quieted = True


now = time.perf_counter
