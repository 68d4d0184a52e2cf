"""Command line of the LLM Gateway emulator: ``python -m gateway_client.emulator --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import orjson

from gateway_client.emulator.server import GatewayEmulator
from gateway_client.jsonlog import setup


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway_client.emulator",
        description="Run a local emulator of AssemblyAI's LLM Gateway (OpenAI-style chat "
        "completions, JSON or SSE) on this machine. Point the openai SDK at "
        "http://HOST:PORT/v1, the assemblyai SDK at http://HOST:PORT.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port to listen on (0 = any free port)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accepted API key (repeatable); without one, auth is not checked",
    )
    p.add_argument(
        "--transcripts",
        type=Path,
        metavar="FILE.json",
        help='JSON object {"transcript_id": "text", ...} for transcript_id requests',
    )
    p.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds between streamed words (default 0)",
    )
    p.add_argument(
        "--first-token-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds before the first chunk or the JSON answer (default 0)",
    )
    p.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help="requests per model per 60-second window (default: no limit)",
    )
    p.add_argument(
        "--reply-words",
        type=int,
        default=None,
        metavar="N",
        help="pad every reply with filler words up to N words",
    )
    p.add_argument(
        "--stream-only-openai",
        action="store_true",
        help="answer stream requests for non-OpenAI models with plain JSON",
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    transcripts = orjson.loads(args.transcripts.read_bytes()) if args.transcripts else None
    emulator = GatewayEmulator(
        host=args.host,
        port=args.port,
        api_keys=args.api_key,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        rate_limit=args.rate_limit,
        transcripts=transcripts,
        reply_words=args.reply_words,
        stream_only_openai=args.stream_only_openai,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    async with emulator:
        await stop.wait()  # Ctrl-C or SIGTERM: stop cleanly, finishing the runner


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m gateway_client.emulator``."""
    args = _parser().parse_args(argv)
    setup("info", args.api_key)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
