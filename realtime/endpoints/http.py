"""Plain HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/v1/stt-token`."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from realtime.server import json_error
from realtime.stt import SttError, mint_temporary_token

if TYPE_CHECKING:
    from realtime.server import Server


def routes(server: Server) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        if server.stopping:
            return json_error(503, "shutting_down", "the server is shutting down")
        if server.at_capacity():
            return json_error(503, "over_capacity", "the server is at its connection limit")
        if server.rates is not None and not server.rates.healthy:
            return json_error(
                503,
                "over_capacity",
                "Redis does not answer: rate windows are this node's own until it is back",
            )
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        if not server.settings.public_metrics and not server.authorized(request):
            return json_error(
                401,
                "unauthorized",
                "a valid auth token is required for /metrics",
                **{"WWW-Authenticate": "Bearer"},
            )
        return web.Response(
            text=server.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def token(request: web.Request) -> web.Response:
        return await stt_token(server, request)

    out = [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]
    if server.settings.stt_url:
        out.append(web.get("/v1/stt-token", token))
    return out


def _http_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


async def stt_token(server: Server, request: web.Request) -> web.Response:
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
            base_url=token_host(server.settings.stt_url or ""),
        )
    except SttError as exc:
        return _http_error(502, f"speech-to-text refused the token request ({exc.code})")
    return web.Response(body=orjson.dumps(body), content_type="application/json")



def token_host(stt_url: str) -> str:
    """wss://streaming.assemblyai.com/v3/ws -> https://streaming.assemblyai.com."""
    parts = urlsplit(stt_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


