"""`GET /v3/ws`: AssemblyAI's Universal Streaming v3 protocol, with the service's replies.

Clients of AssemblyAI's streaming API (its official SDKs with `api_host="ws://HOST:PORT"`,
Pipecat) connect unchanged. Audio and control messages go upstream with the service's key;
upstream messages come back verbatim; turns run through the same session machinery as
`/v1/realtime`. The `llm_gateway` query parameter becomes the session config, and each
completed response reaches the client as AssemblyAI's `LLMGatewayResponse`. Without
`stream_llm=true` nothing outside AssemblyAI's own message types is sent, since some clients
(Pipecat) treat unknown types as errors; `Termination` is held back until the replies in
flight have been delivered, so it stays the last message.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from realtime.core.config import ConfigError
from realtime.outbox import Outbox
from realtime.relay import AudioRelay
from realtime.responses import Response
from realtime.session import Session, new_id
from realtime.stt import SttError, SttParams, mint_temporary_token

log = logging.getLogger("realtime.aai_compat")

# Query parameters that belong to the service, not to upstream speech-to-text.
OWN_PARAMS = frozenset({"llm_gateway", "preset", "trigger", "on_new_turn", "stream_llm", "token"})
CONTROL_TYPES = frozenset({"UpdateConfiguration", "ForceEndpoint", "KeepAlive", "Terminate"})
# What the service itself publishes; hidden from clients that did not ask for it.
_SERVICE_PREFIXES = (b'{"type":"response.', b'{"type":"session.', b'{"type":"error"')
CLOSE_INVALID_MESSAGE = 3006


class AaiOutbox(Outbox):
    """An outbox that speaks only AssemblyAI's message types (unless `stream_llm`)."""

    def __init__(self, *args: Any, stream_llm: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_llm = stream_llm
        self._termination: bytes | None = None

    def offer(self, data: bytes) -> bool:
        if not self.stream_llm and data.startswith(_SERVICE_PREFIXES):
            return True
        if b'"type":"Termination"' in data:
            self._termination = data  # sent last, when the session closes
            return True
        return super().offer(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._termination is not None and not self.closed:
            super().offer(self._termination)
            self._termination = None
        super().close(code, reason)


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


def llm_gateway_response(r: Response, result: Any) -> bytes:
    """AssemblyAI's `LLMGatewayResponse` for one completed response."""
    usage = getattr(result, "usage", None)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(r.delivered)}
    calls = getattr(result, "tool_calls", None)
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in calls
        ]
    data = {
        "request_id": r.request_id,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": getattr(result, "finish_reason", None),
            }
        ],
        "usage": usage if isinstance(usage, dict) else None,
        "model": getattr(result, "model", None) or r.model,
    }
    return orjson.dumps(
        {
            "type": "LLMGatewayResponse",
            "turn_order": r.turn_order,
            "transcript": r.text_in,
            "data": data,
        }
    )


def _http_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


def install(server: Any) -> None:
    """Add `GET /v3/ws` to the server (only when upstream speech-to-text is configured)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not server.authorized(request, raw_header=True):
            return _http_error(401, "Unauthorized Connection: a valid token is required")
        if server.stopping:
            return _http_error(503, "the server is shutting down")
        try:
            patch = session_patch(request.query)
            params = upstream_params(request.query)
            config = server.deps.default_config.update(patch)
        except ConfigError as exc:
            return _http_error(400, str(exc))
        stream_llm = request.query.get("stream_llm", "").lower() == "true"
        ws = web.WebSocketResponse(
            max_msg_size=server.settings.max_frame_bytes, heartbeat=server.settings.heartbeat_s
        )
        await ws.prepare(request)
        session = Session(new_id("s_"), server.deps)
        session.config = config
        session.policy = session._new_policy(config)
        box = AaiOutbox(
            ws, role="participant", limit=server.settings.participant_queue, stream_llm=stream_llm
        )

        def on_end(outcome: str, r: Response, result: Any) -> None:
            if outcome == "done":
                box.offer(llm_gateway_response(r, result))

        session.listeners.append(on_end)
        server.sessions[session.id] = session
        try:
            async with session.running():
                session.attach(box)
                session.relay = AudioRelay(
                    session,
                    box,
                    url=server.settings.stt_url,
                    api_key=server.settings.stt_api_key,
                    params=params,
                )
                try:
                    session.spawn(box.run_writer())
                    await _read(ws, box, session.relay)
                finally:
                    session.detach(box)
        finally:
            server.sessions.pop(session.id, None)
        return ws

    async def stt_token(request: web.Request) -> web.Response:
        """Mint a temporary speech-to-text token with the server's key, for a signed-in client
        (a browser can then stream to AssemblyAI directly and forward the events here)."""
        if not server.settings.auth_tokens:
            return _http_error(403, "token minting needs the server's auth tokens to be on")
        if not server.authorized(request):
            return _http_error(401, "a valid auth token is required")
        key = server.settings.stt_api_key
        if not key:
            return _http_error(503, "the server has no speech-to-text API key")
        try:
            expires = int(request.query.get("expires_in_seconds", "60"))
            cap = request.query.get("max_session_duration_seconds")
            max_s = int(cap) if cap is not None else None
        except ValueError:
            return _http_error(400, "expires_in_seconds and max_session_duration_seconds: integers")
        if not 1 <= expires <= 600 or (max_s is not None and not 60 <= max_s <= 10800):
            return _http_error(
                400, "expires_in_seconds must be 1-600, max_session_duration_seconds 60-10800"
            )
        try:
            body = await mint_temporary_token(
                key,
                expires_in_seconds=expires,
                max_session_duration_seconds=max_s,
                base_url=token_host(server.settings.stt_url),
            )
        except SttError as exc:
            return _http_error(502, f"speech-to-text refused the token request ({exc.code})")
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    server.app.router.add_get("/v3/ws", handle)
    server.app.router.add_get("/v1/stt-token", stt_token)


def token_host(stt_url: str) -> str:
    """wss://streaming.assemblyai.com/v3/ws -> https://streaming.assemblyai.com."""
    parts = urlsplit(stt_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def _read(ws: web.WebSocketResponse, box: AaiOutbox, relay: AudioRelay) -> None:
    async for frame in ws:
        if frame.type == WSMsgType.BINARY:
            await relay.feed(frame.data)
        elif frame.type == WSMsgType.TEXT:
            try:
                message = orjson.loads(frame.data)
            except orjson.JSONDecodeError:
                _invalid(box, f"Invalid JSON: {frame.data[:64]}")
                return
            if not isinstance(message, dict) or message.get("type") not in CONTROL_TYPES:
                _invalid(box, f"Invalid Message Type: {str(frame.data)[:64]}")
                return
            await relay.control(message)
        elif frame.type == WSMsgType.ERROR:
            return


def _invalid(box: AaiOutbox, text: str) -> None:
    """As AssemblyAI does: an Error frame, then close with its code."""
    Outbox.offer(
        box, orjson.dumps({"type": "Error", "error_code": CLOSE_INVALID_MESSAGE, "error": text})
    )
    box.close(CLOSE_INVALID_MESSAGE, text[:100])
