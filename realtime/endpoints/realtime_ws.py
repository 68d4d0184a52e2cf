"""`GET /v1/realtime`: participants and viewers of a session (PROTOCOL.md).

Refusals happen before the upgrade: 401, 503 (`shutting_down`, `over_capacity`), 400 for a bad
query, 404 `no_such_session` for a viewer without a live session or any join of a session that
has ended. A new session is registered before its creator's handler first awaits, so a second
creator of the same `session_id` joins it instead of replacing it.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from realtime.connection import Connection
from realtime.core.errors import ClientFault
from realtime.core.inbound import parse_client_frame
from realtime.relay import AudioRelay, params_from_query
from realtime.server import (
    PARTICIPANT_SNDBUF,
    VIEWER_SNDBUF,
    json_error,
    shrink_send_buffer,
)
from realtime.session import Session, new_id

if TYPE_CHECKING:
    from realtime.server import Server

_SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")

now = time.perf_counter


def routes(server: Server) -> list[web.RouteDef]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve(server, request)

    return [web.get("/v1/realtime", handle)]


async def serve(server: Server, request: web.Request) -> web.StreamResponse:
    refusal = server.refuse_upgrade(request)
    if refusal is not None:
        return refusal
    role = request.query.get("role", "participant")
    if role not in ("participant", "viewer"):
        return json_error(400, "invalid_request", "role must be participant or viewer")
    session_id = request.query.get("session_id") or None
    if session_id is not None and not _SESSION_ID.match(session_id):
        return json_error(400, "invalid_request", "session_id must be 1-64 of [A-Za-z0-9_-]")
    existing = server.sessions.get(session_id) if session_id else None
    gone = existing is None and session_id is not None and server.ended_recently(session_id)
    resuming = "last_seq" in request.query or "resume_token" in request.query
    if (
        (existing is None and (role == "viewer" or resuming))
        or gone
        or (existing is not None and not existing.accepting)
    ):
        return json_error(
            404, "no_such_session", "no live session with this id (unknown, ended or expired)"
        )
    last_seq: int | None = None
    if resuming:
        assert existing is not None
        checked = _check_resume(existing, role, request.query)
        if isinstance(checked, web.Response):
            return checked
        last_seq = checked
    async with server.handler():
        if existing is not None:
            ws = await server.upgrade(request)
            shrink_send_buffer(request, VIEWER_SNDBUF if role == "viewer" else PARTICIPANT_SNDBUF)
            await _attached(server, request, ws, existing, role, last_seq)
            return ws
        session = Session(session_id or new_id("s_"), server.deps)
        server.start_session(session)  # before the first await: concurrent creators see it
        try:
            await asyncio.sleep(0)  # the session's task enters its TaskGroup first (FIFO)
            assert session.running_now
            ws = await server.upgrade(request)
            shrink_send_buffer(request, PARTICIPANT_SNDBUF)
        except BaseException:
            session.end("client", 1000)  # its creator never arrived
            raise
        await _attached(server, request, ws, session, role, None)
        return ws


def _check_resume(session: Session, role: str, query: Mapping[str, str]) -> int | web.Response:
    """`last_seq` of a resuming connection, or its refusal (PROTOCOL.md "Resuming")."""
    raw = query.get("last_seq", "")
    if not raw.isdigit() or len(raw) > 16:
        return json_error(400, "invalid_request", "last_seq must be a whole number >= 0")
    last_seq = int(raw)
    if role == "participant":
        token = query.get("resume_token", "")
        if not hmac.compare_digest(token.encode(), session.resume_token.encode()):
            return json_error(403, "forbidden", "the resume_token does not match this session")
    if last_seq > session.seq:
        return json_error(400, "invalid_request", "last_seq is beyond the session's last message")
    if not session.can_resume_from(last_seq):
        return json_error(
            409,
            "resume_gap",
            "messages after last_seq are no longer kept; join afresh and use the snapshot",
        )
    return last_seq


async def _attached(
    server: Server,
    request: web.Request,
    ws: web.WebSocketResponse,
    session: Session,
    role: str,
    last_seq: int | None,
) -> None:
    limit = server.deps.viewer_queue if role == "viewer" else server.deps.participant_queue
    conn = server.new_connection(ws, request, role, limit)
    try:
        fits = last_seq is None or session.can_resume_from(last_seq)
        if not fits or not session.attach(conn, last_seq=last_seq):
            # it ended (or moved past last_seq) while this connection was upgrading
            conn.close(1000, "session ended" if fits else "resume gap")
            await conn.serve(_nothing, session_id=session.id)
            return
        try:
            await conn.serve(
                lambda: _read(server, ws, conn, session, request.query), session_id=session.id
            )
        finally:
            session.detach(conn)
    finally:
        server.forget_connection(conn)


async def _nothing() -> None:
    return None


async def _read(
    server: Server,
    ws: web.WebSocketResponse,
    conn: Connection,
    session: Session,
    query: Mapping[str, str],
) -> None:
    viewer = conn.role == "viewer"
    async for frame in ws:
        received_at = now()
        kind = frame.type
        if kind is WSMsgType.TEXT:
            if viewer:
                session.refuse(conn, "read_only", "viewers cannot send messages")
            else:
                try:
                    message = parse_client_frame(frame.data)
                except ClientFault as exc:
                    session.refuse(conn, exc.code, exc.message)
                else:
                    session.handle(conn, message, received_at)
        elif kind is WSMsgType.BINARY:
            if viewer:
                session.refuse(conn, "read_only", "viewers cannot send messages")
            else:
                await _audio(server, conn, session, frame.data, query)
        elif kind is WSMsgType.ERROR:
            break
        if conn.closed:
            break


async def _audio(
    server: Server, conn: Connection, session: Session, pcm: bytes, query: Mapping[str, str]
) -> None:
    url = server.settings.stt_url
    if url is None:
        session.refuse(
            conn,
            "audio_unsupported",
            "this server has no upstream speech-to-text connection for audio",
        )
        return
    if session.ended:
        return
    relay = session.relay
    if relay is None:
        try:
            params = params_from_query(query)
        except ValueError as exc:
            session.refuse(conn, "invalid_event", str(exc))
            return
        relay = session.relay = AudioRelay(
            session, url=url, api_key=server.settings.stt_api_key, params=params
        )
    await relay.feed(pcm)  # returns at once when upstream has ended (the frame is dropped)
