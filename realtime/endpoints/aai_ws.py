"""`GET /v3/ws`: AssemblyAI's Universal Streaming v3 protocol, with the service's replies.

Clients of AssemblyAI's streaming API (its official SDKs with `api_host="ws://HOST:PORT"`,
Pipecat) connect unchanged. Audio and control messages go upstream with the service's key;
upstream messages come back verbatim; turns run through the same session core as
`/v1/realtime`. The `llm_gateway` query parameter becomes the session config, and each
completed response reaches the client as AssemblyAI's `LLMGatewayResponse`, built at this
edge from the typed `response.done`. Without `stream_llm=true` nothing outside AssemblyAI's
own message types is sent, since some clients (Pipecat) treat unknown types as errors;
`Termination` is held back until the replies in flight have been delivered, so it stays the
last message.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from realtime.connection import Connection
from realtime.core.config import ConfigError
from realtime.core.outbound import Outbound
from realtime.relay import AudioRelay
from realtime.session import Session, new_id
from realtime.stt import SttParams

if TYPE_CHECKING:
    from realtime.server import Server

# Query parameters that belong to the service, not to upstream speech-to-text.
OWN_PARAMS = frozenset({"llm_gateway", "preset", "trigger", "on_new_turn", "stream_llm", "token"})
CONTROL_TYPES = frozenset({"UpdateConfiguration", "ForceEndpoint", "KeepAlive", "Terminate"})
CLOSE_INVALID_MESSAGE = 3006
_TRANSCRIPTS_KEPT = 32


class AaiConnection(Connection):
    """A connection that speaks only AssemblyAI's message types (unless `stream_llm`)."""

    __slots__ = ("_termination", "_transcripts", "_upstream_code", "stream_llm")

    def __init__(self, *args: Any, stream_llm: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_llm = stream_llm
        self._termination: bytes | None = None
        self._upstream_code: int | None = None
        # turn_order -> the turn's final transcript (the formatted copy once it came)
        self._transcripts: OrderedDict[int, str] = OrderedDict()

    def offer(self, message: Outbound, data: bytes) -> bool:
        kind = message.type
        if message.raw is not None:  # relayed from upstream: byte for byte, no seq
            if kind == "Termination":
                self._termination = message.raw  # sent last, when the session closes
                return True
            if kind == "Turn" and message.fields is not None:
                self._remember(message.fields)
            return self.offer_bytes(message.raw)
        if kind == "response.done" and message.fields is not None:
            if not self.offer_bytes(self._llm_gateway_response(message.fields)):
                return False
        elif kind == "error" and message.fields is not None:
            self._note_upstream_error(message.fields)
        if not self.stream_llm:
            return True
        return self.offer_bytes(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._termination is not None and not self.closed:
            self.offer_bytes(self._termination)
            self._termination = None
        if code == 1000 and self._upstream_code is not None:
            code = self._upstream_code  # pass upstream's own close code on, as AssemblyAI would
        super().close(code, reason)

    def _remember(self, turn: Any) -> None:
        order, text = turn.get("turn_order"), turn.get("transcript")
        if not (turn.get("end_of_turn") and isinstance(order, int) and isinstance(text, str)):
            return
        if turn.get("turn_is_formatted") or order not in self._transcripts:
            self._transcripts[order] = text
            self._transcripts.move_to_end(order)
            while len(self._transcripts) > _TRANSCRIPTS_KEPT:
                self._transcripts.popitem(last=False)

    def _note_upstream_error(self, fields: Any) -> None:
        error = fields.get("error") or {}
        status = error.get("status")
        if error.get("code") == "stt_error" and isinstance(status, int):
            if 3000 <= status <= 4999 or status in (1008, 1011):
                self._upstream_code = status

    def _llm_gateway_response(self, done: Any) -> bytes:
        """AssemblyAI's `LLMGatewayResponse` for one completed response."""
        message: dict[str, Any] = {"role": "assistant", "content": done.get("text", "")}
        if done.get("tool_calls"):
            message["tool_calls"] = done["tool_calls"]
        data = {
            "request_id": done.get("request_id"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": done.get("finish_reason")}
            ],
            "usage": done.get("usage"),
            "model": done.get("model"),
        }
        turn_order = done.get("turn_order")
        return orjson.dumps(
            {
                "type": "LLMGatewayResponse",
                "turn_order": turn_order,
                "transcript": self._transcripts.get(turn_order, ""),
                "data": data,
            }
        )


def session_patch(query: Any) -> dict[str, Any]:
    """The session config that the `llm_gateway` (and preset/trigger/...) parameters ask for.

    AssemblyAI's semantics are the default: one reply per turn, no history (preset
    `per_turn`); system messages become the instructions, the user message holding
    `{{turn}}` becomes the prompt template.
    """
    patch: dict[str, Any] = {"preset": "per_turn"}
    raw = query.get("llm_gateway")
    if raw:
        try:
            spec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ConfigError("llm_gateway: must be a JSON object") from None
        if not isinstance(spec, dict):
            raise ConfigError("llm_gateway: must be a JSON object")
        if isinstance(spec.get("model"), str):
            patch["model"] = spec["model"]
        if "max_tokens" in spec:
            patch["max_tokens"] = spec["max_tokens"]
        messages = spec.get("messages") or []
        if not isinstance(messages, list):
            raise ConfigError("llm_gateway: messages must be an array")
        system = [
            m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "system"
        ]
        user = [
            m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"
        ]
        texts = [t for t in system if isinstance(t, str)]
        patch["instructions"] = "\n\n".join(texts)
        template = spec.get("prompt") if isinstance(spec.get("prompt"), str) else None
        if template is None and user and isinstance(user[-1], str):
            template = user[-1]
        if template is not None:
            patch["prompt"] = template if "{{turn}}" in template else template + "\n\n{{turn}}"
    for key in ("preset", "trigger", "on_new_turn"):
        if key in query:
            patch[key] = query[key]
    return patch


def upstream_params(query: Any) -> SttParams:
    extra = {k: v for k, v in query.items() if k not in OWN_PARAMS}
    fields: dict[str, Any] = {}
    if "sample_rate" in extra:
        try:
            fields["sample_rate"] = int(extra.pop("sample_rate"))
        except ValueError:
            raise ConfigError("sample_rate: must be an integer") from None
    return SttParams(**fields, extra=extra)


def _http_error(status: int, message: str) -> web.Response:
    """AssemblyAI's refusal body: `{"error": message}`."""
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


def routes(server: Server) -> list[web.RouteDef]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve(server, request)

    return [web.get("/v3/ws", handle)]


async def serve(server: Server, request: web.Request) -> web.StreamResponse:
    refusal = server.refuse_upgrade(request, raw_header=True)
    if refusal is not None:
        return refusal
    try:
        patch = session_patch(request.query)
        params = upstream_params(request.query)
        config = server.deps.default_config.update(patch)
    except ConfigError as exc:
        return _http_error(400, str(exc))
    stream_llm = request.query.get("stream_llm", "").lower() == "true"
    # As AssemblyAI does: LLM replies only for a client that asked for them with
    # `llm_gateway` (or `stream_llm`), unless the operator applies the default model.
    llm = "llm_gateway" in request.query or stream_llm or server.settings.v3_default_llm
    url = server.settings.stt_url
    assert url is not None
    async with server.handler():
        # AssemblyAI's protocol has no resume: the session ends with its connection.
        session = Session(new_id("s_"), server.deps, replace(config, resume_window_ms=0))
        session.llm = llm
        server.start_session(session)
        try:
            await asyncio.sleep(0)  # the session's task enters its TaskGroup first (FIFO)
            assert session.running_now
            ws = await server.upgrade(request)
        except BaseException:
            session.end("client", 1000)
            raise
        conn = AaiConnection(
            ws,
            request,
            conn_id=server.next_conn_id(),
            role="participant",
            limit=server.deps.participant_queue,
            stream_llm=stream_llm,
            endpoint="/v3/ws",
        )
        server.add_connection(conn)
        try:
            if session.attach(conn):
                relay = AudioRelay(
                    session, url=url, api_key=server.settings.stt_api_key, params=params
                )
                session.relay = relay
                try:
                    await conn.serve(lambda: _read(ws, conn, relay), session_id=session.id)
                finally:
                    session.detach(conn)
            else:
                session.end("client", 1000)
        finally:
            server.forget_connection(conn)
        return ws


async def _read(ws: web.WebSocketResponse, conn: AaiConnection, relay: AudioRelay) -> None:
    async for frame in ws:
        if frame.type is WSMsgType.BINARY:
            await relay.feed(frame.data)
        elif frame.type is WSMsgType.TEXT:
            try:
                message = orjson.loads(frame.data)
            except orjson.JSONDecodeError:
                _invalid(conn, f"Invalid JSON: {frame.data[:64]}")
                return
            if not isinstance(message, dict) or message.get("type") not in CONTROL_TYPES:
                _invalid(conn, f"Invalid Message Type: {str(frame.data)[:64]}")
                return
            await relay.control(message)
        elif frame.type is WSMsgType.ERROR:
            return
        if conn.closed:
            return


def _invalid(conn: AaiConnection, text: str) -> None:
    """As AssemblyAI does: an Error frame, then close with its code."""
    error = {"type": "Error", "error_code": CLOSE_INVALID_MESSAGE, "error": text}
    conn.offer_bytes(orjson.dumps(error))
    conn.close(CLOSE_INVALID_MESSAGE, text[:100])
