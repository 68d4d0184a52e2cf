"""End to end over loopback: viewers, termination, shutdown, the CLI and the demo."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest
from support.service import Service, assert_guarantees, turn, with_settings

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.server import Server, ServerSettings


async def test_viewer_gets_history_snapshot_and_the_same_stream(service: Service):
    p = await service.connect()
    sid = p.messages[0]["session_id"]
    await p.send(turn(0, "first turn"))
    await p.wait_type("response.done")
    v = await service.connect(query=f"role=viewer&session_id={sid}")
    created = v.messages[0]
    assert created["role"] == "viewer" and created["session_id"] == sid
    assert [h["role"] for h in created["history"]] == ["user", "assistant"]
    assert created["history"][0] == {"turn_order": 0, "role": "user", "text": "first turn"}
    await p.send(turn(1, "second turn"))
    await p.wait_type("response.done", 2)
    await v.wait_type("response.done")

    def stream(c):
        return [
            m for m in c.messages if m.get("turn_order") == 1 and m["type"].startswith("response.")
        ]

    assert stream(v) == stream(p)
    await v.send({"type": "Turn"})
    err = (await v.wait_type("error"))[0]
    assert err["error"]["code"] == "read_only"
    await v.close()
    await p.close()


async def test_viewer_of_an_unknown_session_is_refused(service: Service):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await service.http.ws_connect(service.ws_url + "?role=viewer&session_id=s_nope")
    assert info.value.status == 404


async def test_slow_viewer_is_dropped_without_slowing_the_participant(
    settings: ServerSettings, emulator: GatewayEmulator
):
    emulator.token_delay = 0.0
    small = with_settings(settings, viewer_queue=32)
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        Server(small, gw) as server,
        aiohttp.ClientSession() as http,
    ):
        svc = Service(server, emulator, http)
        p = await svc.connect()
        sid = p.messages[0]["session_id"]
        # A viewer that never reads: a raw socket with a tiny receive buffer.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(raw, ("127.0.0.1", server.port))
        await loop.sock_sendall(
            raw,
            (
                f"GET /v1/realtime?role=viewer&session_id={sid} HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        await asyncio.sleep(0.2)
        emulator.reply_words = 4000
        await p.send({"type": "session.update", "session": {"preset": "per_turn"}})
        for i in range(2):
            await p.send(turn(i, f"long reply {i}"))
        done = await p.wait_type("response.done", 2, timeout=60)
        # The participant got every reply complete, and the viewer was dropped.
        assert all(len(d["text"].split()) >= 4000 for d in done)
        assert_guarantees(p.messages)
        dropped = svc.server.metrics.viewers_dropped_total.value()
        raw.close()
        await p.close()
        assert dropped >= 1


async def test_termination_lets_responses_finish_then_closes_with_1000(service: Service):
    service.emulator.token_delay = 0.02
    c = await service.connect()
    await c.send(turn(0, "one last thing " * 5))
    await c.send(
        {"type": "Termination", "audio_duration_seconds": 3, "session_duration_seconds": 3}
    )
    assert await c.wait_closed() == 1000
    done = [m for m in c.messages if m["type"] == "response.done"]
    assert len(done) == 1 and "one last thing" in done[0]["text"]


async def test_shutdown_cancels_with_reason_shutdown_and_closes_1001(
    settings: ServerSettings, emulator: GatewayEmulator
):
    emulator.token_delay = 0.05
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        aiohttp.ClientSession() as http,
    ):
        server = Server(settings, gw)
        await server.start()
        svc = Service(server, emulator, http)
        c = await svc.connect()
        await c.send(turn(0, "a long reply " * 20))
        await c.wait_type("response.delta")
        await server.stop()
        assert await c.wait_closed() == 1001
        cancelled = [m for m in c.messages if m["type"] == "response.cancelled"]
        assert cancelled and cancelled[0]["reason"] == "shutdown"
        assert_guarantees(c.messages)


async def test_serve_starts_the_emulator_and_stops_cleanly_on_sigterm():
    env = {
        k: v for k, v in os.environ.items() if k not in ("ASSEMBLYAI_API_KEY", "LLM_GATEWAY_URL")
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime",
        "serve",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"emulator" in first
        while b"listening on ws://127.0.0.1:" not in (
            line := await asyncio.wait_for(proc.stderr.readline(), 30)
        ):
            assert line, "the server exited before listening"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_demo_runs_green():
    result = subprocess.run(
        [sys.executable, "-m", "realtime", "demo", "--speed", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 interrupted" in result.stdout
    assert "time to first token" in result.stdout
