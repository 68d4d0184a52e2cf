"""Microphone (or a WAV file) -> the service's /v1/realtime -> live captions and streamed replies.

Start the service (`python -m realtime serve`), then:

    python examples/mic_assistant.py              # needs PortAudio: pip install 'realtime[mic]'
    python examples/mic_assistant.py --wav speech.wav

Each finished turn is printed on its own line as `you: ...`, each reply on its own line as
`assistant: ...` as it streams, ending with `[done]`, `[cancelled: reason]` or `[failed: ...]`.
On a terminal the caption of the turn being spoken is shown live and rewritten in place.
Ctrl-C stops the microphone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import wave
from collections.abc import AsyncIterator
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from realtime.audio import AudioDeviceError, Framer, open_microphone, read_wav

FRAME_S = 0.05  # each frame is 50 ms of audio
TAIL_FRAMES = 40  # two seconds of silence after a file, so its last turn ends
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

EPILOG = """\
exit status: 0 the session ended normally; 1 the service refused the connection, could not be
reached, closed it abnormally, sent an error or failed a reply, or no microphone was found;
2 a bad --url or an unreadable --wav file; 130 interrupted (Ctrl-C). Every failure is reported
as one line on stderr.
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

    Understands this service's `{"error": {"code", "message"}}` and AssemblyAI's
    `{"error": "..."}`; anything else is shown as text.
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


def unreachable(url: str, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        why = f"cannot resolve the host ({exc.strerror or exc})"
    elif isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        why = "connection refused (is the service running? `python -m realtime serve`)"
    else:
        why = exc.strerror or str(exc) or type(exc).__name__
    return one_line(f"cannot connect to {url}: {why}")


def load_wav(path: str) -> bytes:
    """The file as 16 kHz mono s16le PCM, or a Failure naming what is wrong with it."""
    try:
        return read_wav(path).astype("<i2").tobytes()
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except (wave.Error, EOFError, ValueError) as exc:
        why = str(exc) or "truncated file"
        raise Failure(f"{path} is not a PCM WAV file this can read: {why}", EXIT_USAGE) from None


async def wav_frames(pcm: bytes) -> AsyncIterator[bytes]:
    for frame in Framer().push(pcm):
        yield frame
        await asyncio.sleep(FRAME_S)  # real time
    for _ in range(TAIL_FRAMES):
        yield bytes(1600)
        await asyncio.sleep(FRAME_S)


class Display:
    """Captions and replies, each on its own line; failures collected for the exit status.

    At most one line is open at a time: a live caption (terminals only, rewritten in place)
    or a streaming reply. Anything else to print closes it first.
    """

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self.open: tuple[str, str] | None = None  # ("caption", turn) or ("reply", response_id)
        self.captioned: set[int] = set()  # turns whose final caption was printed
        self.failures: list[str] = []

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def close_line(self) -> None:
        if self.open is not None:
            self._write("\n")
            self.open = None

    def _reply_line(self, response_id: str) -> None:
        if self.open != ("reply", response_id):
            self.close_line()
            self._write("assistant: ")
            self.open = ("reply", response_id)

    def on_message(self, m: dict[str, Any]) -> str | None:
        """Show one message; returns a fatal reason when the session cannot go on."""
        kind = m.get("type")
        if kind == "Turn":
            self._turn(m)
        elif kind == "response.created":
            self._reply_line(str(m.get("response_id")))
        elif kind == "response.delta":
            self._reply_line(str(m.get("response_id")))
            self._write(str(m.get("delta", "")))
        elif kind == "response.done":
            self._reply_line(str(m.get("response_id")))
            self._write("  [done]")
            self.close_line()
        elif kind == "response.cancelled":
            self._reply_line(str(m.get("response_id")))
            self._write(f"  [cancelled: {m.get('reason')}]")
            self.close_line()
        elif kind == "response.failed":
            message = one_line(str((m.get("error") or {}).get("message", "")))
            self._reply_line(str(m.get("response_id")))
            self._write(f"  [failed: {message}]")
            self.close_line()
            self.failures.append(f"a reply failed: {message}")
        elif kind == "error":
            error = m.get("error") or {}
            return one_line(
                f"the service sent an error ({error.get('code')}): {error.get('message')}"
            )
        return None

    def _turn(self, m: dict[str, Any]) -> None:
        turn = m.get("turn_order")
        text = str(m.get("transcript", ""))
        if not isinstance(turn, int) or turn in self.captioned:
            return  # the formatted copy of a turn already shown
        if m.get("end_of_turn"):
            self.captioned.add(turn)
            if self.open == ("caption", str(turn)):
                self._write("\r\x1b[K")
                self.open = None
            self.close_line()
            self._write(f"you: {text}\n")
        elif self.live and text and self.open in (None, ("caption", str(turn))):
            self._write(f"\r\x1b[Kyou: {text}")
            self.open = ("caption", str(turn))


async def show(ws: ClientConnection, display: Display) -> str | None:
    """Print what the service sends until it closes; returns why the session failed, if it did."""
    try:
        async for frame in ws:
            try:
                message = json.loads(frame)
            except ValueError:
                continue  # not a message of this protocol
            if not isinstance(message, dict):
                continue
            fatal = display.on_message(message)
            if fatal is not None:
                return fatal
    except ConnectionClosed:
        pass
    code, reason = ws.close_code, ws.close_reason
    if code == 1000:
        return None
    if code is None or code == 1006:
        return "the connection to the service was lost"
    return one_line(f"the service closed the connection (code {code}): {reason or 'no reason'}")


async def run(url: str, token: str | None, source: AsyncIterator[bytes], out: Display) -> None:
    try:
        first = await anext(source)  # a missing microphone fails here, before anything starts
    except AudioDeviceError as exc:
        raise Failure(str(exc)) from None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await connect(url, additional_headers=headers, open_timeout=10)
    except InvalidURI as exc:
        raise Failure(f"bad --url: {exc}", EXIT_USAGE) from None
    except InvalidStatus as exc:
        r = exc.response
        raise Failure(refusal(r.status_code, r.reason_phrase, bytes(r.body or b""))) from None
    except InvalidHandshake as exc:
        raise Failure(one_line(f"{url} did not accept a WebSocket: {exc}")) from None
    except TimeoutError:
        raise Failure(f"cannot connect to {url}: no answer within 10 s") from None
    except OSError as exc:
        raise Failure(unreachable(url, exc)) from None
    async with ws:
        reader = asyncio.create_task(show(ws, out))
        try:
            await ws.send(first)
            async for frame in source:
                if reader.done():
                    break  # the service ended the session or reported an error
                await ws.send(frame)
            else:
                await ws.send('{"type": "Termination"}')
        except ConnectionClosed:
            pass  # the reader says why
        except BaseException:
            reader.cancel()
            raise
        fatal = await reader
    out.close_line()
    if fatal is not None:
        raise Failure(fatal)
    if out.failures:
        raise Failure(
            out.failures[0] if len(out.failures) == 1 else f"{len(out.failures)} replies failed"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default="ws://127.0.0.1:8080/v1/realtime",
        help="the service's /v1/realtime endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        help="the service's auth token, if it was started with --auth-token "
        "(sent as `Authorization: Bearer TOKEN`)",
    )
    parser.add_argument(
        "--wav",
        metavar="FILE",
        help="stream this WAV file (PCM, any rate and channels) in real time instead of the "
        "microphone, then two seconds of silence and Termination",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    display = Display(sys.stdout, live=sys.stdout.isatty())
    try:
        source = wav_frames(load_wav(args.wav)) if args.wav else open_microphone()
        asyncio.run(run(args.url, args.token, source, display))
    except Failure as exc:
        display.close_line()
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        display.close_line()
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
