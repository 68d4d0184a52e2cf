"""`python -m realtime serve|demo`: the command line.

Every `serve` flag can also come from the environment (the flag wins), so a container can be
configured without a command line. With neither an API key nor a gateway URL, `serve` starts
the local LLM Gateway emulator in-process and says so in its first log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

from realtime import logs

log = logging.getLogger("realtime.cli")

ENV = {
    "host": "REALTIME_HOST",
    "port": "REALTIME_PORT",
    "gateway_url": "LLM_GATEWAY_URL",
    "api_key": "ASSEMBLYAI_API_KEY",
    "model": "REALTIME_MODEL",
    "auth_token": "REALTIME_AUTH_TOKENS",
    "max_frame_bytes": "REALTIME_MAX_FRAME_BYTES",
    "max_concurrent": "REALTIME_MAX_CONCURRENT",
    "rate_limit": "REALTIME_RATE_LIMIT",
    "region": "LLM_GATEWAY_REGION",
    "auth_scheme": "LLM_GATEWAY_AUTH_SCHEME",
    "log_level": "REALTIME_LOG_LEVEL",
    "write_timeout": "REALTIME_WRITE_TIMEOUT",
    "max_connections": "REALTIME_MAX_CONNECTIONS",
}

SERVE_HELP = """\
Run the realtime service: clients connect to ws://HOST:PORT/v1/realtime, stream AssemblyAI
Universal Streaming v3 turn events, and receive LLM replies streamed token by token.

Every flag can also be set with the environment variable named in its help; the flag wins.
Without --api-key and --gateway-url the service starts a local LLM Gateway emulator
in-process (for trying it out offline) and says so in its first log line.
"""


def _env_default(name: str, fallback: str | None = None) -> str | None:
    return os.environ.get(ENV[name], fallback)


def _int(value: str | None, fallback: int) -> int:
    return int(value) if value not in (None, "") else fallback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime",
        description="Speech-to-text turn events in, streamed LLM replies out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the service",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host",
        default=_env_default("host", "127.0.0.1"),
        help="interface to listen on (REALTIME_HOST; default 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=_int(_env_default("port"), 8080),
        help="TCP port; 0 picks a free one (REALTIME_PORT; default 8080)",
    )
    serve.add_argument(
        "--gateway-url",
        default=_env_default("gateway_url"),
        help="chat-completions base URL, the part before /chat/completions "
        "(LLM_GATEWAY_URL; default AssemblyAI's LLM Gateway for --region)",
    )
    serve.add_argument(
        "--api-key",
        default=_env_default("api_key"),
        help="gateway API key (ASSEMBLYAI_API_KEY); never logged",
    )
    serve.add_argument(
        "--stt-url",
        default=os.environ.get("REALTIME_STT_URL"),
        help="upstream speech-to-text WebSocket for audio clients (REALTIME_STT_URL; default "
        "AssemblyAI's wss://streaming.assemblyai.com/v3/ws with ASSEMBLYAI_API_KEY; without a "
        "key, a local speech-to-text emulator started in-process)",
    )
    serve.add_argument(
        "--region",
        choices=("us", "eu"),
        default=_env_default("region", "us"),
        help="AssemblyAI gateway region when --gateway-url is not given "
        "(LLM_GATEWAY_REGION; default us; EU serves Claude and Gemini only)",
    )
    serve.add_argument(
        "--auth-scheme",
        choices=("raw", "bearer"),
        default=_env_default("auth_scheme", "raw"),
        help="how the key is sent: raw 'Authorization: KEY' as AssemblyAI documents, "
        "or 'Bearer KEY' for other OpenAI-compatible servers "
        "(LLM_GATEWAY_AUTH_SCHEME; default raw)",
    )
    serve.add_argument(
        "--model",
        default=_env_default("model", "gpt-4.1"),
        help="default model for new sessions (REALTIME_MODEL; default gpt-4.1)",
    )
    serve.add_argument(
        "--auth-token",
        action="append",
        default=None,
        metavar="TOKEN",
        help="require clients to present this token (Bearer header or ?token=); "
        "repeat for several (REALTIME_AUTH_TOKENS, comma-separated; "
        "default: auth off)",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=int,
        default=_int(_env_default("max_frame_bytes"), 1024 * 1024),
        help="largest client frame; bigger ones close the connection with 1009 "
        "(REALTIME_MAX_FRAME_BYTES; default 1048576)",
    )
    serve.add_argument(
        "--max-concurrent",
        type=int,
        default=_int(_env_default("max_concurrent"), 512),
        help="cap on concurrent gateway requests across all sessions "
        "(REALTIME_MAX_CONCURRENT; default 512)",
    )
    serve.add_argument(
        "--rate-limit",
        type=int,
        default=_int(_env_default("rate_limit"), 0),
        help="requests per model per minute; requests beyond it wait instead of "
        "drawing a 429 (REALTIME_RATE_LIMIT; default 0 = no limit; the "
        "AssemblyAI gateway allows 30 on paid plans)",
    )
    for phase, default, what in (
        ("connect", 5.0, "to connect to the gateway"),
        ("first-token", 30.0, "from request sent to the first streamed token"),
        ("idle", 30.0, "between two streamed chunks"),
        ("total", 300.0, "for one whole reply"),
    ):
        env = "REALTIME_" + phase.upper().replace("-", "_") + "_TIMEOUT"
        serve.add_argument(
            f"--{phase}-timeout",
            type=float,
            default=float(os.environ.get(env) or default),
            metavar="S",
            help=f"deadline in seconds {what}; a reply that misses it ends with response.failed "
            f"(code gateway_timeout) ({env}; default {default:g})",
        )
    serve.add_argument(
        "--write-timeout",
        type=float,
        default=float(_env_default("write_timeout") or 10.0),
        metavar="S",
        help="a WebSocket client that does not accept queued data within S seconds is "
        "aborted (a viewer is dropped; a participant's live replies are cancelled and their "
        "gateway slots freed) (REALTIME_WRITE_TIMEOUT; default 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=_int(_env_default("max_connections"), 0),
        metavar="N",
        help="WebSocket connections beyond N are refused with 503 over_capacity "
        "(REALTIME_MAX_CONNECTIONS; default 0 = derived from the open-file limit, which "
        "serve raises to its hard limit at start, leaving room for upstream sockets)",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default=os.environ.get("REALTIME_LOOP", "auto"),
        help="event loop: uvloop when installed (pip install 'realtime[fast]'), else asyncio's "
        "(REALTIME_LOOP; default auto)",
    )
    serve.add_argument(
        "--log-level",
        default=_env_default("log_level", "info"),
        choices=("debug", "info", "warning", "error"),
        help="log level (REALTIME_LOG_LEVEL; default info)",
    )

    demo = sub.add_parser(
        "demo",
        help="replay a bundled conversation through the service and print the replies",
        description="Start the service and a local LLM Gateway emulator on loopback, replay a "
        "bundled conversation (AssemblyAI v3 turn events with partials, formatted "
        "finals, pauses and one barge-in) through a real WebSocket client, and print "
        "each user turn and the streamed reply with its time to first token. "
        "No key, no network.",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay speed factor (2 = twice as fast; default 1)",
    )
    demo.add_argument(
        "--token-delay",
        type=float,
        default=0.04,
        help="seconds between the emulated model's words (default 0.04)",
    )
    return parser


def _auth_tokens(values: list[str] | None) -> tuple[str, ...]:
    if values:
        return tuple(v for v in values if v)
    env = os.environ.get(ENV["auth_token"], "")
    return tuple(t.strip() for t in env.split(",") if t.strip())


async def serve(args: argparse.Namespace) -> int:
    from gateway_client import GatewayClient
    from realtime.core.config import SessionConfig
    from realtime.server import Server, ServerSettings, raise_fd_limit

    tokens = _auth_tokens(args.auth_token)
    logs.setup(args.log_level, secrets=[args.api_key or "", *tokens])
    fd_soft, fd_hard = raise_fd_limit()
    emulator = None
    stt_emulator = None
    base_url = args.gateway_url
    api_key = args.api_key
    if not api_key and not base_url:
        from gateway_client.emulator import GatewayEmulator

        log.info("no API key and no gateway URL: starting the local LLM Gateway emulator")
        emulator = GatewayEmulator(host="127.0.0.1", port=0, token_delay=0.03)
        await emulator.start()
        base_url = emulator.base_url
    stt_url = args.stt_url
    if not stt_url and api_key:
        from realtime.stt import stt_url_for_region

        stt_url = stt_url_for_region(None)
    if not stt_url:
        from realtime.emulators.stt import SttEmulator

        stt_emulator = SttEmulator(host="127.0.0.1", port=0)
        await stt_emulator.start()
        stt_url = stt_emulator.url + "/v3/ws"
        log.info("no API key and no --stt-url: audio goes to the local speech-to-text emulator")
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        auth_tokens=tokens,
        max_frame_bytes=args.max_frame_bytes,
        max_concurrent_requests=args.max_concurrent,
        rate_limit_per_minute=args.rate_limit,
        default_config=SessionConfig.from_defaults(model=args.model),
        stt_url=stt_url,
        stt_api_key=api_key,
        write_timeout_s=args.write_timeout,
        max_connections=args.max_connections or None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with GatewayClient(
            base_url=base_url,
            api_key=api_key,
            region=args.region,
            auth_scheme=args.auth_scheme,
            connect_timeout=args.connect_timeout,
            first_token_timeout=args.first_token_timeout,
            idle_timeout=args.idle_timeout,
            total_timeout=args.total_timeout,
            # One pooled connection per admitted request: the global cap is the pool size.
            max_connections=args.max_concurrent,
        ) as gateway:
            server = Server(settings, gateway)
            await server.start()
            # Everything built so far lives as long as the process: keep it out of the
            # collector's full passes, which otherwise grow with it and stall the loop.
            gc.collect()
            gc.freeze()
            log.info(
                "listening on ws://%s:%d/v1/realtime (gateway %s)",
                args.host,
                server.port,
                base_url or "AssemblyAI " + args.region,
                extra={
                    "fd_soft_limit": fd_soft,
                    "fd_hard_limit": fd_hard,
                    "max_connections": server.max_connections,
                    "write_timeout_s": args.write_timeout,
                    "auth": bool(tokens),
                    "model": args.model,
                    "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                },
            )
            await stop.wait()
            log.info("shutting down")
            await server.stop()
    finally:
        if emulator is not None:
            await emulator.stop()
        if stt_emulator is not None:
            await stt_emulator.stop()
    log.info("stopped")
    return 0


def _check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values that cannot work, with the flag's name, before anything starts."""
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    for name in ("max_frame_bytes", "max_concurrent"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.write_timeout <= 0:
        parser.error("--write-timeout must be more than 0 seconds")
    if args.max_connections < 0:
        parser.error("--max-connections must be 0 (derived) or more")
    if args.rate_limit < 0:
        parser.error("--rate-limit must be 0 (off) or more")
    for phase in ("connect", "first_token", "idle", "total"):
        if getattr(args, f"{phase}_timeout") <= 0:
            parser.error(f"--{phase.replace('_', '-')}-timeout must be more than 0 seconds")
    if not args.model.strip():
        parser.error("--model must not be empty")


def _choose_loop(parser: argparse.ArgumentParser, loop: str) -> None:
    if loop == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            parser.error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        _check_serve(parser, args)
        _choose_loop(parser, args.loop)
        try:
            return asyncio.run(serve(args))
        except OSError as exc:
            print(f"error: cannot start the server: {exc}", file=sys.stderr)
            return 2
    if args.command == "demo":
        if args.speed <= 0 or args.token_delay < 0:
            parser.error("--speed must be more than 0 and --token-delay at least 0")
        from realtime.demo import run_demo

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run_demo(speed=args.speed, token_delay=args.token_delay))
        return 130
    return 2  # pragma: no cover - argparse rejects unknown commands
