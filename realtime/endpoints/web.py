"""The browser page: `GET /`, its static files under `/web/`, and `GET /v1/realtime/check`.

The page (realtime/web/) is plain HTML, CSS and JavaScript modules, read once when the routes
are built and served from memory. Every answer carries a strict Content-Security-Policy (no
inline script or style, nothing from another origin, WebSocket only to this host),
`X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` (the page's address may
name a session). `index.html` is `no-cache`; the other files carry an ETag and `no-cache` too,
so a browser revalidates them (304 while unchanged) and never runs a stale module after an
upgrade. The files hold no secret: with auth on, the page asks for a token and the WebSocket
checks it.

A browser cannot read the HTTP status of a refused WebSocket upgrade (it sees close code
1006), so the page first asks `GET /v1/realtime/check` with the query it is about to connect
with: the answer is `{"ok": true}` or the refusal the upgrade would give now, with the
same code and message (401 `unauthorized`, 400 `invalid_request`, 404 `no_such_session`, 503
`shutting_down` / `over_capacity`), as a 200 answer whose body carries the verdict. It opens
nothing and counts no refusal in the metrics.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from realtime.server import Server

_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*\.[a-z]+$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# A Host header we are willing to echo into the CSP (name or [v6], optional port).
_HOST = re.compile(r"^(?:[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")

_BASE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_files() -> dict[str, StaticFile]:
    """Every servable file of realtime/web/ (flat: lower-case names with a known type)."""
    files: dict[str, StaticFile] = {}
    for entry in resources.files("realtime").joinpath("web").iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not entry.is_file() or not _NAME.match(name) or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[name] = StaticFile(body, _TYPES[suffix], etag)
    return files


def csp_for(host: str | None) -> str:
    """The page's policy. `connect-src 'self'` covers ws: and wss: of the same origin in CSP
    level 3 (Chromium, Firefox); the host's ws:/wss: origins are named as well for browsers
    that read 'self' as http(s) only. An unusual Host header is not echoed."""
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return f"{_BASE_CSP}; connect-src {connect}"


def _headers(request: web.Request, file: StaticFile, *, page: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": csp_for(request.headers.get("Host")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "ETag": file.etag,
    }
    if page:
        # The page may use the microphone itself; nothing it embeds may.
        headers["Permissions-Policy"] = "microphone=(self), camera=(), geolocation=()"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return headers


def _serve(request: web.Request, file: StaticFile, *, page: bool) -> web.Response:
    headers = _headers(request, file, page=page)
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type + (
        "; charset=utf-8" if file.content_type.startswith("text/") else ""
    )
    return web.Response(body=file.body, headers=headers)


def refusal(server: Server, request: web.Request) -> tuple[int, str, str] | None:
    """The (status, code, message) an upgrade of `/v1/realtime` with this request's query and
    headers would be refused with now, or None. Mirrors `realtime_ws.serve`'s checks, in order;
    without a valid token nothing but the 401 is revealed."""
    if not server.authorized(request):
        return 401, "unauthorized", "a valid auth token is required"
    if server.stopping:
        return 503, "shutting_down", "the server is shutting down"
    if server.at_capacity():
        return 503, "over_capacity", "the server is at its connection limit; retry later"
    role = request.query.get("role", "participant")
    if role not in ("participant", "viewer"):
        return 400, "invalid_request", "role must be participant or viewer"
    session_id = request.query.get("session_id") or None
    if session_id is None:
        return None
    if not _SESSION_ID.match(session_id):
        return 400, "invalid_request", "session_id must be 1-64 of [A-Za-z0-9_-]"
    live = server.sessions.get(session_id)
    gone = live is None and server.ended_recently(session_id)
    # Viewers and resuming participants (PROTOCOL.md "Resuming a session") need it live.
    needs_live = role == "viewer" or "resume_token" in request.query
    if (live is None and needs_live) or gone or (live is not None and not live.accepting):
        return 404, "no_such_session", "no live session with this id (unknown, ended or expired)"
    return None


def check(server: Server, request: web.Request) -> web.Response:
    """`GET /v1/realtime/check`: 200 with the verdict, `{"ok": true}` or `{"ok": false,
    "status": 401, "error": {"code", "message"}}`. The check itself succeeded, so its status
    is 200 either way (a browser logs every 4xx fetch as a console error)."""
    verdict = refusal(server, request)
    body: dict[str, object] = {"ok": True}
    if verdict is not None:
        status, code, message = verdict
        body = {"ok": False, "status": status, "error": {"code": code, "message": message}}
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def routes(server: Server) -> list[web.RouteDef]:
    files = load_files()
    index = files["index.html"]

    async def page(request: web.Request) -> web.Response:
        return _serve(request, index, page=True)

    async def static(request: web.Request) -> web.Response:
        file = files.get(request.match_info["name"])
        if file is None:
            raise web.HTTPNotFound(headers={"X-Content-Type-Options": "nosniff"})
        return _serve(request, file, page=False)

    async def preflight(request: web.Request) -> web.Response:
        return check(server, request)

    return [
        web.get("/", page),
        web.get("/web/{name}", static),
        web.get("/v1/realtime/check", preflight),
    ]
