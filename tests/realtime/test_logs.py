"""The log lines an on-call engineer reads: a session's story, with its ids as fields."""

from __future__ import annotations

import logging

import pytest
from support.audio import tone
from support.service import Service, turn

from gateway_client.emulator import Fault


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_session_tells_its_story(service: Service, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="realtime")
    c = await service.connect()
    sid = c.messages[0]["session_id"]
    await c.send(turn(0, "hello"))
    await c.wait_type("response.done")
    for _ in range(8):
        await c.send({"type": "nope"})
    await c.wait_type("error", 8)
    await c.send({"type": "Termination"})
    assert await c.wait_closed() == 1000
    await service.server.stop()
    opened = records(caplog, "session opened")
    closed = records(caplog, "session closed")
    assert [r.session_id for r in opened] == [sid] == [r.session_id for r in closed]
    story = closed[0]
    assert story.turns == 1 and story.replies == {"done": 1, "cancelled": 0, "failed": 0}
    assert story.close_reason == "termination" and story.duration_s >= 0
    conn_opened = records(caplog, "connection opened")
    conn_closed = records(caplog, "connection closed")
    assert [(r.role, r.endpoint) for r in conn_opened] == [("participant", "/v1/realtime")]
    assert conn_closed[0].close_code == 1000 and conn_closed[0].session_id == sid
    # Client errors are logged, but a client in a loop does not flood the log.
    errors = records(caplog, "client error")
    assert 1 <= len(errors) <= 5 and errors[0].code == "unknown_type"


async def test_gateway_failures_are_logged_with_status_and_reason(
    service: Service, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="realtime")
    service.emulator.faults.append(Fault("status", status=400, message="upstream overloaded"))
    c = await service.connect()
    await c.send(turn(0, "hello"))
    failed = (await c.wait_type("response.failed"))[0]
    assert failed["error"]["status"] == 400
    line = records(caplog, "gateway request failed")[0]
    assert line.status == 400 and line.error_type and "overloaded" in line.reason
    await c.close()


async def test_speech_to_text_lines_carry_the_session_id(
    audio_service: Service, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="realtime")
    c = await audio_service.connect()
    sid = c.messages[0]["session_id"]
    for frame in tone(0.5, True):
        await c.ws.send_bytes(frame)
    await c.wait_type("Begin")
    connected = [r for r in caplog.records if r.getMessage().startswith("stt connected to")]
    assert connected and all(r.session_id == sid for r in connected)
    await c.close()
