"""The examples as a user runs them: real subprocesses against a service on loopback.

Each failure (a refused upgrade, nothing listening, a bad file, an error from the service) is
one line on stderr with the server's reason where it gave one, no traceback, and a non-zero
exit status; a session that works prints captions and replies on lines of their own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import aiohttp
import orjson
import pytest
from support.audio import RATE, tone

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator
from realtime.server import Server, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
MIC = ROOT / "examples" / "mic_assistant.py"
SDK = ROOT / "examples" / "aai_sdk_client.py"
TOKEN = "the-right-token"
SCRIPT = ["hello there", "how are you"]  # what the speech-to-text emulator "hears"
RUN_LIMIT_S = 90.0  # a hung example fails the test instead of hanging it


@dataclass
class Run:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def assert_one_line_failure(self, *says: str) -> str:
        everything = self.out + self.err
        assert self.status != 0, everything
        assert "Traceback" not in everything, everything
        assert len(self.err_lines) == 1, everything
        line = self.err_lines[0]
        assert line.startswith("error: "), everything
        for words in says:
            assert words in line, everything
        return line


async def run_example(script: Path, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_LIMIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@dataclass
class Live:
    port: int

    @property
    def realtime_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    @property
    def host(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    """The service with auth on, the gateway emulator and the speech-to-text emulator."""
    async with (
        GatewayEmulator(host="127.0.0.1", port=0, token_delay=0.005) as gateway_emu,
        SttEmulator(script=SCRIPT, word_ms=150, silence_ms=300) as stt,
        GatewayClient(base_url=gateway_emu.base_url, api_key=None) as gateway,
    ):
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            default_config=SessionConfig.from_defaults(model="gpt-4.1"),
            auth_tokens=(TOKEN,),
            stt_url=stt.url + "/v3/ws",
            stt_api_key=None,
        )
        async with Server(settings, gateway) as server:
            yield Live(server.port)


@pytest.fixture
async def no_audio() -> AsyncIterator[Live]:
    """The service without speech-to-text: audio gets `audio_unsupported`."""
    async with (
        GatewayEmulator(host="127.0.0.1", port=0) as gateway_emu,
        GatewayClient(base_url=gateway_emu.base_url, api_key=None) as gateway,
    ):
        settings = ServerSettings(
            host="127.0.0.1", port=0, default_config=SessionConfig.from_defaults(model="gpt-4.1")
        )
        async with Server(settings, gateway) as server:
            yield Live(server.port)


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    """A WAV file with two bursts of tone: the emulator hears one scripted turn per burst."""
    frames: list[bytes] = []
    for _ in SCRIPT:
        frames += tone(0.3, loud=False) + tone(0.9, loud=True) + tone(1.0, loud=False)
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(frames))
    return path


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def refusal_reason(url: str, **headers: str) -> str:
    """What the server says when it refuses this upgrade: the reason the examples must show."""
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with aiohttp.ClientSession() as http, http.get(url, headers=upgrade | headers) as r:
        assert r.status == 401
        error = orjson.loads(await r.read())["error"]
    reason = error["message"] if isinstance(error, dict) else error
    assert isinstance(reason, str) and reason
    return reason


# ---- mic_assistant.py ----------------------------------------------------------------------


async def test_mic_prints_captions_and_replies_on_separate_lines(live: Live, speech: Path):
    run = await run_example(MIC, "--url", live.realtime_url, "--token", TOKEN, "--wav", str(speech))
    assert run.status == 0, run.out + run.err
    assert run.err == ""
    lines = run.out.splitlines()
    for text in SCRIPT:
        assert f"you: {text}" in lines, run.out
        assert f"assistant: You said: {text}  [done]" in lines, run.out
    for line in lines:
        assert not ("you:" in line and "assistant:" in line), run.out
    # each turn is captioned once, even when its formatted copy follows
    assert [line for line in lines if line.startswith("you: ")] == [f"you: {t}" for t in SCRIPT]


async def test_mic_wrong_token_shows_the_servers_reason(live: Live, speech: Path):
    reason = await refusal_reason(live.realtime_url, Authorization="Bearer wrong")
    run = await run_example(
        MIC, "--url", live.realtime_url, "--token", "wrong", "--wav", str(speech)
    )
    run.assert_one_line_failure("401", reason)


async def test_mic_nothing_listening(closed_port: int, speech: Path):
    url = f"ws://127.0.0.1:{closed_port}/v1/realtime"
    run = await run_example(MIC, "--url", url, "--wav", str(speech))
    run.assert_one_line_failure(url, "connection refused")


@pytest.mark.parametrize("make", ["missing", "not_a_wav", "directory"])
async def test_mic_bad_file(closed_port: int, tmp_path: Path, make: str):
    path = tmp_path / "speech.wav"
    if make == "not_a_wav":
        path.write_text("not audio\n")
    elif make == "directory":
        path.mkdir()
    run = await run_example(
        MIC, "--url", f"ws://127.0.0.1:{closed_port}/v1/realtime", "--wav", str(path)
    )
    run.assert_one_line_failure(str(path))
    assert run.status == 2


async def test_mic_error_from_the_service_is_one_line(no_audio: Live, speech: Path):
    run = await run_example(MIC, "--url", no_audio.realtime_url, "--wav", str(speech))
    run.assert_one_line_failure("audio_unsupported")
    assert run.status == 1


async def test_mic_bad_url(speech: Path):
    run = await run_example(MIC, "--url", "http://127.0.0.1:1/v1/realtime", "--wav", str(speech))
    run.assert_one_line_failure("--url")


# ---- aai_sdk_client.py ---------------------------------------------------------------------


async def test_sdk_prints_each_turn_and_its_reply_once(live: Live, speech: Path):
    run = await run_example(SDK, "--host", live.host, "--token", TOKEN, "--wav", str(speech))
    assert run.status == 0, run.out + run.err
    assert "Traceback" not in run.err
    lines = run.out.splitlines()
    for n, text in enumerate(SCRIPT):
        assert lines.count(f"turn {n}: {text}") == 1, run.out
        assert any(line.startswith(f"reply {n}: ") and text in line for line in lines), run.out


async def test_sdk_wrong_token_shows_the_servers_reason(live: Live, speech: Path):
    reason = await refusal_reason(f"{live.host}/v3/ws?sample_rate=16000", Authorization="wrong")
    run = await run_example(SDK, "--host", live.host, "--token", "wrong", "--wav", str(speech))
    run.assert_one_line_failure("401", reason)


async def test_sdk_nothing_listening_exits_non_zero(closed_port: int):
    host = f"ws://127.0.0.1:{closed_port}"
    run = await run_example(SDK, "--host", host)
    run.assert_one_line_failure(host, "connection refused")


async def test_sdk_missing_file(closed_port: int, tmp_path: Path):
    path = tmp_path / "missing.wav"
    run = await run_example(SDK, "--host", f"ws://127.0.0.1:{closed_port}", "--wav", str(path))
    run.assert_one_line_failure(str(path))
    assert run.status == 2


async def test_sdk_bad_host():
    run = await run_example(SDK, "--host", "http://127.0.0.1:1")
    run.assert_one_line_failure("--host")
    assert run.status == 2


# ---- both ----------------------------------------------------------------------------------


def load(script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", [MIC, SDK], ids=["mic", "sdk"])
async def test_help_explains_every_option(script: Path):
    parser = load(script).build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help and len(action.help) > 20, action.option_strings
    run = await run_example(script, "--help")
    assert run.status == 0, run.err
    for action in options:
        assert action.option_strings[0] in run.out
    assert "exit status" in run.out
