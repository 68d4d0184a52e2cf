"""The page in Chromium without the microphone: typed turns, settings, the viewer, tokens,
and every failure shown in plain words."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

REPLY = "li.reply[data-turn-order='{}'][data-status=done]"


def connected(page: Any) -> str:
    """Wait for the page's connection; return its session id."""
    page.wait_for_selector("#status[data-state=open]")
    return str(page.evaluate("document.body.dataset.sessionId"))


def say(page: Any, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def reply_text(page: Any, turn_order: int) -> str:
    return str(page.locator(REPLY.format(turn_order)).locator(".text").text_content())


def test_typed_message_gets_a_reply(web, stack) -> None:
    page = web.page(stack.url + "/")
    connected(page)
    say(page, "What is the capital of France?")
    user = page.locator("li.user[data-turn-order='0']")
    assert user.locator(".text").text_content() == "What is the capital of France?"
    page.locator(REPLY.format(0)).wait_for()
    assert reply_text(page, 0).startswith("You said: What is the capital of France?")
    meta = page.locator(REPLY.format(0)).locator(".meta").text_content()
    assert re.fullmatch(r"first token \d+ ms · total \d+ ms", meta), meta
    assert page.input_value("#message") == ""
    assert reply_text(page, 0) in page.text_content("#announcer")  # aria-live
    assert web.console_errors == []


def test_viewer_sees_the_snapshot_and_the_same_replies(web, stack) -> None:
    """The talk page's "copy viewer link" gives the read-only view; a viewer joining after a
    reply sees it in the snapshot; one joining while a reply streams (its snapshot carries
    the reply so far) ends with the same text as the talk page; large type, aria-live."""
    talk = web.page(stack.url + "/", permissions=["clipboard-read", "clipboard-write"])
    session_id = connected(talk)
    say(talk, "Good morning everyone")
    talk.locator(REPLY.format(0)).wait_for()
    first = reply_text(talk, 0)

    talk.click("#copy-link")
    talk.wait_for_selector("#copy-result:has-text('Viewer link copied.')")
    link = talk.evaluate("navigator.clipboard.readText()")
    assert link == talk.input_value("#viewer-link")
    assert link == f"{stack.url}/?session_id={session_id}&role=viewer"

    viewer = web.page(link)
    assert connected(viewer) == session_id
    assert viewer.locator("#talk").is_hidden()
    assert viewer.text_content("#watched-id") == session_id
    assert viewer.locator("li.user .text").first.text_content() == "Good morning everyone"
    assert viewer.locator("li.reply .text").first.text_content() == first
    size = viewer.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert size >= 24

    say(talk, "Let us review the plan")
    talk.locator(REPLY.format(1)).wait_for()
    viewer.locator(REPLY.format(1)).wait_for()
    assert reply_text(viewer, 1) == reply_text(talk, 1)
    assert reply_text(talk, 1) in viewer.text_content("#announcer")

    # A second viewer joins while the next reply streams: snapshot plus deltas add up.
    say(talk, "And the budget for next quarter")
    talk.wait_for_selector("li.reply[data-turn-order='2']")  # created: most likely streaming
    late = web.page(link)
    connected(late)
    talk.locator(REPLY.format(2)).wait_for()
    late.locator(REPLY.format(2)).wait_for()
    assert reply_text(late, 2) == reply_text(talk, 2)
    viewer.locator(REPLY.format(2)).wait_for()
    assert reply_text(viewer, 2) == reply_text(talk, 2)
    assert web.console_errors == []


def test_settings_are_sent_and_confirmed(web, stack) -> None:
    page = web.page(stack.url + "/")
    connected(page)
    assert "preset assistant" in page.text_content("#confirmed")
    assert page.input_value("#model") == "gpt-4.1"
    page.click("#settings summary")
    page.select_option("#preset", "per_turn")
    page.fill("#instructions", "Answer in one short sentence.")
    page.select_option("#trigger", "formatted")
    page.click("#apply")
    page.wait_for_selector("#confirmed:has-text('preset per_turn')")
    confirmed = page.text_content("#confirmed")
    assert "trigger formatted" in confirmed
    assert "Answer in one short sentence." in confirmed
    assert "on_new_turn keep" in confirmed  # the preset's default, as the server says

    page.fill("#instructions", "x" * 40_000)
    page.click("#apply")
    error = page.locator("#errors li[data-code=invalid_config]")
    error.wait_for()
    assert "The server refused the settings" in error.text_content()
    assert "Answer in one short sentence." in page.text_content("#confirmed")
    assert web.console_errors == []


def test_wrong_token_shows_the_401_reason(web, serve_cmd) -> None:
    """Against `serve --auth-token`: without a token and with a wrong one the page shows the
    server's 401 reason and asks for a token; the right one connects (kept in this tab's
    sessionStorage, sent as ?token=) and a typed message gets its reply."""
    sockets: list[str] = []
    page = web.page(None)
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(serve_cmd.url + "/")
    page.wait_for_selector("#access:not([hidden])")
    reason = page.text_content("#access-reason")
    assert "401 unauthorized" in reason and "a valid auth token is required" in reason
    assert page.get_attribute("#status", "data-state") == "refused"

    page.fill("#token", "not-the-token")
    page.click("#token-form button")
    page.wait_for_selector("#access-reason:has-text('The token you entered is not valid')")
    assert "(401 unauthorized): a valid auth token is required" in page.text_content(
        "#access-reason"
    )
    assert "401 unauthorized" in page.text_content("#errors")
    assert sockets == []  # refused before any WebSocket was tried

    page.fill("#token", serve_cmd.token)
    page.click("#token-form button")
    connected(page)
    assert page.locator("#access").is_hidden()
    assert page.evaluate("sessionStorage.getItem('realtime.token')") == serve_cmd.token
    assert len(sockets) == 1 and f"token={serve_cmd.token}" in sockets[0]
    say(page, "Is this thing on?")
    page.locator(REPLY.format(0)).wait_for()
    assert reply_text(page, 0) == "You said: Is this thing on?"
    assert web.console_errors == []


def test_denied_microphone_in_plain_words(web, stack) -> None:
    deny = (
        "navigator.mediaDevices.getUserMedia = () => Promise.reject("
        "new DOMException('Permission denied', 'NotAllowedError'));"
    )
    page = web.page(stack.url + "/", init_script=deny)
    connected(page)
    page.click("#mic")
    error = page.locator("#errors li[data-code=NotAllowedError]")
    error.wait_for()
    assert "Microphone access was denied" in error.text_content()
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    assert page.is_enabled("#message")  # typing still works
    assert web.console_errors == []


def test_scripted_server(web, stack) -> None:
    """A scripted server (Playwright's WebSocket route) in place of /v1/realtime: a viewer
    joining while a reply streams shows the snapshot's text so far and continues it with the
    deltas; `stt_error` is shown in plain words; a dropped connection is reported and the
    page reconnects by itself."""
    connections: list[Any] = []
    snapshot = [
        {"turn_order": 4, "role": "user", "text": "What is the capital of France?"},
        {
            "turn_order": 4,
            "role": "assistant",
            "response_id": "r_1",
            "text": "Paris is",
            "status": "in_progress",
        },
    ]

    def serve(ws: Any) -> None:
        connections.append(ws)
        created = {
            "type": "session.created",
            "session_id": f"s_scripted{len(connections)}",
            "role": "viewer",
            "session": {"preset": "assistant", "model": "m", "trigger": "end_of_turn"},
            "history": snapshot if len(connections) == 1 else [],
            "seq": 7,
        }
        ws.send(json.dumps(created))

    page = web.page(None)
    page.route("**/v1/realtime/check?*", lambda route: route.fulfill(json={"ok": True}))
    page.route_web_socket(re.compile(r".*/v1/realtime\?.*"), serve)
    page.goto(stack.url + "/?session_id=s_scripted1&role=viewer")
    page.wait_for_selector("#status[data-state=open]")
    reply = page.locator("li.reply[data-response-id=r_1]")
    assert reply.get_attribute("data-status") == "streaming"
    assert reply.locator(".text").text_content() == "Paris is"
    for delta in (" the", " capital."):
        message = {"type": "response.delta", "response_id": "r_1", "turn_order": 4}
        connections[0].send(json.dumps({**message, "delta": delta}))
    page.wait_for_selector("li.reply[data-response-id=r_1] .text:text-is('Paris is the capital.')")
    done = {
        "type": "response.done",
        "response_id": "r_1",
        "turn_order": 4,
        "text": "Paris is the capital.",
        "timings": {"ttft_ms": 120.4, "total_ms": 480.0},
    }
    connections[0].send(json.dumps(done))
    page.wait_for_selector("li.reply[data-response-id=r_1][data-status=done]")
    assert reply.locator(".meta").text_content() == "first token 120 ms · total 480 ms"
    assert page.text_content("#announcer") == "Assistant: Paris is the capital."

    stt_error = {
        "type": "error",
        "error": {"code": "stt_error", "status": 3005, "message": "upstream closed"},
    }
    connections[0].send(json.dumps(stt_error))
    error = page.locator("#errors li[data-code=stt_error]")
    error.wait_for()
    assert "Speech-to-text failed (3005): upstream closed" in error.text_content()

    connections[0].close(code=1011, reason="boom")
    page.wait_for_selector("#errors li[data-code=disconnected]")
    assert "the server failed" in page.text_content("#errors li[data-code=disconnected]")
    page.wait_for_selector("#status[data-state=open]")
    assert len(connections) == 2
    assert web.console_errors == []


@pytest.mark.timeout(90)
def test_server_gone_and_back(web, spawn_serve, tmp_path) -> None:
    """A real `serve` stops: the page says so and keeps trying; it starts again on the same
    port: the page reconnects to a new session and works. Chromium logs the refused
    connections of the attempts in between as console errors (a page cannot prevent that);
    no other console error is allowed."""
    first = spawn_serve(tmp_path / "a.log", "--port", "0")
    page = web.page(first.url + "/")
    try:
        session_id = connected(page)
        first.stop()
        page.wait_for_selector("#errors li[data-code=disconnected]")
        page.wait_for_selector("#status:has-text('cannot be reached')")
        again = spawn_serve(tmp_path / "b.log", "--port", str(first.port))
        try:
            new_id = connected(page)
            assert new_id != session_id
            say(page, "Are you back?")
            page.locator(REPLY.format(0)).wait_for()
        finally:
            again.stop()
    finally:
        first.stop()
    unexpected = [e for e in web.console_errors if "ERR_CONNECTION_REFUSED" not in e]
    assert unexpected == []
