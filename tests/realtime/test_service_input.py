"""End to end over loopback: bad input, auth, config updates, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.service import Service, turn, with_settings

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.logs import JsonFormatter
from realtime.server import Server, ServerSettings


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"no_type": 1}', "unknown_type"),
        ('{"type": "Dance"}', "unknown_type"),
        ("[1, 2]", "invalid_event"),
        (
            '{"type": "Turn", "turn_order": "three", "transcript": "x", "end_of_turn": true}',
            "invalid_event",
        ),
        ('{"type": "Turn", "turn_order": 1}', "invalid_event"),
        (
            '{"type": "Turn", "turn_order": 1, "transcript": "x", "end_of_turn": "yes"}',
            "invalid_event",
        ),
        ('{"type": "session.update", "session": "fast"}', "invalid_event"),
        ('{"type": "session.update", "session": {"trigger": "sometimes"}}', "invalid_config"),
        ('{"type": "session.update", "session": {"max_tokens": -5}}', "invalid_config"),
        ('{"type": "response.truncate", "response_id": "r_nope", "text": "x"}', "invalid_event"),
    ],
)
async def test_bad_input_gets_an_error_and_the_session_goes_on(
    service: Service, frame: str, code: str
):
    c = await service.connect()
    await c.ws.send_str(frame)
    err = (await c.wait_type("error"))[0]
    assert err["error"]["code"] == code
    assert err["error"]["message"]
    await c.send(turn(0, "still here"))
    done = (await c.wait_type("response.done"))[0]
    assert "still here" in done["text"]
    await c.close()


async def test_invalid_config_leaves_the_config_as_it_was(service: Service):
    c = await service.connect()
    await c.send({"type": "session.update", "session": {"temperature": 0.5}})
    updated = (await c.wait_type("session.updated"))[0]
    assert updated["session"]["temperature"] == 0.5
    await c.send({"type": "session.update", "session": {"temperature": 9, "max_tokens": 5}})
    await c.wait_type("error")
    await c.send(turn(0, "hi"))
    await c.wait_type("response.done")
    body = service.emulator.requests[-1].body
    assert body["temperature"] == 0.5 and body["max_tokens"] != 5
    await c.close()


async def test_unknown_fields_are_ignored(service: Service):
    c = await service.connect()
    await c.send({**turn(0, "hello"), "speaker_label": "A", "something_new": [1]})
    await c.wait_type("response.done")
    assert not [m for m in c.messages if m["type"] == "error"]
    await c.close()


async def test_forwarded_assemblyai_messages_are_accepted(service: Service):
    c = await service.connect()
    await c.send({"type": "Begin", "id": "x", "expires_at": 1})
    await c.send({"type": "Heartbeat", "total_audio_received_ms": 1})
    await c.send(turn(0, "hello"))
    await c.wait_type("response.done")
    assert not [m for m in c.messages if m["type"] == "error"]
    await c.close()


async def test_binary_frames_without_upstream_stt_get_audio_unsupported(service: Service):
    c = await service.connect()
    await c.ws.send_bytes(b"\x00\x01" * 800)
    err = (await c.wait_type("error"))[0]
    assert err["error"]["code"] == "audio_unsupported"
    await c.close()


async def test_oversize_frame_closes_with_1009(settings: ServerSettings, emulator: GatewayEmulator):
    small = with_settings(settings, max_frame_bytes=4096)
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        Server(small, gw) as server,
        aiohttp.ClientSession() as http,
    ):
        svc = Service(server, emulator, http)
        c = await svc.connect()
        other = await svc.connect()
        await c.ws.send_str('{"type": "Turn", "transcript": "' + "x" * 10_000 + '"}')
        assert await c.wait_closed() == 1009
        # Another session is not disturbed.
        await other.send(turn(0, "fine"))
        await other.wait_type("response.done")
        await other.close()


@pytest.fixture
async def authed(settings: ServerSettings, emulator: GatewayEmulator) -> AsyncIterator[Service]:
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        Server(with_settings(settings, auth_tokens=("sekrit-token-1",)), gw) as server,
        aiohttp.ClientSession() as http,
    ):
        yield Service(server, emulator, http)


async def test_auth_refuses_the_upgrade_without_a_valid_token(authed: Service):
    for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "token=wrong")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await authed.http.ws_connect(
                authed.ws_url + (f"?{query}" if query else ""), headers=headers
            )
        assert info.value.status == 401
    async with authed.http.get(authed.ws_url) as resp:
        assert resp.status == 401
        assert "sekrit" not in await resp.text()


async def test_auth_accepts_bearer_header_and_query_token(authed: Service):
    a = await authed.connect(headers={"Authorization": "Bearer sekrit-token-1"})
    b = await authed.connect(query="token=sekrit-token-1")
    for c in (a, b):
        assert c.messages[0]["type"] == "session.created"
        assert "sekrit" not in str(c.messages)
        await c.close()


async def test_auth_off_accepts_anyone(service: Service):
    c = await service.connect()
    assert c.messages[0]["role"] == "participant"
    assert c.messages[0]["session_id"].startswith("s_")
    await c.close()


async def test_session_created_carries_the_effective_config(service: Service):
    c = await service.connect()
    config = c.messages[0]["session"]
    for key in (
        "preset",
        "model",
        "instructions",
        "prompt",
        "trigger",
        "on_new_turn",
        "max_context_tokens",
        "max_context_turns",
        "temperature",
        "max_tokens",
        "fallbacks",
        "response_format",
        "tools",
    ):
        assert key in config
    assert config["preset"] == "assistant" and config["trigger"] == "end_of_turn"
    await c.send({"type": "session.update", "session": {"preset": "summary"}})
    updated = (await c.wait_type("session.updated"))[0]["session"]
    assert updated["on_new_turn"] == "supersede" and "{{history}}" in updated["prompt"]
    await c.close()


async def test_healthz_and_metrics(service: Service):
    base = f"http://127.0.0.1:{service.server.port}"
    async with service.http.get(base + "/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    c = await service.connect()
    await c.send(turn(0, "hello"))
    await c.wait_type("response.done")
    async with service.http.get(base + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert 'realtime_responses_total{outcome="done",reason=""} 1' in text
    assert "realtime_time_to_first_token_ms_count 1" in text
    assert "realtime_sessions_active 1" in text
    await c.close()


async def test_keys_and_tokens_never_reach_logs_or_clients(
    settings: ServerSettings, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("DEBUG")
    key, wrong_key, token = "aai-key-0123456789abcdef", "aai-key-wrong-000111", "client-tok-424242"
    async with (
        GatewayEmulator(host="127.0.0.1", port=0, api_keys=(key,)) as emu,
        GatewayClient(base_url=emu.base_url, api_key=wrong_key, max_retries=0) as bad_gw,
        Server(with_settings(settings, auth_tokens=(token,)), bad_gw) as server,
        aiohttp.ClientSession() as http,
    ):
        svc = Service(server, emu, http)
        c = await svc.connect(query=f"token={token}")
        await c.send(turn(0, "hello"))
        failed = (await c.wait_type("response.failed"))[0]
        assert failed["error"]["status"] == 401
        await c.close()
    # Rendered as the service renders them (JSON lines with every extra field), unredacted.
    lines = [JsonFormatter().format(r) for r in caplog.records]
    seen = str(c.messages) + "\n".join(lines)
    failure = [line for line in lines if '"msg":"response failed"' in line]
    assert failure and c.messages[0]["session_id"] in failure[0]  # logged, with its ids
    assert '"response_id":"r_' in failure[0] and '"status":401' in failure[0]
    for secret in (key, wrong_key, token):
        assert secret not in seen
