"""A local AssemblyAI Universal Streaming v3 server, for demos and tests.

    python -m realtime.emulators.stt --port 8765 [--api-key K] [--script FILE] [--word-ms 300]

It speaks the v3 wire protocol (path /v3/ws, Begin / Turn / SpeechStarted / Termination / Error,
close codes, `GET /v3/token` temporary tokens) but cannot recognise speech: it "hears" lines of a
script, paced by the loudness of the audio it receives (see `stt_engine`), or replays a recorded
.jsonl message sequence (see `stt_replay`). Point the official SDK at it with
`api_host="ws://127.0.0.1:PORT"`. Its own messages are written as the service writes them
(`stt_engine.encode`: `1.4e-05`, not `0.000014`); replayed ones are sent verbatim.

Speakers: with `speaker_labels=true` (and optionally `max_speakers`) scripted turns carry
`speaker_label` and per-word `speaker`, and relabels become `SpeakerRevision` messages. A script
line `B: text` is spoken by B (no prefix: A); `A>C: text` is heard as A and relabelled to C
(sent after `Terminate`, or right after the turn with `speaker_labels_revision_interval_ms`).
See `stt_engine` for the details.

Errors, each an `Error` frame followed by a close with the same code:
1008 bad or missing key/token; 3006 invalid JSON, unknown message type, bad connection
parameter, or `inactivity_timeout` reached; 3007 a binary frame outside 50..1000 ms of audio, or
audio arriving more than `rate_tolerance_ms` ahead of the wall clock; 3008 session longer than
`max_session_s` (or the token's `max_session_duration_seconds`). Frames over 128 KiB close 1009.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from realtime.audio import as_int16, mulaw_to_int16, rms_dbfs
from realtime.emulators.stt_engine import (
    ENCODINGS,
    EarConfig,
    ParamError,
    ScriptedEar,
    encode,
    parse_params,
)
from realtime.emulators.stt_replay import Raw, Recording, ReplayEar

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 128 * 1024
MAX_SESSIONS_KEPT = 1000  # records of older sessions are dropped
MAX_MESSAGES_KEPT = 10000  # per session record; later messages are sent but not recorded
HEARTBEAT_S = 5.0
SESSION_CAP_S = 3 * 3600
API_VERSION = "2025-05-12"


def default_script() -> list[str]:
    """The built-in conversation (realtime/data/stt_script.txt), one turn per line."""
    text = resources.files("realtime.data").joinpath("stt_script.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_script(path: str | Path) -> list[str] | Recording:
    """A .jsonl file is a recording to replay; anything else is a text script of turns."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return Recording.load(p)
    return [line.strip() for line in p.read_text("utf-8").splitlines() if line.strip()]


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs request headers (Authorization!) at DEBUG; never let it."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WS_LOGGER = _QuietLogger(logging.getLogger("realtime.emulators.stt.websocket"), {})


@dataclass
class SessionRecord:
    """What one WebSocket session did, for tests to inspect."""

    id: str
    params: dict[str, Any] = field(default_factory=dict)
    query: str = ""  # the raw query string, `token` removed
    headers: dict[str, str] = field(default_factory=dict)  # without Authorization
    auth: str = "none"  # "key", "token", "none" (auth off) or "rejected"
    closed: bool = False
    terminated: bool = False  # the client sent Terminate
    close_code: int | None = None
    audio_bytes: int = 0
    frames: int = 0
    messages_sent: list[dict[str, Any]] = field(default_factory=list)
    messages_received: list[dict[str, Any]] = field(default_factory=list)  # text frames
    errors: list[int] = field(default_factory=list)  # error codes sent


class _Close(Exception):
    """End the session: send Error (unless code 1000) then close with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Token:
    deadline: float  # monotonic time by which the socket must open
    max_session_s: int


class SttEmulator:
    """The emulator as an async context manager; one instance serves many sessions.

    Options: `api_keys` (empty = no auth), `script` (list of turns, a path to .txt/.jsonl, a
    `Recording`, or None for the built-in conversation), `word_ms` (loud audio per word),
    `silence_ms` (default turn-ending silence unless the client sets min/max_turn_silence),
    `loud_dbfs` (frame RMS above this counts as speech), `rate_tolerance_ms` (how far audio may
    run ahead of the wall clock; None disables the check), `max_session_s` (3008 after this),
    `heartbeat_s` (Heartbeat period when a session asks with session_heartbeat=true).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Sequence[str] = (),
        script: Sequence[str] | str | Path | Recording | None = None,
        *,
        word_ms: int = 300,
        silence_ms: int | None = None,
        loud_dbfs: float = -40.0,
        rate_tolerance_ms: int | None = 2000,
        max_session_s: float | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.host, self.port = host, port
        self.heartbeat_s = heartbeat_s
        self.api_keys = frozenset(api_keys)
        if isinstance(script, str | Path):
            script = load_script(script)
        self.script: list[str] | Recording = (
            script if isinstance(script, Recording) else list(script or default_script())
        )
        self.word_ms, self.silence_ms = word_ms, silence_ms
        self.loud_dbfs = loud_dbfs
        self.rate_tolerance_ms = rate_tolerance_ms
        self.max_session_s = max_session_s
        self.sessions: list[SessionRecord] = []
        self._tokens: dict[str, _Token] = {}
        self._closed: asyncio.Queue[SessionRecord] = asyncio.Queue()
        self._fail: tuple[int, str] | None = None
        self._server: Server | None = None
        self._open_sessions = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SttEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            logger=_WS_LOGGER,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        """`ws://host:port`: the SDK's `api_host` (it appends /v3/ws itself)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_sessions(self) -> int:
        """WebSocket sessions whose handler is still running (0 once every client left)."""
        return self._open_sessions

    def fail_next(self, code: int, message: str) -> None:
        """Make the next session send `Error(code, message)` and close `code` right after Begin."""
        self._fail = (code, message)

    async def wait_closed(self, timeout: float = 5.0) -> SessionRecord:
        """The next session whose socket closed (in closing order)."""
        async with asyncio.timeout(timeout):
            return await self._closed.get()

    # --- HTTP: token endpoint and routing ------------------------------------------------------

    def _key_ok(self, value: str | None) -> bool:
        return not self.api_keys or (value is not None and value in self.api_keys)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/v3/ws":
            return None
        if url.path == "/v3/token":
            status, body = self._mint(request.headers.get("Authorization"), url.query)
            payload = orjson.dumps(body)
            headers = Headers(
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(payload))),
                    ("Connection", "close"),
                ]
            )
            return Response(status, HTTPStatus(status).phrase, headers, payload)
        return conn.respond(404, "not found\n")

    def _mint(self, auth: str | None, query: str) -> tuple[int, dict[str, Any]]:
        if not self._key_ok(auth):
            return 401, {"error": "Invalid API key"}
        q = dict(parse_qsl(query))
        try:
            expires = int(q["expires_in_seconds"])
            max_session = int(q.get("max_session_duration_seconds", SESSION_CAP_S))
        except (KeyError, ValueError):
            return 400, {"error": "expires_in_seconds must be an integer between 1 and 600"}
        if not 1 <= expires <= 600:
            return 400, {"error": "expires_in_seconds must be between 1 and 600"}
        if not 60 <= max_session <= SESSION_CAP_S:
            return 400, {"error": "max_session_duration_seconds must be between 60 and 10800"}
        now = time.monotonic()
        # unused tokens past their window can never be used: forget them (bounded dict)
        self._tokens = {t: v for t, v in self._tokens.items() if v.deadline >= now}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = _Token(now + expires, max_session)
        return 200, {"token": token, "expires_in_seconds": expires}

    def _authenticate(self, request: Request, query: dict[str, str]) -> tuple[str, float | None]:
        """Return (how, session cap from a token) or raise _Close(1008)."""
        header = request.headers.get("Authorization")
        for candidate in (query.get("token"), header):
            token = self._tokens.pop(candidate, None) if candidate else None
            if token is not None:
                if token.deadline < time.monotonic():
                    raise _Close(1008, "Unauthorized Connection: temporary token expired")
                return "token", float(token.max_session_s)
        if not self.api_keys:
            return "none", None
        if header is None and "token" not in query:
            raise _Close(1008, "Unauthorized Connection: Missing Authorization header")
        if header in self.api_keys:
            return "key", None
        raise _Close(1008, "Unauthorized Connection: Invalid API key or token")

    # --- one WebSocket session -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self._open_sessions += 1
        try:
            await self._serve_session(ws)
        finally:
            self._open_sessions -= 1

    async def _serve_session(self, ws: ServerConnection) -> None:
        rec = SessionRecord(id=str(uuid.uuid4()))
        self.sessions.append(rec)
        if len(self.sessions) > MAX_SESSIONS_KEPT:
            del self.sessions[0]
        try:
            await _Session(self, ws, rec).run()
        finally:
            with contextlib.suppress(Exception):
                await ws.wait_closed()
            rec.closed = True
            if rec.close_code is None:
                rec.close_code = ws.close_code
            log.info("stt session %s closed (%s)", rec.id, rec.close_code)
            if self._closed.qsize() < MAX_SESSIONS_KEPT:
                self._closed.put_nowait(rec)


class _Session:
    """Runs one connection: a single task reading frames with deadlines, no helpers tasks."""

    def __init__(self, emu: SttEmulator, ws: ServerConnection, rec: SessionRecord) -> None:
        self.emu, self.ws, self.rec = emu, ws, rec
        self.started = time.monotonic()
        self.ear: ScriptedEar | ReplayEar | None = None
        self.bytes_per_ms = 32.0
        self.encoding = "pcm_s16le"
        self.inactivity_s: float | None = None
        self.last_activity = self.started
        self.session_end: float | None = None
        self.heartbeat_at: float | None = None
        self.audio_ms = 0.0

    async def send(self, msg: dict[str, Any] | Raw) -> None:
        obj, text = (msg.obj, msg.text) if isinstance(msg, Raw) else (msg, None)
        if len(self.rec.messages_sent) < MAX_MESSAGES_KEPT:
            self.rec.messages_sent.append(obj)
        await self.ws.send(text if text is not None else encode(obj))

    async def close(self, code: int, message: str) -> None:
        if code != 1000:
            self.rec.errors.append(code)
            await self.send({"type": "Error", "error_code": code, "error": message})
        reason = message if len(message.encode()) <= 123 else "See Error message for details"
        self.rec.close_code = code
        await self.ws.close(code, reason if code != 1000 else "")

    async def run(self) -> None:
        try:
            await self._setup()
            await self._loop()
        except _Close as c:
            with contextlib.suppress(ConnectionClosed):
                await self.close(c.code, c.message)
        except ConnectionClosed:
            pass

    async def _setup(self) -> None:
        request = self.ws.request
        assert request is not None  # set once the handshake is done
        self.rec.headers = {k: v for k, v in request.headers.raw_items() if k != "Authorization"}
        raw_query = urlsplit(request.path).query
        self.rec.query = "&".join(p for p in raw_query.split("&") if not p.startswith("token="))
        how, token_cap = self.emu._authenticate(request, dict(parse_qsl(raw_query)))
        self.rec.auth = how
        try:
            params = parse_params(raw_query)
        except ParamError as exc:
            raise _Close(3006, f"Invalid Message: {exc}") from None
        self.rec.params = params
        self.encoding = params["encoding"]
        self.bytes_per_ms = params["sample_rate"] * ENCODINGS[self.encoding] / 1000.0
        if params.get("inactivity_timeout"):
            self.inactivity_s = float(params["inactivity_timeout"])
        caps = [c for c in (self.emu.max_session_s, token_cap) if c is not None]
        cap = min(caps) if caps else float(SESSION_CAP_S)
        self.session_end = self.started + cap
        if params.get("session_heartbeat") is True:
            self.heartbeat_at = self.started + self.emu.heartbeat_s
        expires_at = int(time.time() + cap)
        if isinstance(self.emu.script, Recording):
            self.ear = ReplayEar(self.emu.script)
            begin = self.emu.script.begin_frame(self.rec.id, expires_at)
            self.rec.id = str(begin.get("id", self.rec.id))
        else:
            config = EarConfig(
                speech_model=params["speech_model"],
                format_turns=params.get("format_turns") is True,
                min_turn_silence=params.get("min_turn_silence"),
                max_turn_silence=params.get("max_turn_silence"),
                word_ms=self.emu.word_ms,
                silence_ms=self.emu.silence_ms,
                speaker_labels=params.get("speaker_labels") is True,
                max_speakers=params.get("max_speakers"),
                revision_interval_ms=params.get("speaker_labels_revision_interval_ms"),
            )
            self.ear = ScriptedEar(config, list(self.emu.script))
            version = request.headers.get("AssemblyAI-Version", API_VERSION)
            begin = {
                "type": "Begin",
                "id": self.rec.id,
                "expires_at": expires_at,
                "configuration": {
                    "model": params["speech_model"],
                    "api_version": version,
                    "speaker_labels": params.get("speaker_labels") is True,
                },
            }
        await self.send(begin)
        if self.emu._fail is not None:
            code, message = self.emu._fail
            self.emu._fail = None
            raise _Close(code, message)

    def _deadline(self) -> tuple[float, str]:
        options = [(self.session_end or math.inf, "session")]
        if self.inactivity_s is not None:
            options.append((self.last_activity + self.inactivity_s, "inactivity"))
        if self.heartbeat_at is not None:
            options.append((self.heartbeat_at, "heartbeat"))
        return min(options)

    async def _loop(self) -> None:
        while True:
            when, what = self._deadline()
            remaining = None if math.isinf(when) else max(0.0, when - time.monotonic())
            try:
                async with asyncio.timeout(remaining):
                    frame = await self.ws.recv()
            except TimeoutError:
                await self._on_deadline(what)
                continue
            self.last_activity = time.monotonic()
            if isinstance(frame, bytes):
                await self._on_audio(frame)
            elif await self._on_text(frame):
                return

    async def _on_deadline(self, what: str) -> None:
        if what == "session":
            raise _Close(3008, "Session Expired: Maximum session duration exceeded")
        if what == "inactivity":
            raise _Close(3006, f"Session idle: no audio or KeepAlive for {self.inactivity_s:g} s")
        elapsed_ms = (time.monotonic() - self.started) * 1000.0
        self.heartbeat_at = time.monotonic() + self.emu.heartbeat_s
        await self.send(
            {
                "type": "Heartbeat",
                "total_audio_received_ms": int(self.audio_ms),
                "total_duration_ms": int(elapsed_ms),
                "realtime_factor": round(self.audio_ms / max(elapsed_ms, 1.0), 3),
                "max_speech_probability": 0.0,
            }
        )

    async def _on_audio(self, frame: bytes) -> None:
        duration = len(frame) / self.bytes_per_ms
        if round(duration, 1) < 50 or round(duration, 1) > 1000:
            raise _Close(
                3007,
                f"Input duration violation: {duration:.0f} ms. Expected between 50 and 1000 ms",
            )
        self.rec.audio_bytes += len(frame)
        self.rec.frames += 1
        self.audio_ms += duration
        elapsed_s = time.monotonic() - self.started
        tolerance = self.emu.rate_tolerance_ms
        if tolerance is not None and self.audio_ms > elapsed_s * 1000.0 + tolerance:
            raise _Close(
                3007,
                f"Audio Transmission Rate Exceeded: Received {self.audio_ms / 1000:.1f} sec. "
                f"audio in {elapsed_s:.1f} sec",
            )
        if self.encoding == "pcm_mulaw":
            pcm = mulaw_to_int16(frame)
        else:
            pcm = as_int16(frame[: len(frame) - len(frame) % 2])  # a stray odd byte is ignored
        loud = rms_dbfs(pcm) > self.emu.loud_dbfs
        assert self.ear is not None
        for msg in self.ear.feed(duration, loud):
            await self.send(msg)

    async def _on_text(self, text: str) -> bool:
        """Handle a client text frame; True when the session is over."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise _Close(3006, f"Invalid JSON: {text[:60]}") from None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or kind not in (
            "Terminate",
            "ForceEndpoint",
            "KeepAlive",
            "UpdateConfiguration",
        ):
            raise _Close(3006, f"Invalid Message Type: {text[:60]}")
        self.rec.messages_received.append(msg)
        assert self.ear is not None
        if kind == "ForceEndpoint":
            for out in self.ear.end_turn():
                await self.send(out)
        elif kind == "UpdateConfiguration":
            fields = {k: v for k, v in msg.items() if k != "type"}
            self.rec.params.update(fields)
            if isinstance(self.ear, ScriptedEar):
                self.ear.config.update(fields)
        elif kind == "Terminate":
            self.rec.terminated = True
            for out in self.ear.end_turn():
                await self.send(out)
            if isinstance(self.ear, ScriptedEar):
                for out in self.ear.final_revisions():  # relabels come last, as the service's
                    await self.send(out)
            audio_s = round(self.audio_ms / 1000.0)
            session_s = round(time.monotonic() - self.started)
            if isinstance(self.ear, ReplayEar):
                await self.send(self.ear.recording.termination_frame(audio_s, session_s))
            else:
                await self.send(
                    {
                        "type": "Termination",
                        "audio_duration_seconds": audio_s,
                        "session_duration_seconds": session_s,
                    }
                )
            await self.close(1000, "")
            return True
        return False  # KeepAlive: only resets the inactivity timer (done by the caller)


# --- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m realtime.emulators.stt",
        description="Local AssemblyAI Universal Streaming v3 emulator: hears a script, "
        "paced by the loudness of the audio it receives.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="K",
        help="accepted API key (repeatable); none given = no authentication",
    )
    p.add_argument(
        "--script",
        metavar="FILE",
        help="text file, one turn per line (`B: text` sets the speaker, `A>C: text` relabels), "
        "or a .jsonl recording to replay (default: a built-in conversation)",
    )
    p.add_argument("--word-ms", type=int, default=300, help="loud audio per word (ms)")
    p.add_argument(
        "--silence-ms",
        type=int,
        default=None,
        help="silence that ends a turn unless the client sets min/max_turn_silence",
    )
    p.add_argument("--loud-dbfs", type=float, default=-40.0, help="speech threshold (dBFS)")
    p.add_argument(
        "--rate-tolerance-ms",
        type=int,
        default=2000,
        help="how far audio may run ahead of real time before 3007 (negative = no check)",
    )
    p.add_argument("--max-session-s", type=float, default=None, help="close 3008 after this")
    return p


async def _serve(args: argparse.Namespace) -> None:
    emu = SttEmulator(
        args.host,
        args.port,
        api_keys=args.api_key,
        script=args.script,
        word_ms=args.word_ms,
        silence_ms=args.silence_ms,
        loud_dbfs=args.loud_dbfs,
        rate_tolerance_ms=None if args.rate_tolerance_ms < 0 else args.rate_tolerance_ms,
        max_session_s=args.max_session_s,
    )
    async with emu:
        # the tests read this line to learn the port when started with --port 0
        print(f"stt emulator listening on {emu.url}/v3/ws", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C


def main(argv: Sequence[str] | None = None) -> None:
    from realtime import logs

    args = build_parser().parse_args(argv)
    logs.setup("info", secrets=list(args.api_key or ()))  # JSON lines, as the service logs
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
