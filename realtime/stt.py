"""Asyncio client of AssemblyAI Universal Streaming v3 (speech-to-text over a WebSocket).

    async with SttClient(url, api_key=KEY, params=SttParams(speech_model=...)) as stt:
        await stt.send_audio(pcm)          # any size; re-framed to 50 ms, paced to real time
        async for msg in stt:              # upstream messages as dicts, verbatim
            ...
        await stt.terminate()              # Terminate -> Termination -> close

    To pass messages on unchanged, iterate `stt.received()` instead: each item is a `Received`,
    `(raw, message)`, where `raw` is the text frame's bytes exactly as the service sent them
    (re-serialising `message` would change number forms: `1.4e-05` becomes `0.000014`).
    Both iterations take from the same inbox: use one of them per client.

Contracts:

* Audio is cut into 50 ms frames (the size the service recommends; 50..1000 ms is allowed) and
  sent no faster than real time: the writer sleeps while the audio clock is ahead of the wall
  clock. At most `max_buffer_s` of audio waits in the outbox; beyond that `send_audio` waits
  (backpressure on the producer) instead of dropping audio.
* Upstream messages are kept in a bounded inbox (`inbox_size`); when the consumer falls that far
  behind, the oldest partial `Turn` is dropped first (finals, Begin, Termination are kept).
* Errors are translated to `SttError(code, message, retryable)`. 1008 (auth), 3006, 3007, 3008
  and HTTP rejections of the handshake are final; 3005, 3009, 1011, 1012, 1013 and lost
  connections are retried with jittered exponential backoff, at most `max_reconnects` times
  per client (not with a temporary token, which is single use). The new session's `Begin` is passed
  through; the `Error` frame of a connection that is retried is only logged. When the session
  ends in failure, the `Error` frame (if any) is yielded, then iteration raises `SttError`.
* `Terminate` is always sent on the way out (the service bills open-socket time): by
  `terminate()`, by leaving the `async with` block normally, and on errors or cancellation with
  a short grace period (`cancel_grace`).
* The API key or token never appears in a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from realtime.audio import FRAME_MS, Framer
from realtime.core.errors import UpstreamError

PACE_SLACK_S = 0.1  # how far audio may run ahead of real time (catch-up after connect)
log = logging.getLogger(__name__)

DEFAULT_URL = "wss://streaming.assemblyai.com/v3/ws"
_REGION_URLS = {
    None: DEFAULT_URL,
    "us": "wss://streaming.us.assemblyai.com/v3/ws",
    "eu": "wss://streaming.eu.assemblyai.com/v3/ws",
}
_TERMINATE = '{"type":"Terminate"}'
_BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_mulaw": 1}
_RETRYABLE = {3005, 3009, 1006, 1011, 1012, 1013}
_DEFAULT_REASONS = {
    1008: "Unauthorized Connection",
    3005: "Session Cancelled: An error occurred",
    3006: "Invalid message",
    3007: "Audio chunk duration or rate violation",
    3008: "Session Expired: Maximum session duration exceeded",
    3009: "Too many concurrent sessions",
}


def stt_url_for_region(region: str | None) -> str:
    """The /v3/ws URL for a data zone: "us", "eu", or None (edge-routed default)."""
    try:
        return _REGION_URLS[region.lower() if region else None]
    except KeyError:
        raise ValueError(f"unknown STT region {region!r} (use 'us', 'eu' or None)") from None


# --- parameters -------------------------------------------------------------------------------


def encode_param(value: Any) -> str:
    """One query value as the service expects it: true/false, JSON for lists and objects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value).decode()
    return str(value)


@dataclass(frozen=True)
class SttParams:
    """Connection parameters; None values are omitted, `extra` is passed through as given."""

    sample_rate: int = 16000
    encoding: str | None = None  # service default: pcm_s16le
    speech_model: str | None = None
    format_turns: bool | None = None
    end_of_turn_confidence_threshold: float | None = None
    min_turn_silence: int | None = None
    max_turn_silence: int | None = None
    keyterms_prompt: Sequence[str] | None = None
    inactivity_timeout: int | None = None
    llm_gateway: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def query(self) -> dict[str, str]:
        """The query parameters, encoded (None omitted)."""
        fields = {
            "sample_rate": self.sample_rate,
            "encoding": self.encoding,
            "speech_model": self.speech_model,
            "format_turns": self.format_turns,
            "end_of_turn_confidence_threshold": self.end_of_turn_confidence_threshold,
            "min_turn_silence": self.min_turn_silence,
            "max_turn_silence": self.max_turn_silence,
            "keyterms_prompt": list(self.keyterms_prompt) if self.keyterms_prompt else None,
            "inactivity_timeout": self.inactivity_timeout,
            "llm_gateway": dict(self.llm_gateway) if self.llm_gateway else None,
            **self.extra,
        }
        return {k: encode_param(v) for k, v in fields.items() if v is not None}

    @property
    def bytes_per_ms(self) -> float:
        return self.sample_rate * _BYTES_PER_SAMPLE.get(self.encoding or "pcm_s16le", 2) / 1000


def build_url(base_url: str, params: SttParams, token: str | None = None) -> str:
    """`base_url?<params>[&token=...]`. Contains the token: never log the result."""
    query = params.query()
    if token:
        query["token"] = token
    return f"{base_url}?{urlencode(query)}"


# --- errors -----------------------------------------------------------------------------------


class SttError(UpstreamError):
    """A speech-to-text failure: `code` (close code, error code or HTTP status; None when the
    connection could not be made), a `message` from the service, and whether a retry may help.
    `frame` is the service's Error message when there was one."""

    def __init__(
        self,
        code: int | None,
        message: str,
        retryable: bool,
        frame: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"STT error {code}: {message}" if code is not None else message)
        self.code, self.message, self.retryable, self.frame = code, message, retryable, frame


def classify_close(
    code: int | None, reason: str = "", frame: dict[str, Any] | None = None
) -> SttError | None:
    """Map how a session ended to an SttError (None for a clean 1000/1001 close)."""
    if frame is not None:
        code = frame.get("error_code") if isinstance(frame.get("error_code"), int) else code
    if code in (1000, 1001) and frame is None:
        return None
    message = (frame or {}).get("error") or reason or _DEFAULT_REASONS.get(code or 0, "")
    if not message:
        message = f"connection closed (code {code})"
    return SttError(code, str(message), code in _RETRYABLE, frame)


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 5.0) -> float:
    """Full-jitter exponential backoff for retry `attempt` (1-based)."""
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs request headers (Authorization!) at DEBUG; never let it."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


class _Fields(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Merges fixed fields with each call's own `extra`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


_WS_LOGGER = _QuietLogger(logging.getLogger("realtime.stt.websocket"), {})


class Received(NamedTuple):
    """One upstream message: `raw`, the text frame's bytes exactly as the service sent them
    (UTF-8), and `message`, its parsed form."""

    raw: bytes
    message: dict[str, Any]


class _ReceivedIterator:
    """`SttClient.received()`: the client's inbox as `Received` items."""

    def __init__(self, client: SttClient) -> None:
        self._client = client

    def __aiter__(self) -> _ReceivedIterator:
        return self

    async def __anext__(self) -> Received:
        return await self._client._next()


@dataclass(slots=True)
class _Ended:
    code: int | None
    reason: str
    frame: Received | None
    terminated: bool


# --- the client -------------------------------------------------------------------------------


class SttClient:
    """One streaming session (with transparent reconnects); see the module docstring."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        token: str | None = None,
        params: SttParams | None = None,
        *,
        connect_timeout: float = 5.0,
        reconnect: bool = True,
        max_reconnects: int = 3,
        max_buffer_s: float = 5.0,
        inbox_size: int = 1000,
        terminate_timeout: float = 5.0,
        cancel_grace: float = 1.0,
        close_timeout: float = 2.0,
        log_fields: Mapping[str, object] | None = None,
    ) -> None:
        # `log_fields` (e.g. the service's session_id) go on every line this client logs.
        self.log = _Fields(log, dict(log_fields or {}))
        self.url = url
        self.params = params or SttParams()
        self._api_key, self._token = api_key, token
        self.connect_timeout = connect_timeout
        # a temporary token is single use: a second connection would be refused
        self.reconnect = reconnect and token is None
        self.max_reconnects = max_reconnects
        self.terminate_timeout, self.cancel_grace = terminate_timeout, cancel_grace
        self.close_timeout = close_timeout
        self.session_id: str | None = None
        self.reconnects = 0
        self.dropped_messages = 0
        self._frame_bytes = round(self.params.bytes_per_ms * FRAME_MS)
        self._framer = Framer(self._frame_bytes)
        self._outbox: asyncio.Queue[bytes | str] = asyncio.Queue(
            max(1, int(max_buffer_s * 1000 / FRAME_MS))
        )
        self._pending: bytes | str | None = None  # taken from the outbox, not yet sent
        self._inbox: deque[Received] = deque()
        self._inbox_size = inbox_size
        self._inbox_ready = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._termination = asyncio.Event()
        self._done = asyncio.Event()
        self._failure: SttError | None = None
        self._failure_raised = False
        self._closing = False
        self._terminate_sent = False

    @property
    def _where(self) -> str:
        u = urlsplit(self.url)
        return f"{u.hostname}:{u.port}" if u.port else str(u.hostname)

    # --- connecting ---------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        headers = {"Authorization": self._api_key} if self._api_key else {}
        token = self._token if not self._api_key else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await connect(
                    build_url(self.url, self.params, token),
                    additional_headers=headers,
                    open_timeout=None,  # the asyncio.timeout above is the deadline
                    close_timeout=self.close_timeout,
                    compression=None,
                    max_size=2**22,
                    logger=_WS_LOGGER,
                )
        except InvalidStatus as exc:
            status = exc.response.status_code
            msg = f"handshake rejected by {self._where} (HTTP {status})"
            raise SttError(status, msg, False) from None
        except InvalidURI:
            raise SttError(None, "invalid speech-to-text URL", False) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise SttError(
                None, f"cannot connect to {self._where}: {type(exc).__name__}", True
            ) from None
        self.log.info("stt connected to %s", self._where)
        return ws

    async def _connect_retrying(self, failures: int) -> ClientConnection:
        """Connect, retrying transient failures; `failures` = attempts already used."""
        while True:
            try:
                return await self._connect()
            except SttError as err:
                failures += 1
                if not (err.retryable and self.reconnect and failures <= self.max_reconnects):
                    raise
                delay = backoff_delay(failures)
                self.log.warning("stt %s; retrying in %.2f s (%d)", err, delay, failures)
                await asyncio.sleep(delay)

    async def __aenter__(self) -> SttClient:
        self._ws = await self._connect_retrying(0)
        self._supervisor = asyncio.create_task(self._supervise(), name="stt-supervisor")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.terminate(self.terminate_timeout)
        else:
            await self._abort()

    # --- the connection loop (owned by `_supervisor`) -----------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        try:
            while True:
                assert self._ws is not None
                ended = await self._run_connection(self._ws)
                if ended.terminated:
                    return
                frame = ended.frame
                err = classify_close(ended.code, ended.reason, frame.message if frame else None)
                if err is None:
                    return
                failures += 1
                if self._closing or not (
                    err.retryable and self.reconnect and failures <= self.max_reconnects
                ):
                    self._fail(err, frame)
                    return
                delay = backoff_delay(failures)
                self.log.warning("stt session lost (%s); reconnecting in %.2f s", err, delay)
                await asyncio.sleep(delay)
                try:
                    self._ws = await self._connect_retrying(failures)
                except SttError as exc:
                    self._fail(exc)
                    return
                self.reconnects += 1
        finally:
            self._done.set()
            self._inbox_ready.set()
            self._drain_outbox()

    async def _run_connection(self, ws: ClientConnection) -> _Ended:
        writer = asyncio.create_task(self._writer(ws), name="stt-writer")
        try:
            return await self._reader(ws)
        finally:
            writer.cancel()
            await asyncio.wait([writer])

    async def _reader(self, ws: ClientConnection) -> _Ended:
        frame: Received | None = None
        try:
            async for data in ws:
                if isinstance(data, bytes):
                    continue
                # websockets checked and decoded the UTF-8: encoding it again gives the
                # frame's bytes exactly as they came
                raw = data.encode()
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.log.warning("stt: ignoring a frame that is not JSON")
                    continue
                if not isinstance(msg, dict):
                    continue
                kind = msg.get("type")
                if kind == "Error" or (kind is None and "error" in msg):
                    frame = Received(raw, msg)  # held until the close tells whether we retry
                    continue
                if kind == "Begin":
                    self.session_id = msg.get("id")
                if kind == "Termination":
                    self._termination.set()
                self._deliver(Received(raw, msg))
        except ConnectionClosed:
            pass
        return _Ended(ws.close_code, ws.close_reason or "", frame, self._termination.is_set())

    async def _writer(self, ws: ClientConnection) -> None:
        """Send the outbox in order; audio no faster than real time on this connection."""
        loop = asyncio.get_running_loop()
        start: float | None = None
        sent_s = 0.0
        try:
            while True:
                if self._pending is None:
                    self._pending = await self._outbox.get()
                item = self._pending
                if isinstance(item, bytes):
                    now = loop.time()
                    start = now if start is None else start
                    # The clock starts at the first send, but frames that queued while the
                    # connection opened are that much behind: a little slack lets them catch
                    # up instead of carrying the connect delay for the rest of the session.
                    ahead = start + sent_s - now - PACE_SLACK_S
                    if ahead > 0:  # audio clock ahead of the wall clock
                        await asyncio.sleep(ahead)
                    await ws.send(item)
                    sent_s += len(item) / self.params.bytes_per_ms / 1000.0
                else:
                    await ws.send(item)
                    if item == _TERMINATE:
                        self._terminate_sent = True
                self._pending = None
        except ConnectionClosed:
            return  # the reader sees the close; `_pending` is resent on the next connection

    def _deliver(self, item: Received) -> None:
        if len(self._inbox) >= self._inbox_size:
            victim = next(
                (
                    r
                    for r in self._inbox
                    if r.message.get("type") == "Turn" and not r.message.get("end_of_turn")
                ),
                self._inbox[0],
            )
            self._inbox.remove(victim)
            if self.dropped_messages == 0:
                self.log.warning("stt consumer is slow: dropping old partial transcripts")
            self.dropped_messages += 1
        self._inbox.append(item)
        self._inbox_ready.set()

    def _fail(self, err: SttError, frame: Received | None = None) -> None:
        if frame is not None:
            self._deliver(frame)
        elif err.frame is not None:
            self._deliver(Received(orjson.dumps(err.frame), err.frame))
        self._failure = err
        self.log.warning("stt session failed: %s", err)

    def _drain_outbox(self) -> None:
        # wakes producers blocked in send_audio once nothing will send any more
        while not self._outbox.empty():
            self._outbox.get_nowait()

    # --- the public surface -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing or self._done.is_set():
            raise SttError(None, "speech-to-text session is closed", False)

    async def _put(self, item: bytes | str) -> None:
        self._check_open()
        await self._outbox.put(item)
        if self._failure is not None:
            raise self._failure

    async def send_audio(self, pcm: bytes) -> None:
        """Queue PCM of any length (whole samples); waits while the outbox is full."""
        self._check_open()
        for frame in self._framer.push(pcm):
            await self._put(frame)

    async def _send_json(self, msg: dict[str, Any]) -> None:
        await self._put(orjson.dumps(msg).decode())

    async def update_configuration(self, **fields: Any) -> None:
        """Send UpdateConfiguration with the given fields (None values left out)."""
        body = {k: v for k, v in fields.items() if v is not None}
        await self._send_json({"type": "UpdateConfiguration", **body})

    async def force_endpoint(self) -> None:
        """Ask the service to end the current turn now (after the audio already queued)."""
        await self._send_json({"type": "ForceEndpoint"})

    async def keep_alive(self) -> None:
        await self._send_json({"type": "KeepAlive"})

    def __aiter__(self) -> SttClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return (await self._next()).message

    def received(self) -> AsyncIterator[Received]:
        """Iterate upstream messages as `Received(raw, message)`: the frame's original bytes
        with its parsed form. Ends, and fails, exactly as iterating the client does."""
        return _ReceivedIterator(self)

    async def _next(self) -> Received:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._done.is_set():
                if self._failure is not None and not self._failure_raised:
                    self._failure_raised = True
                    raise self._failure
                raise StopAsyncIteration
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    async def terminate(self, timeout: float = 5.0) -> None:
        """Flush queued audio (the last partial frame padded with silence), send Terminate, wait
        for Termination, close. Gives up waiting after `timeout` seconds and closes anyway."""
        if self._closing:
            await self._shutdown()
            return
        try:
            async with asyncio.timeout(timeout):
                rest = self._framer.flush(pad=True)
                if not self._done.is_set():
                    if rest:
                        await self._put(rest)
                    await self._put(_TERMINATE)
                self._closing = True
                await self._first_of(self._termination, self._done)
        except TimeoutError:
            self.log.warning("stt: no Termination within %.1f s; closing", timeout)
        except SttError:
            pass  # already failed: nothing more to flush
        finally:
            self._closing = True
            await self._shutdown()

    async def _abort(self) -> None:
        """Error or cancellation path: skip queued audio, still send Terminate, briefly."""
        self._closing = True
        self._drain_outbox()
        ws = self._ws
        try:
            async with asyncio.timeout(self.cancel_grace):
                if ws is not None and not self._done.is_set():
                    self._terminate_sent = True
                    await ws.send(_TERMINATE)
                    await self._first_of(self._termination, self._done)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            await self._shutdown()

    @staticmethod
    async def _first_of(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.wait(waiters)

    async def _shutdown(self) -> None:
        ws, sup = self._ws, self._supervisor
        try:
            if ws is not None and not self._terminate_sent and not self._done.is_set():
                # never leave a billed session open: Terminate even if the flush timed out
                self._terminate_sent = True
                try:
                    async with asyncio.timeout(self.cancel_grace):
                        await ws.send(_TERMINATE)
                except (TimeoutError, ConnectionClosed):
                    pass
            if ws is not None:
                await ws.close()  # bounded by close_timeout
        finally:
            if sup is not None and not sup.done():
                sup.cancel()
                await asyncio.wait([sup])
            self._done.set()
            self._inbox_ready.set()


# --- temporary tokens -------------------------------------------------------------------------


async def mint_temporary_token(
    api_key: str,
    *,
    expires_in_seconds: int,
    max_session_duration_seconds: int | None = None,
    base_url: str = "https://streaming.assemblyai.com",
    session: aiohttp.ClientSession | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """GET /v3/token: returns {"token": ..., "expires_in_seconds": N}; SttError on failure.

    Pass the process's shared `session` when there is one; otherwise a short-lived one is used.
    """
    query: dict[str, int] = {"expires_in_seconds": expires_in_seconds}
    if max_session_duration_seconds is not None:
        query["max_session_duration_seconds"] = max_session_duration_seconds
    url = base_url.rstrip("/") + "/v3/token"
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with asyncio.timeout(timeout):
            async with http.get(url, params=query, headers={"Authorization": api_key}) as resp:
                raw = await resp.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        if resp.status != 200 or not isinstance(body, dict) or "token" not in body:
            detail = body.get("error") if isinstance(body, dict) else None
            raise SttError(
                resp.status,
                f"token request failed: {detail or resp.reason}",
                resp.status >= 500 or resp.status == 429,
            )
        return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SttError(None, f"token request failed: {type(exc).__name__}", True) from None
    finally:
        if own:
            await http.close()
