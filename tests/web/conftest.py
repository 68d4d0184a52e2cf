"""The browser page in real headless Chromium: Debian's `chromium`, driven by Playwright for
Python through `executable_path` (Playwright's own browser download is not used).

Two services serve the page:

* `stack`: the service with both emulators in-process, on an event loop of its own thread
  (Playwright's sync API wants the test's thread free of asyncio). Its speech-to-text emulator
  hears the built-in script one word per `WORD_MS` of loud audio, and its LLM Gateway emulator
  pads every reply to `REPLY_WORDS` words streamed `TOKEN_DELAY_S` apart, so a reply streams
  long enough to be interrupted by the next turn and to be watched growing.
* `serve_cmd`: `python -m realtime serve --port 0 --auth-token T` as a process, with the
  emulators it embeds, as a user starts it.

Chromium's microphone is a WAV file the tests write (`speech_wav`): one utterance per scripted
turn (espeak-ng's speech where it is installed, else a speech-like voiced burst), long enough
for the emulator to hear every word, and silences that end the turns. A test that needs
Chromium skips with a one-line reason when Chromium or Playwright is missing, and fails instead
when REQUIRE_BROWSER=1 (CI).

Environment: CHROMIUM names another browser binary (default: `chromium` on PATH); ESPEAK_NG
another espeak-ng (`none`: voiced bursts only); screenshots go to WEB_ARTIFACTS_DIR (default:
a temporary directory), and UPDATE_DOCS_SCREENSHOT=1 also writes docs/browser.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.audio import read_wav
from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator, default_script
from realtime.server import Server, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER") == "1"
WORD_MS = 150  # loud audio per scripted word (the emulator's word_ms)
REPLY_WORDS = 60  # every reply of the stack's gateway emulator has at least this many words
TOKEN_DELAY_S = 0.03  # between streamed words: a 60-word reply streams for about 1.8 s
WAV_RATE = 48000
LOUD_MARGIN_DBFS = -30.0  # the emulator hears above -40 dBFS; speech counts here above this
TOKEN = "browser-test-token"
DEADLINE_MS = 20_000  # every wait for the page has this deadline

CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


# ---- Chromium and Playwright, or a one-line reason --------------------------------------------


def chromium_path() -> str:
    """The Chromium binary, or skip (fail with REQUIRE_BROWSER=1) with a one-line reason."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing('Playwright for Python is not installed: pip install -e ".[dev]"')
    wanted = os.environ.get("CHROMIUM") or "chromium"
    path = shutil.which(wanted)
    if path is None and wanted == "chromium" and os.access("/usr/bin/chromium", os.X_OK):
        path = "/usr/bin/chromium"
    if path is None:
        _missing(f"Chromium is not installed ({wanted} not found): apt-get install -y chromium")
    assert path is not None
    return path


def _missing(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# ---- the microphone's WAV -------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechWav:
    path: Path
    turns: list[str]  # the scripted lines the file speaks, in order
    voices: list[str]  # per turn: "espeak-ng" or "voiced"


def voiced(seconds: float, *, f0: float = 220.0) -> np.ndarray:
    """A vowel-like sound: harmonics of `f0` (1/k weights, so `f0` dominates) with a slow
    pitch drift, a syllable-rate envelope that never drops below half, 10 ms fades."""
    n = int(seconds * WAV_RATE)
    t = np.arange(n) / WAV_RATE
    freq = f0 * (1.0 + 0.02 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(freq) / WAV_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 9))
    x = x / np.max(np.abs(x))
    envelope = 0.55 + 0.45 * np.sin(np.pi * t / (WORD_MS / 1000)) ** 2
    fade = min(n // 2, WAV_RATE // 100)
    ramp = np.ones(n)
    ramp[:fade] = np.linspace(0, 1, fade)
    ramp[n - fade :] = np.linspace(1, 0, fade)
    return 0.3 * x * envelope * ramp


def espeak(line: str) -> np.ndarray | None:
    """`line` spoken by espeak-ng (trimmed, peak 0.5), if it is installed and the emulator
    would hear every word of it: at least one word more of loud audio than the line has words,
    a first word's worth of it unbroken, and no pause long enough to end the turn early."""
    exe = shutil.which(os.environ.get("ESPEAK_NG") or "espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "line.wav"
        done = subprocess.run(
            [exe, "-v", "en-us", "-w", str(out), line], capture_output=True, timeout=30
        )
        if done.returncode != 0:
            return None
        speech = read_wav(out, WAV_RATE).astype(np.float64) / 32768
    frame = WAV_RATE // 20
    loud = [
        20 * np.log10(np.sqrt(np.mean(speech[i : i + frame] ** 2)) + 1e-12) > LOUD_MARGIN_DBFS
        for i in range(0, len(speech), frame)
    ]
    if not any(loud):
        return None
    first, last = loud.index(True), len(loud) - loud[::-1].index(True)
    loud = loud[first:last]
    runs = "".join("#" if x else "." for x in loud)
    word = WORD_MS // 50
    enough = loud.count(True) >= (len(line.split()) + 1) * word
    if not enough or not runs.startswith("#" * (word + 1)) or "." * 6 in runs:
        return None
    speech = speech[first * frame : last * frame]
    return 0.5 * speech / np.max(np.abs(speech))


def write_speech_wav(path: Path) -> SpeechWav:
    """Silence, turn 1 (the script's first line), a pause long enough to end it and let its
    reply start streaming, turn 2 (which interrupts that reply), then silence while turn 2's
    reply streams to its end. Each line is espeak-ng's speech where that is installed and
    fits the emulator's ear (`espeak`), else a voiced burst one word longer than the line."""
    script = default_script()
    turns = script[:2]

    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * WAV_RATE))

    voices: list[str] = []

    def speak(line: str) -> np.ndarray:
        spoken = espeak(line)
        voices.append("voiced" if spoken is None else "espeak-ng")
        if spoken is not None:
            return spoken
        return voiced((len(line.split()) + 1) * WORD_MS / 1000)

    signal_ = np.concatenate([quiet(0.6), speak(turns[0]), quiet(1.2), speak(turns[1]), quiet(5.0)])
    pcm = np.clip(np.rint(signal_ * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(WAV_RATE)
        w.writeframes(pcm.tobytes())
    return SpeechWav(path, turns, voices)


# ---- the in-process service ----------------------------------------------------------------


class Stack:
    """The service and both emulators on an event loop in a thread of their own."""

    def __init__(self, *, auth_tokens: tuple[str, ...] = ()) -> None:
        self.auth_tokens = auth_tokens
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._exit = contextlib.AsyncExitStack()
        self.server: Server | None = None
        self.stt: SttEmulator | None = None

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Stack:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        gateway = await self._exit.enter_async_context(
            GatewayEmulator(
                host="127.0.0.1", port=0, token_delay=TOKEN_DELAY_S, reply_words=REPLY_WORDS
            )
        )
        self.stt = await self._exit.enter_async_context(
            SttEmulator(host="127.0.0.1", port=0, word_ms=WORD_MS)
        )
        client = await self._exit.enter_async_context(
            GatewayClient(base_url=gateway.base_url, api_key=None)
        )
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            auth_tokens=self.auth_tokens,
            stt_url=self.stt.url + "/v3/ws",
            default_config=SessionConfig.from_defaults(model="gpt-4.1"),
        )
        self.server = Server(settings, client)
        await self.server.start()
        self._exit.push_async_callback(self.server.stop)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def connections(self) -> int:
        async def count() -> int:
            assert self.server is not None
            return len(self.server.connections)

        return int(self.call(count()))

    def stop(self) -> None:
        try:
            self.call(self._exit.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack().start()
    try:
        yield s
    finally:
        s.stop()


# ---- `python -m realtime serve` as a process --------------------------------------------------


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    token: str = TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_serve(log: Path, *args: str) -> ServeProcess:
    """Start `python -m realtime serve --port 0 ARGS` and wait for its listening line."""
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime", "serve", "--log-level", "info", *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if str(record.get("msg", "")).startswith("listening") and "port" in record:
                    return ServeProcess(proc, log, int(record["port"]))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise AssertionError(f"serve did not start:\n{log.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def spawn_serve() -> Iterator[Callable[..., ServeProcess]]:
    """`spawn_serve(log, *args)` starts a `serve` that the test may stop; stopped after it."""
    started: list[ServeProcess] = []

    def spawn(log: Path, *args: str) -> ServeProcess:
        started.append(start_serve(log, *args))
        return started[-1]

    try:
        yield spawn
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="session")
def serve_cmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`serve` with auth on (token TOKEN), its emulators embedded."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start_serve(log, "--port", "0", "--auth-token", TOKEN)
    try:
        yield proc
    finally:
        proc.stop()


# ---- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $WEB_ARTIFACTS_DIR, else a temporary directory."""
    where = os.environ.get("WEB_ARTIFACTS_DIR")
    path = Path(where) if where else tmp_path_factory.mktemp("web-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> SpeechWav:
    return write_speech_wav(tmp_path_factory.mktemp("mic") / "speech.wav")


@pytest.fixture(scope="session")
def browser(speech_wav: SpeechWav) -> Iterator[Any]:
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=path,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={speech_wav.path}%noloop"],
        )
        try:
            yield b
        finally:
            b.close()


@dataclass
class Web:
    """Contexts and pages of one test; every console error and page error is collected."""

    browser: Any
    contexts: list[Any] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def page(self, url: str | None, *, init_script: str | None = None, **options: Any) -> Any:
        """A page in a context of its own (its own sessionStorage), at `url` unless None."""
        context = self.browser.new_context(**options)
        context.set_default_timeout(DEADLINE_MS)
        self.contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        self.watch(page)
        if url is not None:
            page.goto(url)
        return page

    def watch(self, page: Any) -> None:
        def on_console(message: Any) -> None:
            if message.type == "error":
                self.console_errors.append(f"{page.url}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"{page.url}: {exc}"))

    def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                context.close()
        self.contexts.clear()


@pytest.fixture
def web(browser: Any) -> Iterator[Web]:
    w = Web(browser)
    try:
        yield w
    finally:
        w.close()
