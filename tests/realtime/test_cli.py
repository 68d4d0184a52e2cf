"""`python -m realtime serve`: one parser for flags and environment, auth that cannot be
switched off by accident, validated URLs, regions, and a first log line that says what runs.

Start-up errors run the real command in a subprocess: exit status 2, one line on stderr that
names the flag (and the variable, when the value came from one), no traceback. What only
needs the parser is checked in-process. The few runs that start the service wait for its
"listening" line, then stop it with SIGTERM (exit status 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from gateway_client import GatewayClient, ServerError
from gateway_client.emulator import Fault, GatewayEmulator
from realtime import cli

SERVE = (sys.executable, "-m", "realtime", "serve")
VARIABLES = cli.serve_variables()  # flag -> environment variable
PROG = "python -m realtime serve: error: "
GUARD_S = 60.0  # hang guard for a subprocess, never a performance bound


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any `serve` variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}
    return env | variables


def start(*flags: str, **variables: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SERVE, *flags], env=clean_env(**variables), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(*flags: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return finish(start(*flags, **variables))


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start printed, after checking how it was refused."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PROG), lines[0]
    return lines[0].removeprefix(PROG)


def parse(*flags: str) -> Any:
    return cli.build_parser().parse_args(["serve", *flags])


@pytest.fixture(autouse=True)
def _no_serve_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process parses see only the variables a test sets."""
    for name in VARIABLES.values():
        monkeypatch.delenv(name, raising=False)


# --- one parser for flags and environment ------------------------------------------------------

BAD_VALUES = [
    ("--host", "", "host name or address"),
    ("--port", "abc", "a whole number from 0 to 65535"),
    ("--port", "70000", "a whole number from 0 to 65535"),
    ("--gateway-url", "notaurl", "http:// or https://"),
    ("--gateway-url", "ftp://gateway.example.com/v1", "http:// or https://"),
    (
        "--gateway-url",
        "https://api.example.com/v1/chat/completions",
        "the part before /chat/completions: https://api.example.com/v1,",
    ),
    ("--gateway-url", "https://api.example.com:99999/v1", "port"),
    ("--stt-url", "https://streaming.assemblyai.com/v3/ws", "ws:// or wss://"),
    ("--stt-url", "wss:///v3/ws", "ws:// or wss://"),
    ("--api-key", "", "must not be empty"),
    ("--region", "mars", "one of us, eu"),
    ("--auth-scheme", "basic", "one of raw, bearer"),
    ("--model", " ", "must not be empty"),
    ("--max-frame-bytes", "0", "1 or more"),
    ("--max-concurrent", "many", "1 or more"),
    ("--rate-limit", "-1", "0 (no limit) or more"),
    ("--connect-timeout", "0", "more than 0"),
    ("--first-token-timeout", "inf", "more than 0"),
    ("--idle-timeout", "abc", "more than 0"),
    ("--total-timeout", "-5", "more than 0"),
    ("--write-timeout", "nan", "more than 0"),
    ("--max-connections", "-1", "0 (derived) or more"),
    ("--loop", "bogus", "one of auto, asyncio, uvloop"),
    ("--log-level", "loud", "one of debug, info, warning, error"),
]


@pytest.mark.parametrize(("flag", "value", "says"), BAD_VALUES)
def test_a_bad_value_is_refused_alike_from_the_flag_and_the_variable(
    flag: str, value: str, says: str
) -> None:
    """The same parse, the same reason; the variable's line also names the variable."""
    variable = VARIABLES[flag]
    from_flag, from_variable = start(flag, value), start(**{variable: value})  # side by side
    by_flag, by_variable = refused(finish(from_flag)), refused(finish(from_variable))
    assert by_flag.startswith(f"argument {flag}: ")
    reason = by_flag.removeprefix(f"argument {flag}: ")
    assert says in reason
    assert by_variable == f"argument {flag} (from {variable}): {reason}"


@pytest.mark.parametrize(
    "flag", ["--allow-unauthenticated", "--public-metrics", "--v3-default-llm"]
)
def test_a_yes_no_variable_takes_only_yes_or_no(flag: str) -> None:
    line = refused(run(**{VARIABLES[flag]: "maybe"}))
    assert line.startswith(f"argument {flag} (from {VARIABLES[flag]}): ")
    assert "'maybe'" in line


def test_help_works_whatever_the_environment_holds() -> None:
    broken = {variable: "\x7fbroken," for variable in VARIABLES.values()}
    result = subprocess.run(
        [*SERVE, "--help"], env=clean_env(**broken), capture_output=True, text=True,
        timeout=GUARD_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "--port" in result.stdout


def test_help_names_every_flag_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, variable in VARIABLES.items():
        assert flag in text and variable in text


def test_a_variable_is_the_flags_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in {
        "REALTIME_HOST": "localhost",
        "REALTIME_PORT": "9000",
        "LLM_GATEWAY_URL": "https://api.example.com/v1/",
        "REALTIME_STT_URL": "wss://stt.example.com/v3/ws",
        "LLM_GATEWAY_REGION": "EU",
        "LLM_GATEWAY_AUTH_SCHEME": "Bearer",
        "REALTIME_MODEL": "claude-sonnet-4-6",
        "REALTIME_RATE_LIMIT": "30",
        "REALTIME_IDLE_TIMEOUT": "2.5",
        "REALTIME_MAX_CONNECTIONS": "100",
        "REALTIME_LOOP": "AsyncIO",
        "REALTIME_LOG_LEVEL": "DEBUG",
        "REALTIME_V3_DEFAULT_LLM": "yes",
    }.items():
        monkeypatch.setenv(variable, value)
    args = parse()
    assert (args.host, args.port, args.gateway_url) == (
        "localhost",
        9000,
        "https://api.example.com/v1",
    )
    assert (args.stt_url, args.region, args.auth_scheme) == (
        "wss://stt.example.com/v3/ws",
        "eu",
        "bearer",
    )
    assert (args.model, args.rate_limit, args.idle_timeout) == ("claude-sonnet-4-6", 30, 2.5)
    assert (args.max_connections, args.loop, args.log_level) == (100, "asyncio", "debug")
    assert args.v3_default_llm is True
    assert args.public_metrics is False and args.allow_unauthenticated is False


def test_defaults_without_flags_or_variables() -> None:
    args = parse()
    assert (args.host, args.port, args.region, args.auth_scheme) == ("127.0.0.1", 8080, "us", "raw")
    assert (args.gateway_url, args.api_key, args.stt_url) == (None, None, None)
    assert (args.auth_token, args.model, args.loop, args.log_level) == (
        (),
        "gpt-4.1",
        "auto",
        "info",
    )
    assert (args.max_connections, args.rate_limit, args.write_timeout) == (0, 0, 10.0)
    assert not (args.v3_default_llm or args.public_metrics or args.allow_unauthenticated)


def test_log_level_in_any_case_from_either_place(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("--log-level", "DEBUG").log_level == "debug"
    monkeypatch.setenv("REALTIME_LOG_LEVEL", "Warning")
    assert parse().log_level == "warning"


def test_the_flag_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_PORT", "abc")  # not read: the flag is given
    monkeypatch.setenv("REALTIME_AUTH_TOKENS", "from-env")
    monkeypatch.setenv("REALTIME_V3_DEFAULT_LLM", "1")
    args = parse("--port", "1", "--auth-token", "a", "--auth-token", "b", "--no-v3-default-llm")
    assert (args.port, args.auth_token, args.v3_default_llm) == (1, ["a", "b"], False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(v, True) for v in ("1", "TRUE", "yes", "On")]
    + [(v, False) for v in ("0", "false", "No", "off")],
)
def test_yes_no_variables(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("REALTIME_PUBLIC_METRICS", value)
    assert parse().public_metrics is expected


# --- auth that cannot be switched off by accident ----------------------------------------------


@pytest.mark.parametrize("token", ["", " ", "two words"])
def test_an_empty_or_blank_token_is_refused_without_echoing_it(token: str) -> None:
    line = refused(run("--auth-token", "good-token", "--auth-token", token))
    assert line.startswith("argument --auth-token: a token must not")
    if token.strip():
        assert token not in line


@pytest.mark.parametrize("tokens", [",", "", "good-token,", "a, ,b"])
def test_an_empty_item_in_the_token_variable_is_refused(tokens: str) -> None:
    line = refused(run(REALTIME_AUTH_TOKENS=tokens))
    assert line.startswith("argument --auth-token (from REALTIME_AUTH_TOKENS): an empty token")
    assert "good-token" not in line


def test_tokens_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_AUTH_TOKENS", " one , two ")
    assert parse().auth_token == ("one", "two")


@pytest.mark.parametrize(
    ("flags", "variables"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "192.0.2.10"], {}),
        (["--host", "service.example.com"], {}),
        ([], {"REALTIME_HOST": "::"}),
        (
            ["--host", "0.0.0.0", "--no-allow-unauthenticated"],
            {"REALTIME_ALLOW_UNAUTHENTICATED": "1"},
        ),
    ],
)
def test_a_reachable_host_without_a_token_refuses_to_start(
    flags: list[str], variables: dict[str, str]
) -> None:
    line = refused(run(*flags, **variables))
    assert line.startswith("--host ")
    assert "--auth-token" in line and "--allow-unauthenticated" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host: str) -> None:
    assert parse("--host", host).auth_token == ()


def test_a_reachable_host_with_a_token_or_on_purpose_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse("--host", "0.0.0.0", "--auth-token", "t").auth_token == ["t"]
    assert parse("--host", "0.0.0.0", "--allow-unauthenticated").allow_unauthenticated
    monkeypatch.setenv("REALTIME_ALLOW_UNAUTHENTICATED", "true")
    assert parse("--host", "0.0.0.0").allow_unauthenticated


# --- regions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "variables"),
    [
        (["--region", "eu"], {}),  # the default model, gpt-4.1
        ([], {"LLM_GATEWAY_REGION": "eu", "REALTIME_MODEL": "gpt-5"}),
        (["--region", "eu", "--model", "qwen3-32B", "--api-key", "k"], {}),
        (["--gateway-url", "https://llm-gateway.eu.assemblyai.com/v1"], {}),
    ],
)
def test_a_model_the_eu_gateway_does_not_serve_refuses_to_start(
    flags: list[str], variables: dict[str, str]
) -> None:
    line = refused(run(*flags, **variables))
    assert line.startswith("--model ") and "EU gateway" in line
    assert "Claude and Gemini" in line


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "gemini-2.5-flash", "Claude-Opus-4-7"])
def test_the_eu_gateway_serves_claude_and_gemini(model: str) -> None:
    assert parse("--region", "eu", "--model", model).model == model


def test_an_explicit_gateway_serves_any_model_whatever_the_region() -> None:
    assert parse("--region", "eu", "--gateway-url", "https://api.example.com/v1").model == "gpt-4.1"


def test_where_audio_goes() -> None:
    """--region eu keeps audio in the EU unless --stt-url says otherwise; no key: emulator."""
    eu = parse("--region", "eu", "--model", "claude-sonnet-4-6", "--api-key", "k")
    assert cli.upstream_stt_url(eu) == "wss://streaming.eu.assemblyai.com/v3/ws"
    assert cli.upstream_stt_url(parse("--api-key", "k")) == "wss://streaming.assemblyai.com/v3/ws"
    own = parse(
        "--region",
        "eu",
        "--model",
        "gemini-2.5-pro",
        "--api-key",
        "k",
        "--stt-url",
        "ws://h:1/v3/ws",
    )
    assert cli.upstream_stt_url(own) == "ws://h:1/v3/ws"
    assert cli.upstream_stt_url(parse("--region", "eu", "--model", "claude-sonnet-4-6")) is None


def test_where_replies_come_from() -> None:
    assert cli.gateway_url(parse()) is None  # the local emulator
    assert cli.gateway_url(parse("--api-key", "k")) == "https://llm-gateway.assemblyai.com/v1"
    eu = parse("--api-key", "k", "--region", "eu", "--model", "claude-sonnet-4-6")
    assert cli.gateway_url(eu) == "https://llm-gateway.eu.assemblyai.com/v1"
    assert cli.gateway_url(parse("--gateway-url", "http://h:1/v1/")) == "http://h:1/v1"


def test_the_settings_carry_every_option() -> None:
    args = parse(
        "--auth-token", "t", "--public-metrics", "--v3-default-llm", "--write-timeout", "2",
        "--rate-limit", "30", "--max-concurrent", "7", "--max-frame-bytes", "1000",
    )  # fmt: skip
    settings = cli.server_settings(args, stt_url="ws://h:1/v3/ws", max_connections=5)
    assert settings.auth_tokens == ("t",)
    assert settings.public_metrics is True and settings.v3_default_llm is True
    assert (settings.write_timeout_s, settings.max_connections) == (2.0, 5)
    assert (settings.rate_limit_per_minute, settings.max_concurrent_requests) == (30, 7)
    assert (settings.max_frame_bytes, settings.stt_url) == (1000, "ws://h:1/v3/ws")
    assert settings.default_config.model == "gpt-4.1"


# --- starting for real -------------------------------------------------------------------------


@asynccontextmanager
async def serving(*flags: str, **variables: str) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Run `serve --port 0 ...` until its listening line; yield (port, log lines so far); then
    SIGTERM it, which must end it with status 0."""
    proc = await asyncio.create_subprocess_exec(
        *SERVE, "--port", "0", *flags, stderr=asyncio.subprocess.PIPE, env=clean_env(**variables)
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(GUARD_S):
            while not lines or not lines[-1]["msg"].startswith("listening on "):
                raw = await proc.stderr.readline()
                assert raw, "serve exited before listening: " + repr(lines)
                lines.append(orjson.loads(raw))
        yield lines[-1]["port"], lines
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(GUARD_S):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0, rest
        lines += [orjson.loads(line) for line in rest.splitlines()]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_reachable_host_runs_without_auth_only_on_purpose_and_says_so() -> None:
    async with serving("--host", "0.0.0.0", "--allow-unauthenticated", "--loop", "asyncio") as (
        _,
        lines,
    ):
        first = lines[0]
        assert first["msg"].startswith("starting: gateway local emulator")
        assert (first["gateway_host"], first["stt_host"]) == ("local emulator", "local emulator")
        assert first["auth"] is False and first["loop"] == "asyncio"
        for limit in ("max_connections", "write_timeout_s", "max_concurrent_requests"):
            assert first[limit] > 0
        assert first["rate_limit_per_minute"] == 0
        warnings = [line for line in lines if line["level"] == "warning"]
        assert [w["msg"] for w in warnings] == [
            "auth is off on 0.0.0.0 (--allow-unauthenticated): anyone who can reach it can use "
            "the service"
        ]


async def test_the_first_line_names_the_eu_hosts_auth_and_limits() -> None:
    """Configured through the environment only; the key and tokens appear in no line."""
    key, tokens = "sk-cli-test-key", "tok-one,tok-two"
    async with serving(
        ASSEMBLYAI_API_KEY=key,
        LLM_GATEWAY_REGION="eu",
        REALTIME_MODEL="claude-sonnet-4-6",
        REALTIME_AUTH_TOKENS=tokens,
        REALTIME_PUBLIC_METRICS="1",
        REALTIME_MAX_CONNECTIONS="50",
        REALTIME_RATE_LIMIT="30",
        REALTIME_WRITE_TIMEOUT="2.5",
        REALTIME_LOG_LEVEL="DEBUG",
    ) as (port, lines):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:
                assert metrics.status == 200  # --public-metrics reached the server
            async with http.get(f"http://127.0.0.1:{port}/v1/realtime") as ws:
                assert ws.status == 401  # the tokens did too
    first = lines[0]
    assert first["gateway_host"] == "llm-gateway.eu.assemblyai.com"
    assert first["stt_host"] == "streaming.eu.assemblyai.com"
    assert (first["auth"], first["auth_tokens"]) == (True, 2)
    assert (first["max_connections"], first["rate_limit_per_minute"]) == (50, 30)
    assert first["write_timeout_s"] == 2.5
    assert first["msg"].startswith(
        "starting: gateway llm-gateway.eu.assemblyai.com, speech-to-text "
        "streaming.eu.assemblyai.com, auth on (2 tokens); limits: 50 connections, "
        "write timeout 2.5s, 512 concurrent gateway requests, 30 requests per model per minute"
    )
    pytest.importorskip("uvloop")
    assert first["loop"] == "uvloop"  # the default where uvloop installs
    text = repr(lines)
    for secret in (key, "tok-one", "tok-two"):
        assert secret not in text


# --- the gateway emulator's command line and gateway_client's log fields ------------------------


async def test_the_gateway_emulator_logs_json_lines() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway_client.emulator", "--port", "0", "--api-key", "emu-key",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(GUARD_S):
            first = orjson.loads(await proc.stderr.readline())
            assert first["level"] == "info" and first["logger"] == "gateway_client.emulator"
            base_url = first["msg"].rsplit(" ", 1)[1]
            async with aiohttp.ClientSession() as http:
                request = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(
                    base_url + "/chat/completions",
                    json=request,
                    headers={"Authorization": "emu-key"},
                ) as response:
                    assert response.status == 200
            line = orjson.loads(await proc.stderr.readline())
            assert line["msg"].startswith("POST /v1/chat/completions")
            proc.send_signal(signal.SIGTERM)
            rest = await proc.stderr.read()
            assert await proc.wait() == 0
        assert b"emu-key" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_gateway_client_logs_ids_and_failures_as_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway_client")
    request = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    async with asyncio.timeout(GUARD_S), GatewayEmulator(host="127.0.0.1", port=0) as emu:
        async with GatewayClient(base_url=emu.base_url, api_key="k", max_retries=0) as gw:
            done = await gw.complete(request)
            emu.faults.append(Fault("status", status=503))
            with pytest.raises(ServerError):
                await gw.complete(request)
    ok, failed = [r for r in caplog.records if r.getMessage().startswith("gateway request")]
    assert ok.getMessage() == "gateway request"
    assert ok.__dict__["request_id"] == done.request_id and done.request_id
    assert (ok.__dict__["status"], ok.__dict__["outcome"]) == (200, "ok")
    assert failed.getMessage() == "gateway request attempt failed"
    fields = failed.__dict__
    assert (fields["status"], fields["error_type"]) == (503, "ServerError")
    assert fields["reason"] and fields["request_id"]
    for record in (ok, failed):
        assert "request_id" not in record.getMessage()  # a field, not text
