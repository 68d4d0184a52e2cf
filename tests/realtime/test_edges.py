"""Edge cases over real loopback sockets: clients that leave, stall, misbehave or overload.

One regression test per bug; each docstring names the bug it guards. Raw sockets
(`support.rawws`) stand in where a normal client cannot misbehave enough: aborted TCP
connections, peers that never read, unmasked frames, invalid UTF-8, frames at the size limit.
Deadlines here are how long an outcome may take to happen, never a measure of speed.

Across the module, no connection may be closed with 1001 unless its server was shutting down
at that moment (PROTOCOL.md: 1001 is for server shutdown only); `no_going_away` checks it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
from support.audio import tone
from support.rawws import OP_TEXT, RawWs, Refused
from support.service import Client, Service, turn

from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator
from realtime.server import Server, ServerSettings

# ---- settings per test ----------------------------------------------------------------------


def server_settings(**changes: Any) -> Callable[[Any], Any]:
    """Decorate a test to run its server with these `ServerSettings` changes."""

    def mark(fn: Any) -> Any:
        fn.server_settings = changes
        return fn

    return mark


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> ServerSettings:
    base = ServerSettings(
        host="127.0.0.1", port=0, default_config=SessionConfig.from_defaults(model="gpt-4.1", resume_window_ms=0)
    )
    return replace(base, **getattr(request.function, "server_settings", {}))


# ---- close codes seen: 1001 only on shutdown ------------------------------------------------


class CloseWatch:
    """Every close code a client of this module received, judged when it arrives."""

    def __init__(self) -> None:
        self.unexpected: list[str] = []

    def seen(self, code: int | None, server: Server, where: str) -> None:
        if code == 1001 and not server.stopping:
            self.unexpected.append(f"{where}: closed with 1001 while the server was not stopping")


WATCH = CloseWatch()


@pytest.fixture(autouse=True)
def no_going_away() -> Any:
    """Bug 12 (1001 outside shutdown): no test here may see 1001 unless its server stops."""
    WATCH.unexpected.clear()
    yield
    assert not WATCH.unexpected, WATCH.unexpected


class Watched(Client):
    """The recording /v1/realtime client, reporting its close code to WATCH."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, server: Server, where: str) -> None:
        super().__init__(ws)
        self.server = server
        self.where = where

    async def _read(self) -> None:
        await super()._read()
        WATCH.seen(self.close_code, self.server, self.where)


class V3Client:
    """An aiohttp client of /v3/ws that records every JSON message and its close code."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, server: Server) -> None:
        self.ws = ws
        self.server = server
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(orjson.loads(frame.data))
        self.close_code = self.ws.close_code
        WATCH.seen(self.close_code, self.server, "/v3/ws")

    async def wait_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for m in self.messages:
                    if m.get("type") == kind:
                        return m
                if self.reader.done():
                    raise AssertionError(f"closed before {kind}; got {self.types()}")
                await asyncio.sleep(0.01)

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in self.messages]

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def connect(svc: Service, query: str = "", session: dict[str, Any] | None = None) -> Watched:
    ws = await svc.http.ws_connect(svc.ws_url + (f"?{query}" if query else ""))
    client = Watched(ws, svc.server, "/v1/realtime" + (f"?{query}" if query else ""))
    await client.start()
    await client.wait_type("session.created")
    if session:
        await client.send({"type": "session.update", "session": session})
        await client.wait_type("session.updated")
    return client


async def connect_v3(svc: Service, query: str = "") -> V3Client:
    url = f"ws://127.0.0.1:{svc.server.port}/v3/ws?sample_rate=16000{query}"
    return V3Client(await svc.http.ws_connect(url), svc.server)


async def raw(server: Server, path: str, **kwargs: Any) -> RawWs:
    ws = await RawWs.connect(server.port, path, **kwargs)
    ws.on_close = lambda code: WATCH.seen(code, server, path)
    return ws


# ---- helpers --------------------------------------------------------------------------------


async def wait_clean(server: Server, timeout: float = 5.0) -> None:
    """Wait until `server.residue()` is all zeros; fail naming what is still held."""
    deadline = time.monotonic() + timeout
    while True:
        held = {k: v for k, v in server.residue().items() if v}
        if not held:
            assert server.metrics.sessions_active.value() == 0
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"still held {timeout:g} s after the clients left: {held}")
        await asyncio.sleep(0.02)


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.02)


async def within(aw: Any, timeout: float, what: str) -> Any:
    """Await `aw`; fail saying `what` did not happen when it takes longer than `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def first_error(c: Client, timeout: float = 5.0) -> dict[str, Any]:
    """The first `error` message the client got; fails listing what came instead."""
    try:
        return await c.wait_for(lambda m: m["type"] == "error", timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"no error within {timeout:g} s; got {c.types()}") from None


def long_turn(order: int, words: int) -> dict[str, Any]:
    """A final Turn of `words` words, without the per-word list (the emulator echoes it)."""
    return {
        "type": "Turn",
        "turn_order": order,
        "turn_is_formatted": False,
        "end_of_turn": True,
        "transcript": " ".join(["word"] * words),
        "end_of_turn_confidence": 0.9,
        "utterance": "",
    }


def errors(messages: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "error" and m["error"]["code"] == code]


async def refusal(server: Server, path: str) -> Refused:
    """The refusal of an upgrade that must be refused (fails if the upgrade succeeds)."""
    try:
        ws = await raw(server, path)
    except Refused as refused:
        return refused
    ws.close()
    raise AssertionError(f"GET {path} was upgraded (101); a refusal was expected")


async def pump_audio(
    send: Callable[[bytes], Any], closed: Callable[[], bool], seconds: float
) -> int:
    """Send 0.5 s audio frames as fast as the server takes them, for `seconds` or until the
    connection closes. Fails when one send does not complete within 2 s (the server stopped
    reading). Returns how many frames were sent."""
    frame = b"".join(tone(0.5, True))
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and not closed():
        try:
            async with asyncio.timeout(2.0):
                await send(frame)
        except TimeoutError:
            pytest.fail(f"a send blocked for 2 s after {sent} frames: the server stopped reading")
        except (ConnectionError, RuntimeError):
            break  # the server ended the connection: the sender is not blocked
        sent += 1
        await asyncio.sleep(0.001)
    return sent


# ---- 1. /v3/ws clients that leave without Terminate -----------------------------------------


async def test_v3_client_that_aborts_without_terminate_ends_its_session(
    audio_service: Service, stt: SttEmulator
):
    """Bug 1: a /v3/ws client that drops its TCP connection without `Terminate` left its
    session, its relay and its upstream speech-to-text session open forever."""
    server = audio_service.server
    ws = await raw(server, "/v3/ws?sample_rate=16000")
    await ws.wait_for("Begin")
    for f in tone(0.3, True):
        await ws.send_binary(f)
        await asyncio.sleep(0.02)
    assert server.residue()["sessions"] == 1
    ws.abort()
    record = await stt.wait_closed(timeout=5)
    assert record.closed
    await wait_clean(server)


@server_settings(max_frame_bytes=4096)
async def test_v3_client_closed_with_1009_ends_its_session(
    audio_service: Service, stt: SttEmulator
):
    """Bug 1: a /v3/ws client closed by the server with 1009 (frame over the limit) left its
    session and its upstream speech-to-text session open."""
    server = audio_service.server
    ws = await raw(server, "/v3/ws?sample_rate=16000")
    await ws.wait_for("Begin")
    await ws.send_binary(tone(0.05, True)[0])
    await ws.send_binary(b"\0" * 4097)
    _, code = await ws.read_until_close(timeout=5)
    ws.close()
    assert code == 1009
    record = await stt.wait_closed(timeout=5)
    assert record.closed
    await wait_clean(server)


# ---- 2. upstream speech-to-text fails while audio keeps arriving ----------------------------

# How upstream fails: at once (an Error right after Begin), or mid-stream (the upstream session
# expires after 1 s, while the client is still sending faster than real time, so the relay's
# queue is full at that moment).
FAILURES = ["at_begin", "mid_stream"]


def _fail_upstream(stt: SttEmulator, how: str) -> None:
    if how == "at_begin":
        stt.fail_next(3008, "Session Expired: Maximum session duration exceeded")
    else:
        stt.max_session_s = 1.0  # read per session: 3008 after one second


@pytest.mark.parametrize("how", FAILURES)
async def test_stt_failure_while_audio_streams_on_v1_realtime(
    audio_service: Service, stt: SttEmulator, how: str
):
    """Bug 2: when upstream speech-to-text failed while a /v1/realtime client kept sending
    audio, the relay's full queue was never drained again: the handler blocked on it, the
    client's sends stalled, and the session never ended."""
    server = audio_service.server
    _fail_upstream(stt, how)
    c = await connect(audio_service)
    await pump_audio(c.ws.send_bytes, lambda: c.ws.closed, seconds=4.0)
    await wait_clean(server)
    assert len(errors(c.messages, "stt_error")) == 1, c.types()
    record = await stt.wait_closed(timeout=5)
    assert record.closed and record.errors == [3008]


@pytest.mark.parametrize("how", FAILURES)
async def test_stt_failure_while_audio_streams_on_v3(
    audio_service: Service, stt: SttEmulator, how: str
):
    """Bug 2: the same on /v3/ws: after the upstream failure the client's audio sends stalled
    and the session never ended; the upstream `Error` still reaches the client verbatim."""
    server = audio_service.server
    _fail_upstream(stt, how)
    c = await connect_v3(audio_service)
    await pump_audio(c.ws.send_bytes, lambda: c.ws.closed, seconds=4.0)
    await wait_clean(server)
    upstream_errors = [m for m in c.messages if m.get("type") == "Error"]
    assert [m.get("error_code") for m in upstream_errors] == [3008], c.types()
    await c.close()
    record = await stt.wait_closed(timeout=5)
    assert record.closed


# ---- 3. joining a session that has ended ------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "participant"])
async def test_joining_a_session_that_is_draining_after_termination_is_refused(
    service: Service, role: str
):
    """Bug 3: after `Termination` a session still drains its replies; a viewer (or a
    participant) joining it then was attached to it instead of being refused with 404."""
    service.emulator.token_delay = 0.01
    c = await connect(service)
    sid = c.messages[0]["session_id"]
    await c.send(turn(0, "tell me a long story " * 20))
    await c.wait_type("response.delta")
    await c.send({"type": "Termination"})
    await asyncio.sleep(0.1)  # the Termination was read; the reply is still streaming
    assert "response.done" not in c.types()
    refused = await refusal(service.server, f"/v1/realtime?role={role}&session_id={sid}")
    assert refused.status == 404
    body = refused.json()
    assert body["error"]["code"] == "no_such_session" and body["error"]["message"]
    assert await c.wait_closed() == 1000
    await wait_clean(service.server)


@pytest.mark.parametrize("role", ["viewer", "participant"])
async def test_joining_a_session_whose_last_participant_left_is_refused(
    service: Service, role: str
):
    """Bug 3: a participant giving the id of a session that has ended got a new session with
    that id (a viewer got 404); both must get 404 no_such_session before the upgrade."""
    c = await connect(service, session={"resume_window_ms": 0})
    sid = c.messages[0]["session_id"]
    await c.send(turn(0, "hello there"))
    await c.wait_type("response.done")
    await c.close()
    await wait_clean(service.server)
    refused = await refusal(service.server, f"/v1/realtime?role={role}&session_id={sid}")
    assert refused.status == 404
    assert refused.json()["error"]["code"] == "no_such_session"
    assert sid not in service.server.sessions


# ---- 4. a pending format wait does not keep a session alive -------------------------------


async def test_a_pending_format_wait_does_not_keep_a_left_session_alive(service: Service):
    """Bug 4: with trigger `formatted`, an unformatted final starts a format_wait_ms timer;
    the timer was a task of the session's TaskGroup, so a session whose participant left
    lived on until it expired (5 s here). The session must be gone well before that."""
    c = await connect(
        service, session={"trigger": "formatted", "format_wait_ms": 5000, "resume_window_ms": 0}
    )
    await c.send(turn(0, "what time is it", formatted=False))
    await asyncio.sleep(0.1)  # the Turn is read and the timer armed
    await c.close()
    await wait_clean(service.server, timeout=2.0)


# ---- 5. peers that stop reading -----------------------------------------------------------


@server_settings(write_timeout_s=0.5, viewer_queue=1_000_000)
async def test_a_viewer_that_stops_reading_is_aborted_at_the_write_deadline(service: Service):
    """Bug 5: a viewer that stopped reading (its queue not yet full) stayed connected until
    the heartbeat noticed, 45 s later; it must be aborted once a write waits longer than
    write_timeout_s, without disturbing the session or its participant."""
    server, metrics = service.server, service.server.metrics
    service.emulator.token_delay = 0.0
    p = await connect(service, session={"preset": "per_turn"})
    sid = p.messages[0]["session_id"]
    v = await raw(server, f"/v1/realtime?role=viewer&session_id={sid}", rcvbuf=4096)
    await wait_until(
        lambda: metrics.connections_active.value("viewer") == 1, 5, "the viewer attached"
    )
    await p.send(long_turn(0, 20000))
    done = (await p.wait_type("response.done", timeout=60))[0]
    assert len(done["text"].split()) >= 20000
    await wait_until(
        lambda: metrics.connections_active.value("viewer") == 0,
        5,
        "the stalled viewer was aborted",
    )
    assert metrics.write_timeouts_total.value("viewer") >= 1
    # The session and its participant go on.
    await p.send(turn(1, "still there"))
    await p.wait_type("response.done", 2)
    assert server.residue()["sessions"] == 1
    v.close()
    await p.close()
    await wait_clean(server)


@server_settings(write_timeout_s=0.5)
async def test_a_participant_that_stops_reading_has_its_reply_cancelled_upstream(
    service: Service,
):
    """Bug 5: a participant that stopped reading while a long reply streamed held the reply
    (and its gateway stream) open, paused by backpressure, until the heartbeat; it must be
    aborted at the write deadline and its reply's upstream request closed, not read to the
    end."""
    server, emulator = service.server, service.emulator
    emulator.token_delay = 0.0
    emulator.reply_words = 300_000
    a = await raw(server, "/v1/realtime", rcvbuf=4096)
    await a.send_json(
        {"type": "session.update", "session": {"preset": "per_turn", "resume_window_ms": 0}}
    )
    await a.send_json(turn(0, "tell me everything"))
    gone = await within(
        emulator.wait_disconnect(timeout=60), 15, "the stalled reply's upstream request closed"
    )
    assert not gone.completed
    await wait_clean(server)
    assert server.metrics.write_timeouts_total.value("participant") >= 1
    a.close()


@server_settings(viewer_queue=1_000_000)
async def test_shutdown_with_a_stalled_viewer_completes_in_time(service: Service):
    """Bug 5: `server.stop()` waited for a connection that could not take its close frame
    (3 s of polling, then aiohttp's 5 s shutdown timeout); with a stalled peer connected it
    must complete within 2 s (here the write deadline, 10 s by default, has not passed)."""
    server = service.server
    service.emulator.token_delay = 0.0
    p = await connect(service, session={"preset": "per_turn"})
    sid = p.messages[0]["session_id"]
    v = await raw(server, f"/v1/realtime?role=viewer&session_id={sid}", rcvbuf=4096)
    await wait_until(
        lambda: server.metrics.connections_active.value("viewer") == 1, 5, "the viewer attached"
    )
    await p.send(long_turn(0, 20000))
    # The participant has the whole reply; the viewer, reading nothing, holds nearly all of it
    # queued behind a full socket: it is stalled now.
    await p.wait_type("response.done", timeout=60)
    try:
        async with asyncio.timeout(2.0):
            await server.stop()
    except TimeoutError:
        pytest.fail("server.stop() did not complete within 2 s with a stalled peer connected")
    finally:
        v.close()
    await wait_clean(server, timeout=1.0)
    assert await p.wait_closed() == 1001


# ---- 6. a stalled participant does not hold the gateway slot --------------------------------


@server_settings(max_concurrent_requests=1, write_timeout_s=0.5)
async def test_a_stalled_participant_does_not_hold_the_gateway_slot(service: Service):
    """Bug 6: with one gateway slot, a participant that stopped reading kept its reply paused
    by backpressure, holding the slot, so every other session's turn waited behind it."""
    server, emulator = service.server, service.emulator
    emulator.token_delay = 0.0
    a = await raw(server, "/v1/realtime", rcvbuf=4096)
    await a.send_json(
        {"type": "session.update", "session": {"preset": "per_turn", "resume_window_ms": 0}}
    )
    # Far more than the kernel buffers (up to 4 MB here) hold, so A's writes stall.
    await a.send_json(long_turn(0, 150_000))
    await wait_until(lambda: len(emulator.requests) == 1, 5, "A's request was sent")
    b = await connect(service)
    await b.send(turn(0, "hello there"))
    done = (
        await within(
            b.wait_type("response.done", timeout=60), 10, "B's reply (A's slot was released)"
        )
    )[0]
    assert "hello there" in done["text"].lower()
    a.close()
    await b.close()
    await wait_clean(server)


# ---- 7. deeply nested JSON config values ----------------------------------------------------


def _nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


DEEP: dict[str, Callable[[int], Any]] = {
    "tools": lambda d: [{"type": "function", "function": {"name": "f", "parameters": _nest(d)}}],
    "tool_choice": lambda d: {"type": "function", "function": {"name": "f"}, "x": _nest(d)},
    "response_format": lambda d: {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": _nest(d)},
    },
    "fallbacks": lambda d: [{"model": "gpt-4.1", "x": _nest(d)}],
}


@pytest.mark.parametrize("field", sorted(DEEP))
async def test_a_deeply_nested_config_value_is_refused_and_the_session_goes_on(
    service: Service, field: str
):
    """Bug 7: a JSON-valued config field nested ~250 levels deep was accepted; serialising
    the config (session.updated, the request body) then failed inside the handler and the
    connection was closed with 1001. It must get invalid_config, with nothing applied."""
    c = await connect(service)
    # The stdlib encoder: orjson (the test client's) refuses to write more than 255 levels.
    await c.ws.send_str(
        json.dumps({"type": "session.update", "session": {field: DEEP[field](250)}})
    )
    err = await first_error(c)
    assert err["error"]["code"] == "invalid_config", err
    await c.send(turn(0, "hello there"))
    done = (await c.wait_type("response.done"))[0]
    assert "hello there" in done["text"].lower()
    assert "session.updated" not in c.types()
    assert field not in service.emulator.requests[-1].body
    assert not c.ws.closed
    await c.close()


# ---- 8. oversized templates and instructions ------------------------------------------------


async def test_a_prompt_repeating_a_placeholder_is_refused(service: Service):
    """Bug 8: a `prompt` of `{{turn}}` repeated 100,000 times was accepted and multiplied
    each turn's text 100,000 times into the request; a placeholder may appear at most once."""
    c = await connect(service)
    await c.send({"type": "session.update", "session": {"prompt": "{{turn}}" * 100_000}})
    err = await first_error(c)
    assert err["error"]["code"] == "invalid_config", err
    await c.send(turn(0, "hello there"))
    await c.wait_type("response.done")
    assert service.emulator.requests[-1].body["messages"][-1]["content"] == "hello there"
    assert "session.updated" not in c.types()
    await c.close()


async def test_megabyte_instructions_are_refused(service: Service, settings: ServerSettings):
    """Bug 8: `instructions` of about a megabyte (a frame just under max_frame_bytes) was
    accepted and sent as the system message of every request."""
    c = await connect(service)
    head = b'{"type":"session.update","session":{"instructions":"'
    tail = b'"}}'
    size = settings.max_frame_bytes - 1
    frame = head + b"x" * (size - len(head) - len(tail)) + tail
    await c.ws.send_str(frame.decode())
    err = await first_error(c)
    assert err["error"]["code"] == "invalid_config", err
    await c.send(turn(0, "hello there"))
    await c.wait_type("response.done")
    system = service.emulator.requests[-1].body["messages"][0]
    assert len(str(system.get("content"))) < 100_000
    await c.close()


# ---- 9. turn_order out of range ----------------------------------------------------------


@pytest.mark.parametrize("order", [2**64 - 1, 2**53])
async def test_a_turn_order_beyond_2_53_is_refused_and_later_turns_still_fire(
    service: Service, order: int
):
    """Bug 9: a Turn with turn_order >= 2^53 was accepted; it fired a reply and, being the
    newest turn, made every later normal turn look stale, so they never fired."""
    c = await connect(service)
    await c.send(turn(order, "from far in the future"))
    err = await first_error(c)
    assert err["error"]["code"] == "invalid_event", err
    await c.send(turn(1, "hello there"))
    done = (await c.wait_type("response.done"))[0]
    assert done["turn_order"] == 1 and "hello there" in done["text"].lower()
    assert [m["turn_order"] for m in c.messages if m["type"] == "response.created"] == [1]
    await c.close()


# ---- 10. WebSocket strictness ----------------------------------------------------------------

SMALL = 4096
UPDATE = b'{"type":"session.update","session":{"temperature":0.5}}'


async def _closed_with(ws: RawWs, timeout: float = 5.0) -> int | None:
    try:
        _, code = await ws.read_until_close(timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"not closed within {timeout:g} s; got {ws.types()}") from None
    return code


@server_settings(max_frame_bytes=SMALL)
async def test_a_text_frame_of_exactly_the_limit_is_accepted(service: Service):
    """Bug 10: a frame of exactly max_frame_bytes was closed with 1009 (aiohttp refuses
    frames >= its max_msg_size); PROTOCOL.md: a frame of exactly the limit is accepted."""
    ws = await raw(service.server, "/v1/realtime")
    await ws.wait_for("session.created")
    await ws.send_text(UPDATE + b" " * (SMALL - len(UPDATE)))
    reply = await ws.recv_json(timeout=5)
    assert reply is not None and reply["type"] == "session.updated", (reply, ws.close_code)
    await ws.send_close(1000)
    assert await _closed_with(ws) == 1000
    ws.close()
    await wait_clean(service.server)


@server_settings(max_frame_bytes=SMALL)
async def test_a_text_frame_one_byte_over_the_limit_closes_with_1009(service: Service):
    """Bug 10: the frame limit: one byte over max_frame_bytes closes with 1009."""
    ws = await raw(service.server, "/v1/realtime")
    await ws.wait_for("session.created")
    await ws.send_text(UPDATE + b" " * (SMALL + 1 - len(UPDATE)))
    assert await _closed_with(ws) == 1009
    ws.close()
    await wait_clean(service.server)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(service: Service):
    """Bug 10: /v1/realtime read text frames undecoded (decode_text=False), so invalid UTF-8
    got an invalid_json error instead of close 1007."""
    ws = await raw(service.server, "/v1/realtime")
    await ws.wait_for("session.created")
    await ws.send_text(b'{"type":"session.update","session":{"instructions":"\xff\xfe"}}')
    assert await _closed_with(ws) == 1007
    ws.close()
    await wait_clean(service.server)


async def test_an_unmasked_client_frame_closes_with_1002(service: Service):
    """Bug 10: an unmasked client frame (RFC 6455 5.1: the server must close) was accepted."""
    ws = await raw(service.server, "/v1/realtime")
    await ws.wait_for("session.created")
    await ws.send_frame(OP_TEXT, UPDATE, masked=False)
    assert await _closed_with(ws) == 1002
    assert "session.updated" not in ws.types()
    ws.close()
    await wait_clean(service.server)


@server_settings(max_frame_bytes=SMALL)
async def test_v3_frames_at_and_over_the_limit(audio_service: Service, stt: SttEmulator):
    """Bug 10 on /v3/ws: a frame of exactly max_frame_bytes is accepted (it was closed with
    1009), one byte more closes with 1009; either way the session ends."""
    server = audio_service.server
    ok = await raw(server, "/v3/ws?sample_rate=16000")
    await ok.wait_for("Begin")
    exact = b"".join(tone(0.2, True))[:SMALL]  # 128 ms of audio
    await ok.send_binary(exact)
    await ok.send_text(b'{"type": "Terminate"}')
    messages, code = await ok.read_until_close(timeout=10)
    ok.close()
    assert code == 1000 and [m["type"] for m in messages][-1:] == ["Termination"], (code, messages)
    await stt.wait_closed(timeout=5)
    await wait_clean(server)

    over = await raw(server, "/v3/ws?sample_rate=16000")
    await over.wait_for("Begin")
    await over.send_text(b'{"type": "KeepAlive"}' + b" " * (SMALL + 1 - 21))
    assert await _closed_with(over) == 1009
    over.close()
    await stt.wait_closed(timeout=5)
    await wait_clean(server)


async def test_v3_invalid_utf8_closes_with_1007_and_ends_the_session(
    audio_service: Service, stt: SttEmulator
):
    """Bug 10 on /v3/ws: invalid UTF-8 in a text frame closes with 1007, and (bug 1) the
    session and its upstream speech-to-text session end with it."""
    server = audio_service.server
    ws = await raw(server, "/v3/ws?sample_rate=16000")
    await ws.wait_for("Begin")
    await ws.send_text(b'{"type": "KeepAlive", "x": "\xc3\x28"}')
    assert await _closed_with(ws) == 1007
    ws.close()
    await stt.wait_closed(timeout=5)
    await wait_clean(server)


# ---- 11. connection cap -----------------------------------------------------------------------


@server_settings(max_connections=2)
async def test_upgrades_beyond_max_connections_get_503_and_health_still_answers(
    service: Service,
):
    """Bug 11: max_connections was not enforced: every upgrade was accepted until the process
    ran out of file descriptors. Beyond the cap: 503 over_capacity before the upgrade, while
    /healthz and /metrics still answer; a freed slot takes a new connection."""
    server = service.server
    a = await connect(service)
    b = await connect(service)
    refused = await refusal(server, "/v1/realtime")
    assert refused.status == 503
    body = refused.json()
    assert body["error"]["code"] == "over_capacity" and body["error"]["message"]
    for path in ("/healthz", "/metrics"):
        async with service.http.get(server.url + path) as resp:
            assert resp.status == 200, path
    await a.close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is taken back once a's handler has ended
        try:
            c = await connect(service)
            break
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503
            assert time.monotonic() < deadline, "the slot of a closed connection was not freed"
            await asyncio.sleep(0.05)
    await b.close()
    await c.close()
    await wait_clean(server)
