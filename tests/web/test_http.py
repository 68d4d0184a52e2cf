"""The page's HTTP side, without a browser: headers, caching, the files, and the check the page
makes before it connects (`GET /v1/realtime/check`)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "realtime" / "web"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_page_headers(stack) -> None:
    status, headers, body = get(stack.url + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = {}
    for part in headers["Content-Security-Policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        csp[name] = value
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    host = stack.url.removeprefix("http://")
    assert csp["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert b'<script type="module" src="/web/app.js"></script>' in body


def test_static_files_revalidate(stack) -> None:
    status, headers, body = get(stack.url + "/web/app.js")
    assert status == 200
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert body == (WEB / "app.js").read_bytes()
    etag = headers["ETag"]
    status, headers, body = get(stack.url + "/web/app.js", {"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    assert get(stack.url + "/web/app.css")[1]["Content-Type"] == "text/css; charset=utf-8"
    assert get(stack.url + "/web/icon.svg")[1]["Content-Type"] == "image/svg+xml"
    for missing in ("/web/nope.js", "/web/..%2Fserver.py", "/web/", "/web/app.JS"):
        assert get(stack.url + missing)[0] == 404, missing


def test_nothing_inline_nothing_from_outside() -> None:
    """No inline script or style (the CSP forbids them), no address of another origin."""
    html = (WEB / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None
    assert "<style" not in html and " style=" not in html and " on" + "click=" not in html
    for path in WEB.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert re.search(r"\bhttps?://|\bwss?://|@import|//cdn", text) is None, path


@pytest.mark.parametrize(
    ("query", "verdict"),
    [
        ("", {"ok": True}),
        (
            "?role=viewer&session_id=s_nobody",
            {"ok": False, "status": 404, "code": "no_such_session"},
        ),
        ("?role=host", {"ok": False, "status": 400, "code": "invalid_request"}),
        ("?session_id=bad%20id", {"ok": False, "status": 400, "code": "invalid_request"}),
    ],
)
def test_check_tells_the_refusal(stack, query, verdict) -> None:
    status, headers, body = get(stack.url + "/v1/realtime/check" + query)
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    answer = json.loads(body)
    assert answer["ok"] is verdict["ok"]
    if not verdict["ok"]:
        assert answer["status"] == verdict["status"]
        assert answer["error"]["code"] == verdict["code"]
        assert answer["error"]["message"]


def test_check_with_auth(serve_cmd) -> None:
    """Against `serve --auth-token`: the page is public, the check wants the token."""
    assert get(serve_cmd.url + "/")[0] == 200
    url = serve_cmd.url + "/v1/realtime/check"
    refused = {
        "ok": False,
        "status": 401,
        "error": {"code": "unauthorized", "message": "a valid auth token is required"},
    }
    assert json.loads(get(url)[2]) == refused
    assert json.loads(get(url, {"Authorization": "Bearer wrong"})[2]) == refused
    assert json.loads(get(url + "?role=viewer&session_id=x&token=wrong")[2]) == refused
    right = {"Authorization": f"Bearer {serve_cmd.token}"}
    assert json.loads(get(url, right)[2]) == {"ok": True}
    assert json.loads(get(f"{url}?token={serve_cmd.token}")[2]) == {"ok": True}
