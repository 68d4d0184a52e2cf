"""The aiohttp adapter against the real gateway emulator over loopback sockets.

Every test starts and stops its own emulator on 127.0.0.1 (port 0). Deadlines in this file
only guard against hangs; no assertion is about speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway_client import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ConnectionLost,
    FirstTokenTimeout,
    GatewayClient,
    GatewayError,
    IdleTimeout,
    InvalidRequestError,
    ProtocolError,
    RetryPolicy,
    ServerError,
    StreamError,
    TotalTimeout,
)
from gateway_client.emulator import Fault, GatewayEmulator

KEY = "aai-test-KEY-9f8e7d6c5b4a39281706"
WRONG_KEY = "aai-wrong-KEY-0a1b2c3d4e5f60718293"
GUARD = 15.0  # hang guard for each test body, never a performance bound


def body(text: str = "hello there", model: str = "gpt-4.1", **extra: object) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def fast_retries(max_retries: int = 2) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, base_delay=0.01, max_delay=0.05)


@pytest.fixture
async def emu() -> AsyncIterator[GatewayEmulator]:
    emulator = GatewayEmulator(host="127.0.0.1", port=0, api_keys=(KEY,))
    await emulator.start()
    try:
        yield emulator
        # Every upstream request the client opened was closed: no handler is left running.
        await emulator.wait_idle(timeout=5.0)
        assert emulator.open_requests == 0
    finally:
        await emulator.stop()


def client(emu: GatewayEmulator, **kwargs: Any) -> GatewayClient:
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("retry_policy", fast_retries())
    return GatewayClient(base_url=emu.base_url, **kwargs)


# ---------------------------------------------------------------------- happy paths


async def test_complete(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        result = await gw.complete(body("what is two plus two"))
    assert "what is two plus two" in (result.choices[0].message.content or "")
    assert result.request_id and result.request_id == emu.requests[-1].request_id
    assert result.usage is not None and result.usage.total_tokens
    assert result.choices[0].finish_reason == "stop"


async def test_stream_text_joins(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        expected = (await gw.complete(body("stream me please"))).text
        pieces = []
        async with gw.stream(body("stream me please")) as stream:
            assert stream.status == 200
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                assert stream.text_so_far == "".join(pieces)
        result = stream.result()
    assert "".join(pieces) == expected == result.text
    assert result.finish_reason == "stop"
    assert result.usage is not None and result.usage["total_tokens"] > 0
    assert stream.request_id == emu.requests[-1].request_id
    assert emu.requests[-1].body["stream"] is True
    assert emu.requests[-1].completed


async def test_tool_call_stream_assembly(emu: GatewayEmulator) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    request = body(
        "what is the weather in Paris",
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    async with asyncio.timeout(GUARD), client(emu) as gw:
        deltas = 0
        async with gw.stream(request) as stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.tool_calls:
                    deltas += 1
        result = stream.result()
    (call,) = result.tool_calls
    assert call.name == "get_weather" and call.id and call.type == "function"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert result.finish_reason == "tool_calls"
    assert deltas >= 1


# ---------------------------------------------------------------------- retries


async def test_retry_on_503_then_success(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("status", status=503))
    async with asyncio.timeout(GUARD), client(emu) as gw:
        async with gw.stream(body("retry me")) as stream:
            text = "".join([c.text async for c in stream])
    assert "retry me" in text
    assert [r.status for r in emu.requests] == [503, 200]
    assert stream.attempts == 2


async def test_retry_after_is_honoured(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("status", status=503, retry_after=1))
    # rand() == 0 makes our own backoff zero: any gap comes from honouring Retry-After.
    async with asyncio.timeout(GUARD), client(emu, rand=lambda: 0.0) as gw:
        result = await gw.complete(body("after a pause"))
    assert "after a pause" in result.text
    first, second = emu.requests
    assert (first.status, second.status) == (503, 200)
    assert second.arrived_at - first.arrived_at >= 1.0


async def test_rate_limit_reset_is_honoured(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("rate_limit", rate_reset=1))
    async with asyncio.timeout(GUARD), client(emu, rand=lambda: 0.0) as gw:
        await gw.complete(body("rate limited"))
    first, second = emu.requests
    assert first.status == 429
    assert second.arrived_at - first.arrived_at >= 0.9  # Reset may be rounded to whole s


async def test_error_event_before_first_chunk_is_retried(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("error_chunk", after_chunks=0))
    async with asyncio.timeout(GUARD), client(emu) as gw:
        async with gw.stream(body("second time lucky")) as stream:
            text = "".join([c.text async for c in stream])
    assert "second time lucky" in text and len(emu.requests) == 2


async def test_fallback_models_used_when_primary_fails(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu, fallback_models=("gpt-4.1",)) as gw:
        async with gw.stream(body("fall back", model="no-such-model-xyz")) as stream:
            text = "".join([c.text async for c in stream])
        result = await gw.complete(body("fall back again", model="no-such-model-xyz"))
    assert "fall back" in text and stream.model == "gpt-4.1"
    assert "fall back again" in result.text
    # The unknown model's 400 is not retried, but it does hand over to the fallback.
    assert [(r.model, r.status) for r in emu.requests] == [
        ("no-such-model-xyz", 400),
        ("gpt-4.1", 200),
        ("no-such-model-xyz", 400),
        ("gpt-4.1", 200),
    ]


def model_down(emu: GatewayEmulator, model: str, kind: str = "status", **fault: Any) -> None:
    """Make every request for ``model`` fail (the emulator's own retry does not wait)."""
    emu.server_retry_delay = 0.0
    emu.faults.append(Fault(kind, model=model, times=10_000, **fault))  # type: ignore[arg-type]


async def test_per_call_fallback_serves_when_the_primary_answers_503(
    emu: GatewayEmulator,
) -> None:
    model_down(emu, "gpt-4.1", status=503)
    # The call's fallback_models replace the client's (never tried here).
    gw_client = client(emu, retry_policy=fast_retries(1), fallback_models=("gpt-5.2",))
    async with asyncio.timeout(GUARD), gw_client as gw:
        # The gateway's own fallback (to the same dead model) goes with the primary only.
        request = body("fall back please", fallbacks=[{"model": "gpt-4.1"}])
        s = gw.stream(request, fallback_models=("gpt-5",))
        async with s as stream:
            text = "".join([c.text async for c in stream])
        completion = await gw.complete(body("complete too"), fallback_models=("gpt-5",))
    assert "fall back please" in text and "complete too" in completion.text
    assert s.model == "gpt-5" and completion.model == "gpt-5" and s.attempts == 3
    assert [(m, type(e), e.status) for m, e in s.failed_attempts] == [
        ("gpt-4.1", ServerError, 503),
        ("gpt-4.1", ServerError, 503),
    ]
    assert [(r.model, r.status) for r in emu.requests] == [
        ("gpt-4.1", 503),
        ("gpt-4.1", 503),
        ("gpt-5", 200),
    ] * 2
    first, _, fallback = emu.requests[:3]
    assert first.body["fallbacks"] == [{"model": "gpt-4.1"}] and "fallbacks" not in fallback.body
    assert fallback.body["messages"] == first.body["messages"]


@pytest.mark.parametrize(
    ("kind", "error"), [("error_chunk", StreamError), ("drop", ConnectionLost)]
)
async def test_per_call_fallback_when_the_stream_fails_before_its_first_chunk(
    emu: GatewayEmulator, kind: str, error: type[GatewayError]
) -> None:
    model_down(emu, "gpt-4.1", kind, after_chunks=0)
    async with asyncio.timeout(GUARD), client(emu, retry_policy=fast_retries(1)) as gw:
        s = gw.stream(body("second model"), fallback_models=("gpt-5",))
        async with s as stream:
            text = "".join([c.text async for c in stream])
    assert "second model" in text and s.model == "gpt-5"
    assert [m for m, _ in s.failed_attempts] == ["gpt-4.1", "gpt-4.1"]
    assert all(isinstance(e, error) for _, e in s.failed_attempts)


@pytest.mark.parametrize(
    ("kind", "error"), [("error_chunk", StreamError), ("drop", ConnectionLost)]
)
async def test_no_fallback_once_a_chunk_was_handed_out(
    emu: GatewayEmulator, kind: str, error: type[GatewayError]
) -> None:
    emu.faults.append(Fault(kind, after_chunks=3))  # type: ignore[arg-type]
    got = 0
    async with asyncio.timeout(GUARD), client(emu) as gw:
        s = gw.stream(body("one two three four five"), fallback_models=("gpt-5",))
        with pytest.raises(error) as info:
            async with s as stream:
                async for _ in stream:
                    got += 1
    assert got == 3 and [r.model for r in emu.requests] == ["gpt-4.1"]
    assert s.model == "gpt-4.1"
    assert s.failed_attempts == [("gpt-4.1", info.value)] and info.value.attempts == 1


async def test_every_model_failing_raises_the_last_error(emu: GatewayEmulator) -> None:
    model_down(emu, "gpt-4.1", status=503)
    model_down(emu, "gpt-5", status=500)
    async with asyncio.timeout(GUARD), client(emu, retry_policy=fast_retries(1)) as gw:
        s = gw.stream(body(), fallback_models=("gpt-5", "no-such-model-xyz"))
        with pytest.raises(BadRequestError) as info:
            async with s:
                pass
        with pytest.raises(BadRequestError):
            await gw.complete(body(), fallback_models=["gpt-5", "gpt-4.1", "no-such-model-xyz"])
        with pytest.raises(TypeError):
            gw.stream(body(), fallback_models="gpt-5")
    assert "no-such-model-xyz" in str(info.value) and info.value.attempts == 5
    assert s.model is None and s.failed_attempts[-1] == ("no-such-model-xyz", info.value)
    assert [(m, e.status) for m, e in s.failed_attempts] == [
        ("gpt-4.1", 503),
        ("gpt-4.1", 503),
        ("gpt-5", 500),
        ("gpt-5", 500),
        ("no-such-model-xyz", 400),
    ]
    # Each model once, in order: the duplicate of the primary is not tried again.
    assert [r.model for r in emu.requests[5:]] == [r.model for r in emu.requests[:5]]


async def test_a_clean_stream_has_no_failed_attempts(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        s = gw.stream(body("fine"), fallback_models=("gpt-5",))
        async with s as stream:
            async for _ in stream:
                pass
    assert s.failed_attempts == [] and s.model == "gpt-4.1" and s.attempts == 1


async def test_gateway_fallback_fields_pass_through(emu: GatewayEmulator) -> None:
    request = body(
        "server side fallback",
        model="no-such-model-xyz",
        fallbacks=[{"model": "gpt-4.1"}],
        fallback_config={"depth": 1},
    )
    async with asyncio.timeout(GUARD), client(emu) as gw:
        result = await gw.complete(request)
    assert "server side fallback" in result.text
    sent = emu.requests[0].body
    assert sent["fallbacks"] == [{"model": "gpt-4.1"}] and sent["fallback_config"] == {"depth": 1}


async def test_unknown_model_without_fallback_is_bad_request(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        with pytest.raises(BadRequestError) as info:
            await gw.complete(body(model="no-such-model-xyz"))
    assert info.value.status == 400 and "no-such-model-xyz" in str(info.value)
    assert info.value.attempts == 1 and len(emu.requests) == 1


async def test_invalid_request_fails_before_any_network_call(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        with pytest.raises(InvalidRequestError, match="temperature"):
            await gw.complete(body(temperature=9))
        with pytest.raises(InvalidRequestError, match="messages"):
            gw.stream({"model": "gpt-4.1"})
    assert emu.requests == []


# ---------------------------------------------------------------------- timeouts


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full and never drained: connects hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(16):
        filler = socket.socket()
        filler.settimeout(0.2)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except OSError:
            break  # this one hung: the queue is full
    try:
        yield port
    finally:
        for s in [*fillers, server]:
            s.close()


async def test_connect_timeout_after_retries(full_backlog: int) -> None:
    gw = GatewayClient(
        base_url=f"http://127.0.0.1:{full_backlog}/v1",
        api_key=KEY,
        connect_timeout=0.2,
        retry_policy=fast_retries(max_retries=1),
    )
    async with asyncio.timeout(GUARD), gw:
        with pytest.raises(ConnectError) as info:
            await gw.complete(body())
    assert info.value.attempts == 2
    assert "timed out" in str(info.value)


async def test_connection_refused_is_connect_error_after_retries() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens here now
    gw = GatewayClient(base_url=f"http://127.0.0.1:{port}/v1", retry_policy=fast_retries(2))
    async with asyncio.timeout(GUARD), gw:
        with pytest.raises(ConnectError) as info:
            async with gw.stream(body()):
                pass
    assert info.value.attempts == 3


async def test_first_token_timeout(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("slow_first_token", delay=3.0))
    async with asyncio.timeout(GUARD), client(emu, first_token_timeout=0.3) as gw:
        with pytest.raises(FirstTokenTimeout):
            async with gw.stream(body()):
                pass
    assert len(emu.requests) == 1  # a slow model is not retried


async def test_first_token_timeout_waiting_for_headers(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("hang_before_headers"))
    async with asyncio.timeout(GUARD), client(emu, first_token_timeout=0.3) as gw:
        with pytest.raises(FirstTokenTimeout):
            await gw.complete(body())


async def test_idle_timeout(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("gap", after_chunks=2, delay=3.0))
    got = 0
    async with asyncio.timeout(GUARD), client(emu, idle_timeout=0.3) as gw:
        with pytest.raises(IdleTimeout):
            async with gw.stream(body("one two three four")) as stream:
                async for _ in stream:
                    got += 1
    assert got == 2


async def test_total_timeout(emu: GatewayEmulator) -> None:
    slow = {"X-Emulator-Token-Delay": "0.05", "X-Emulator-Reply-Words": "200"}
    got = 0
    async with asyncio.timeout(GUARD), client(emu, total_timeout=0.6, headers=slow) as gw:
        with pytest.raises(TotalTimeout):
            async with gw.stream(body()) as stream:
                async for _ in stream:
                    got += 1
    assert 0 < got < 200


# ---------------------------------------------------------------------- cancellation


async def test_cancelling_the_task_closes_the_connection(emu: GatewayEmulator) -> None:
    slow = {"X-Emulator-Token-Delay": "0.05", "X-Emulator-Reply-Words": "500"}
    first_chunk = asyncio.Event()

    async def consume(gw: GatewayClient) -> None:
        async with gw.stream(body()) as stream:
            async for _ in stream:
                first_chunk.set()

    async with asyncio.timeout(GUARD), client(emu, headers=slow) as gw:
        task = asyncio.create_task(consume(gw))
        await first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gone = await emu.wait_disconnect(timeout=2.0)
    assert gone.disconnected and not gone.completed
    assert gone.chunks_sent < 500


async def test_leaving_async_with_early_closes_the_connection(emu: GatewayEmulator) -> None:
    slow = {"X-Emulator-Token-Delay": "0.05", "X-Emulator-Reply-Words": "500"}
    async with asyncio.timeout(GUARD), client(emu, headers=slow) as gw:
        async with gw.stream(body()) as stream:
            async for _ in stream:
                break
        gone = await emu.wait_disconnect(timeout=2.0)
    assert gone.disconnected and not gone.completed
    assert gone.request_id == stream.request_id


# ---------------------------------------------------------------------- mid-stream failures


async def test_no_retry_after_the_first_chunk(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("drop", after_chunks=3))
    got = 0
    async with asyncio.timeout(GUARD), client(emu) as gw:
        with pytest.raises(ConnectionLost):
            async with gw.stream(body("one two three four five six")) as stream:
                async for _ in stream:
                    got += 1
    assert got == 3
    assert len(emu.requests) == 1


async def test_error_chunk_mid_stream(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("error_chunk", after_chunks=2, message="provider exploded"))
    got = 0
    async with asyncio.timeout(GUARD), client(emu) as gw:
        with pytest.raises(StreamError, match="provider exploded") as info:
            async with gw.stream(body("one two three four five")) as stream:
                async for _ in stream:
                    got += 1
    assert got == 2 and len(emu.requests) == 1
    assert info.value.status == 500


async def test_malformed_chunk_mid_stream(emu: GatewayEmulator) -> None:
    emu.faults.append(Fault("malformed", after_chunks=2))
    async with asyncio.timeout(GUARD), client(emu) as gw:
        with pytest.raises(ProtocolError, match="malformed JSON"):
            async with gw.stream(body("one two three four five")) as stream:
                async for _ in stream:
                    pass


# ---------------------------------------------------------------------- secrets


async def test_api_key_never_in_logs_or_errors(
    emu: GatewayEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emu.faults.append(Fault("status", status=503))
    errors: list[GatewayError] = []
    async with asyncio.timeout(GUARD):
        async with client(emu) as gw:
            await gw.complete(body("fine"))
            async with gw.stream(body("fine too")) as stream:
                async for _ in stream:
                    pass
            with pytest.raises(BadRequestError) as bad:
                await gw.complete(body(model="no-such-model-xyz"))
            errors.append(bad.value)
        async with client(emu, api_key=WRONG_KEY) as wrong:
            with pytest.raises(AuthenticationError) as auth:
                await wrong.complete(body())
            errors.append(auth.value)
            with pytest.raises(AuthenticationError):
                async with wrong.stream(body()):
                    pass
        async with client(emu, api_key=WRONG_KEY, auth_scheme="bearer") as bearer:
            with pytest.raises(AuthenticationError):
                await bearer.complete(body())
        async with client(emu, auth_scheme="bearer") as bearer_ok:
            assert (await bearer_ok.complete(body("bearer works"))).text
    assert auth.value.status == 401
    assert "gateway request" in caplog.text  # the INFO line exists...
    for secret in (KEY, WRONG_KEY):
        assert secret not in caplog.text  # ...and never carries a key
        for err in errors:
            assert secret not in str(err) and secret not in repr(err.args)
        assert secret not in repr(gw)


# ---------------------------------------------------------------------- response shapes


async def test_plain_json_answer_to_a_stream_request() -> None:
    emulator = GatewayEmulator(host="127.0.0.1", port=0, stream_only_openai=True)
    await emulator.start()
    try:
        async with asyncio.timeout(GUARD), GatewayClient(base_url=emulator.base_url) as gw:
            expected = await gw.complete(body("json instead", model="claude-sonnet-4-6"))
            async with gw.stream(body("json instead", model="claude-sonnet-4-6")) as stream:
                chunks = [c async for c in stream]
            result = stream.result()
    finally:
        await emulator.stop()
    assert len(chunks) == 1
    assert chunks[0].choices[0].delta.content == expected.text == result.text
    assert result.finish_reason == expected.finish_reason
    assert stream.request_id


async def test_async_run_round_trip(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        run_id = await gw.submit_run(body("run me later"))
        result = await gw.wait_run(run_id, poll_interval=0.05)
        direct = await gw.complete({**body("run me now"), "async": True})
    assert run_id and "run me later" in result.text
    assert "run me now" in direct.text


async def test_region_and_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_GATEWAY_URL", raising=False)
    assert GatewayClient().base_url == "https://llm-gateway.assemblyai.com/v1"
    assert GatewayClient(region="eu").base_url == "https://llm-gateway.eu.assemblyai.com/v1"
    with pytest.raises(ValueError, match="region"):
        GatewayClient(region="mars")
    monkeypatch.setenv("LLM_GATEWAY_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", KEY)
    gw = GatewayClient()
    assert gw.base_url == "http://127.0.0.1:9/v1"
    assert KEY not in repr(gw)


# ---------------------------------------------------------------------- local json-repair
# The emulator repairs server-side like the real gateway, so these use a tiny scripted
# server that returns broken JSON and ignores post_processing_steps.

BROKEN = '{"answer": 42, "items": [1, 2'
BROKEN_ARGS = "{'city': 'Paris'"


async def _broken_json_handler(request: web.Request) -> web.StreamResponse:
    data = await request.json()
    if not data.get("stream"):
        return web.json_response(
            {
                "request_id": "fake-1",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": BROKEN,
                            "tool_calls": [
                                {"id": "c1", "function": {"name": "f", "arguments": BROKEN_ARGS}}
                            ],
                        },
                        "finish_reason": "stop",
                    }
                ],
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for piece in (BROKEN[:10], BROKEN[10:]):
        chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": piece}}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def broken_json_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _broken_json_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_json_repair_locally(broken_json_server: str) -> None:
    repair: dict[str, Any] = {"post_processing_steps": [{"type": "json-repair"}]}
    async with asyncio.timeout(GUARD), GatewayClient(base_url=broken_json_server) as gw:
        plain = await gw.complete(body())
        fixed = await gw.complete({**body(), **repair})
        async with gw.stream({**body(), **repair}) as stream:
            async for _ in stream:
                pass
        assert stream.text_so_far == BROKEN  # chunks are passed on as received
    assert plain.text == BROKEN  # no repair unless asked
    assert json.loads(fixed.text) == {"answer": 42, "items": [1, 2]}
    assert json.loads(fixed.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert json.loads(stream.result().text) == {"answer": 42, "items": [1, 2]}


async def test_trusted_stream_sends_the_body_as_given(emu: GatewayEmulator) -> None:
    async with asyncio.timeout(GUARD), client(emu) as gw:
        wire = {**body("as given"), "x_extension": {"keep": True}}
        async with gw.stream(wire, trusted=True) as stream:
            text = "".join([c.text async for c in stream])
        assert "as given" in text and stream.result().text == text
        assert emu.requests[-1].body["x_extension"] == {"keep": True}
        assert emu.requests[-1].body["stream"] is True
