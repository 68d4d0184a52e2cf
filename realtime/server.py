"""The service's HTTP and WebSocket surface: /v1/realtime, /healthz, /metrics.

Each connection is served by its aiohttp handler task, which owns a writer task (its outbox)
and reads frames until the peer leaves. The connection that creates a session owns it: the
session's response tasks live in a TaskGroup inside that handler, so when it ends, every
response is cancelled with exactly one terminal message and every viewer is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from realtime.core.config import SessionConfig
from realtime.core.inbound import ProtocolError, parse_client_frame
from realtime.limits import Limiter
from realtime.metrics import ServiceMetrics
from realtime.outbox import CLOSE_GOING_AWAY, Outbox
from realtime.session import Deps, Session, new_id

log = logging.getLogger("realtime.server")

_SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
VIEWER_SNDBUF = 64 * 1024  # a viewer's kernel send buffer: lag shows early, memory stays bounded


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
    default_config: SessionConfig = field(default_factory=SessionConfig)


def _json_response(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Server:
    """The realtime service on one aiohttp app. `start()` binds; `stop()` shuts down gracefully."""

    def __init__(self, settings: ServerSettings, gateway: Any) -> None:
        self.settings = settings
        self.gateway = gateway
        self.metrics = ServiceMetrics()
        self.limiter = Limiter(
            max_concurrent=settings.max_concurrent_requests,
            per_model_per_minute=settings.rate_limit_per_minute,
        )
        self.deps = Deps(
            gateway=gateway,
            limiter=self.limiter,
            metrics=self.metrics,
            default_config=settings.default_config,
            participant_queue=settings.participant_queue,
            viewer_queue=settings.viewer_queue,
        )
        self.sessions: dict[str, Session] = {}
        self.stopping = False
        self.app = web.Application()
        self.app.router.add_get("/v1/realtime", self.realtime)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics_page)
        self._runner: web.AppRunner | None = None
        self.port = settings.port
        # Set by the audio path when upstream speech-to-text is configured: makes a session's
        # relay on its first binary frame (see realtime/audio_relay.py).
        self.relay_factory: Callable[[Session, Outbox, Mapping[str, str]], Any] | None = None
        if settings.stt_url:
            from realtime import aai_compat
            from realtime.relay import relay_factory

            self.relay_factory = relay_factory(settings.stt_url, settings.stt_api_key)
            aai_compat.install(self)  # GET /v3/ws, AssemblyAI's streaming protocol

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        # With port 0 the kernel picks the port; read it back from the listening socket.
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, cancel responses with reason `shutdown`, close connections with 1001."""
        self.stopping = True
        for session in list(self.sessions.values()):
            session.shutdown()
        # Give handlers a moment to flush terminal messages and close frames.
        deadline = time.monotonic() + 3.0
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def residue(self) -> dict[str, int]:
        """What the server still holds; every value is 0 once everything was released."""
        return {
            "sessions": len(self.sessions),
            "connections": sum(len(s.participants) + len(s.viewers) for s in self.sessions.values()),
            "handlers": 0,
            "gauge_sessions": int(self.metrics.sessions_active.value()),
            "gauge_connections": int(
                self.metrics.connections_active.value("participant")
                + self.metrics.connections_active.value("viewer")
            ),
        }

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    # ---- plain HTTP ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return _json_response(200, {"status": "ok"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    # ---- auth ------------------------------------------------------------------------------

    def authorized(self, request: web.Request, *, raw_header: bool = False) -> bool:
        tokens = self.settings.auth_tokens
        if not tokens:
            return True
        presented: list[str] = []
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            presented.append(header[7:].strip())
        elif raw_header and header:
            presented.append(header.strip())
        if "token" in request.query:
            presented.append(request.query["token"])
        return any(hmac.compare_digest(p.encode(), t.encode()) for p in presented for t in tokens)

    # ---- /v1/realtime ----------------------------------------------------------------------

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return _json_response(
                401,
                {"error": {"code": "unauthorized", "message": "a valid auth token is required"}},
            )
        if self.stopping:
            return _json_response(
                503, {"error": {"code": "shutting_down", "message": "the server is shutting down"}}
            )
        role = request.query.get("role", "participant")
        if role not in ("participant", "viewer"):
            return _json_response(
                400,
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "role must be participant or viewer",
                    }
                },
            )
        session_id = request.query.get("session_id") or None
        if session_id is not None and not _SESSION_ID.match(session_id):
            return _json_response(
                400,
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "session_id must be 1-64 of [A-Za-z0-9_-]",
                    }
                },
            )
        existing = self.sessions.get(session_id) if session_id else None
        if role == "viewer" and existing is None:
            return _json_response(
                404,
                {
                    "error": {
                        "code": "no_such_session",
                        "message": "viewers need the id of a live session",
                    }
                },
            )

        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes,
            heartbeat=self.settings.heartbeat_s,
            decode_text=False,
        )
        await ws.prepare(request)
        if role == "viewer":
            _shrink_send_buffer(request)
            box = Outbox(ws, role="viewer", limit=self.settings.viewer_queue)
            assert existing is not None
            await self._serve(ws, box, existing, request.query)
        elif existing is not None:
            box = Outbox(ws, role="participant", limit=self.settings.participant_queue)
            await self._serve(ws, box, existing, request.query)
        else:
            session = Session(session_id or new_id("s_"), self.deps)
            self.sessions[session.id] = session
            box = Outbox(ws, role="participant", limit=self.settings.participant_queue)
            try:
                async with session.running():
                    await self._serve(ws, box, session, request.query)
            finally:
                self.sessions.pop(session.id, None)
        return ws

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        box: Outbox,
        session: Session,
        query: Mapping[str, str],
    ) -> None:
        session.attach(box)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(box.run_writer())
                await self._read(ws, box, session, query)
                box.close(CLOSE_GOING_AWAY if session.ended else 1000)
        finally:
            session.detach(box)

    async def _read(
        self,
        ws: web.WebSocketResponse,
        box: Outbox,
        session: Session,
        query: Mapping[str, str],
    ) -> None:
        viewer = box.role == "viewer"
        async for frame in ws:
            received_at = time.perf_counter()
            if frame.type == WSMsgType.TEXT:
                if viewer:
                    session.send_error(box, "read_only", "viewers cannot send messages")
                    continue
                try:
                    message = parse_client_frame(frame.data)
                except ProtocolError as exc:
                    session.handle_bad_frame(box, exc)
                    continue
                session.handle_frame(box, message, received_at)
            elif frame.type == WSMsgType.BINARY:
                if viewer:
                    session.send_error(box, "read_only", "viewers cannot send messages")
                elif self.relay_factory is not None:
                    if session.relay is None:
                        try:
                            session.relay = self.relay_factory(session, box, query)
                        except ValueError as exc:
                            session.send_error(box, "invalid_event", str(exc))
                            continue
                    await session.relay.feed(frame.data)
                else:
                    session.send_error(
                        box,
                        "audio_unsupported",
                        "this server has no upstream speech-to-text connection for audio",
                    )
            elif frame.type == WSMsgType.ERROR:
                break
            if box.closed and box.dropped:
                break


def _shrink_send_buffer(request: web.Request) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIEWER_SNDBUF)
        except OSError:
            pass
