"""AssemblyAI's official Python SDK, pointed at this service's /v3/ws instead of AssemblyAI.

The SDK streams audio as it would to AssemblyAI; the service relays it to speech-to-text with
its own key and answers each turn through the LLM Gateway, as AssemblyAI's `llm_gateway`
parameter does. Start the service first (`python -m realtime serve`), then:

    python examples/aai_sdk_client.py --wav speech.wav
    python examples/aai_sdk_client.py            # a generated tone: the emulator "hears" a script

Each finished turn is printed as `turn N: ...` and its reply as `reply N: ...`, one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
import wave
from typing import Any

import assemblyai.streaming.v3.client as sdk_client
import numpy as np
from assemblyai.streaming.v3 import (
    LLMGatewayResponseEvent,
    RealTimeError,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
    TurnEvent,
)
from websockets.exceptions import InvalidStatus

from realtime.audio import Framer, read_wav

RATE = 16000
FRAME_S = 0.05  # each frame is 50 ms of audio
REPLY_WAIT_S = 10.0  # after the audio, how long to wait for the replies still due
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

EPILOG = """\
exit status: 0 every turn got its reply; 1 the service refused the connection, could not be
reached, reported an error, closed the session abnormally, or a reply did not come within
10 s of the end of the audio; 2 a bad --host or an unreadable --wav file; 130 interrupted
(Ctrl-C). Every failure is reported as one line on stderr.
"""


class Failure(Exception):
    """A failure to report as one line (`error: ...` on stderr) and exit with `status`."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def refusal(status: int, phrase: str, body: bytes) -> str:
    """The reason a server gave for refusing the upgrade, as one line.

    Understands AssemblyAI's `{"error": "..."}` and this service's
    `{"error": {"code", "message"}}`; anything else is shown as text.
    """
    label, reason = phrase, ""
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            reason = str(error.get("message") or "")
            label = str(error.get("code") or phrase)
        elif isinstance(error, str):
            reason = error
    elif body:
        reason = body.decode("utf-8", "replace")
    head = one_line(f"the service refused the connection (HTTP {status} {label}")
    return one_line(f"{head}): {reason}" if reason.strip() else f"{head})")


def unreachable(url: str, exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        why = f"cannot resolve the host ({exc.strerror or exc})"
    elif isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        why = "connection refused (is the service running? `python -m realtime serve`)"
    elif isinstance(exc, TimeoutError):
        why = "no answer"
    else:
        why = str(exc) or type(exc).__name__
    return one_line(f"cannot connect to {url}: {why}")


class Handshake:
    """Wraps the SDK's connect function to keep what the SDK drops: the refusal's body.

    The SDK reports a refused upgrade only as "WebSocket handshake rejected (HTTP 401)"; the
    service's reason is in the response body, which this keeps for the error line.
    """

    def __init__(self) -> None:
        self.url = ""
        self.error: BaseException | None = None
        self._connect = sdk_client.websocket_connect

    def install(self) -> None:
        sdk_client.websocket_connect = self._wrapped

    def _wrapped(self, uri: str, **kwargs: Any) -> Any:
        self.url = uri.split("?", 1)[0]
        try:
            ws = self._connect(uri, **kwargs)
        except BaseException as exc:
            self.error = exc
            raise
        self.error = None
        return ws

    def failure(self, reported: RealTimeError) -> str:
        exc = self.error
        if isinstance(exc, InvalidStatus):
            r = exc.response
            return refusal(r.status_code, r.reason_phrase, bytes(r.body or b""))
        if isinstance(exc, OSError | TimeoutError):
            return unreachable(self.url, exc)
        return one_line(f"cannot connect to {self.url}: {reported}")


def tone_pcm() -> bytes:
    """Two bursts of tone with pauses: enough for two turns on the local emulator."""
    t = np.arange(int(0.8 * RATE)) / RATE
    burst = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    pause = np.zeros(int(1.6 * RATE), dtype="<i2")
    return np.concatenate([burst, pause, burst, pause]).tobytes()


def load_wav(path: str) -> bytes:
    """The file as 16 kHz mono s16le PCM, or a Failure naming what is wrong with it."""
    try:
        return read_wav(path).astype("<i2").tobytes()
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except (wave.Error, EOFError, ValueError) as exc:
        why = str(exc) or "truncated file"
        raise Failure(f"{path} is not a PCM WAV file this can read: {why}", EXIT_USAGE) from None


class Session:
    """What the SDK's callbacks (on its reader thread) report to the main thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.turns: set[int] = set()  # finished turns, printed
        self.replies: set[int] = set()  # turns whose reply arrived
        self.error: RealTimeError | None = None
        self.ended = False  # the SDK reported the session over (Termination or an error)

    def on_turn(self, _c: object, e: TurnEvent) -> None:
        # With format_turns, a finished turn comes twice: unformatted, then formatted.
        if e.end_of_turn and e.turn_is_formatted:
            print(f"turn {e.turn_order}: {e.transcript}", flush=True)
            with self.changed:
                self.turns.add(e.turn_order)
                self.changed.notify_all()

    def on_reply(self, _c: object, e: LLMGatewayResponseEvent) -> None:
        try:
            text = e.data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = json.dumps(e.data)
        print(f"reply {e.turn_order}: {one_line(str(text), 10_000)}", flush=True)
        with self.changed:
            self.replies.add(e.turn_order)
            self.changed.notify_all()

    def on_error(self, _c: object, e: RealTimeError) -> None:
        with self.changed:
            if self.error is None:
                self.error = e
            self.ended = True
            self.changed.notify_all()

    def on_termination(self, _c: object, _e: object) -> None:
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def failed(self) -> bool:
        with self.lock:
            return self.error is not None

    def wait_for_replies(self, timeout: float) -> list[int]:
        """Wait until every finished turn has its reply; returns the turns still without one."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                missing = sorted(self.turns - self.replies)
                left = deadline - time.monotonic()
                if not missing or self.error is not None or self.ended or left <= 0:
                    return missing
                self.changed.wait(left)


def stream(client: RealTimeTranscriber, session: Session, pcm: bytes) -> None:
    for frame in Framer().push(pcm):
        if session.failed():
            return
        client.stream(frame)
        time.sleep(FRAME_S)  # real time, as AssemblyAI requires


def run(args: argparse.Namespace) -> None:
    scheme = args.host.split("://", 1)[0] if "://" in args.host else None
    if scheme not in (None, "ws", "wss") or not args.host.split("://", 1)[-1].strip("/"):
        raise Failure(f"bad --host {args.host!r}: use ws://HOST:PORT or wss://HOST", EXIT_USAGE)
    pcm = load_wav(args.wav) if args.wav else tone_pcm()
    handshake = Handshake()
    handshake.install()
    session = Session()
    client = RealTimeTranscriber(
        RealTimeTranscriberOptions(api_key=args.token or "none", api_host=args.host.rstrip("/"))
    )
    client.on(RealTimeEvents.Turn, session.on_turn)
    client.on(RealTimeEvents.LLMGatewayResponse, session.on_reply)
    client.on(RealTimeEvents.Error, session.on_error)
    client.on(RealTimeEvents.Termination, session.on_termination)
    params = RealTimeParameters.model_validate(
        {
            "sample_rate": RATE,
            "speech_model": "universal-streaming-english",
            "format_turns": True,
            "llm_gateway": {
                "model": args.model,
                "max_tokens": 300,
                "messages": [{"role": "user", "content": "Answer briefly: {{turn}}"}],
            },
        }
    )
    try:
        client.connect(params)
    except Exception as exc:  # a --host the SDK cannot even try (bad URI)
        raise Failure(one_line(f"bad --host {args.host!r}: {exc}"), EXIT_USAGE) from None
    if session.error is not None:  # the SDK reports a failed handshake as an Error event
        raise Failure(handshake.failure(session.error))
    try:
        stream(client, session, pcm)
        missing = session.wait_for_replies(REPLY_WAIT_S)
    finally:
        client.disconnect(terminate=True)
    if session.error is not None:
        e = session.error
        if e.code in (None, 1006):
            raise Failure("the connection to the service was lost")
        raise Failure(one_line(f"the service ended the session (code {e.code}): {e}"))
    if missing:
        turns = ", ".join(str(t) for t in missing)
        raise Failure(f"no reply within {REPLY_WAIT_S:.0f} s for turn {turns}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="ws://127.0.0.1:8080",
        help="the service, as the SDK's api_host: ws://HOST:PORT (the SDK adds /v3/ws; "
        "a bare HOST:PORT means wss://) (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        help="the service's auth token, if it was started with --auth-token (sent raw in "
        "`Authorization`, as the SDK sends an AssemblyAI key)",
    )
    parser.add_argument(
        "--wav",
        metavar="FILE",
        help="a WAV file to stream in real time (PCM, any rate and channels); default: two "
        "bursts of tone, which the local speech-to-text emulator hears as two turns",
    )
    parser.add_argument(
        "--model",
        default="gpt-4.1",
        help="the LLM Gateway model, passed in AssemblyAI's llm_gateway parameter "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print the SDK's own log lines (connection attempts, closes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sdk_log = logging.getLogger("assemblyai")
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="sdk %(levelname)s %(message)s")
    else:  # its error lines repeat what the one-line report below says
        sdk_log.addHandler(logging.NullHandler())
        sdk_log.propagate = False
    try:
        run(args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
