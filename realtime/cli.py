"""`python -m realtime serve|demo`: the command line.

Every `serve` option can also come from an environment variable (the flag wins), so a container
can be configured without a command line. A value from either place goes through the same
parse: a bad one is refused before anything starts, with one line on stderr naming the flag
(and the variable, when the value came from one) and exit status 2. `--help` never reads the
environment, so a broken variable cannot break it.

Start-up rules an operator can rely on:

* Auth cannot be switched off by accident: an empty token (`--auth-token ""`, an empty item in
  `REALTIME_AUTH_TOKENS`) is refused, and a `--host` other than loopback with no token refuses
  to start unless `--allow-unauthenticated` says so (then a warning line says auth is off).
* `--gateway-url` and `--stt-url` must be URLs the clients can use (scheme and host); a gateway
  URL that already ends in `/chat/completions` is refused with the form to use instead.
* `--region eu` keeps audio in the EU too (AssemblyAI's EU streaming host) unless `--stt-url`
  says otherwise, and refuses a model the EU gateway does not serve.
* The first log line names the gateway host, the speech-to-text host, whether auth is on and
  the limits in force. With neither an API key nor a gateway URL, `serve` starts the local LLM
  Gateway emulator in-process (and the speech-to-text emulator without a key or `--stt-url`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from realtime import logs

if TYPE_CHECKING:
    from realtime.server import ServerSettings

log = logging.getLogger("realtime.cli")

SERVE_HELP = """\
Run the realtime service: clients connect to ws://HOST:PORT/v1/realtime, stream AssemblyAI
Universal Streaming v3 turn events, and receive LLM replies streamed token by token.

Every option can also be set with the environment variable named in its help; the flag wins.
A bad value from either is refused at start with the flag's name (and the variable's).
A yes/no variable takes 1, true, yes or on, or 0, false, no or off.
Without --api-key and --gateway-url the service starts a local LLM Gateway emulator
in-process (for trying it out offline) and says so in its first log line.
"""

# Models AssemblyAI's EU gateway serves: Claude and Gemini (reference: LLM Gateway regions).
EU_MODEL_PREFIXES = ("claude-", "gemini-")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# --- value parsers: one per kind of value, shared by a flag and its variable ------------------

Parse = Callable[[str], Any]


def _bad(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def _whole(low: int, high: int | None = None, *, rule: str) -> Parse:
    """A whole number in [low, high]; `rule` says so in the error ("a whole number from ...")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _bad(f"must be {rule}, not {text!r}")
        if value < low or (high is not None and value > high):
            _bad(f"must be {rule}, not {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        _bad(f"must be a number of seconds more than 0, not {text!r}")
    return value


def _choice(*names: str) -> Parse:
    """One of `names`, in any case ("DEBUG" is "debug")."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in names:
            _bad(f"must be one of {', '.join(names)}, not {text!r}")
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip():
        _bad("must not be empty")
    return text.strip()


def _host(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text.strip()):
        _bad(f"must be a host name or address, not {text!r}")
    return text.strip()


def _api_key(text: str) -> str:
    # The value is never echoed: it is a secret.
    if not text.strip():
        _bad("must not be empty (leave it unset to use the local emulators)")
    if any(c.isspace() for c in text.strip()):
        _bad("must not contain whitespace")
    return text.strip()


def _token(text: str) -> str:
    # The value is never echoed: it is a secret. An empty token would switch auth off.
    if not text.strip():
        _bad("a token must not be empty (an empty token would switch auth off)")
    if any(c.isspace() for c in text):
        _bad("a token must not contain whitespace")
    return text


def _token_list(text: str) -> tuple[str, ...]:
    """`REALTIME_AUTH_TOKENS`: comma-separated tokens, none of them empty."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        _bad(
            "an empty token in the comma-separated list (an empty token would switch auth off); "
            "unset the variable to run without auth"
        )
    return tuple(_token(item) for item in items)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return _bad(f"must be one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, not {text!r}")


def _url(text: str, schemes: tuple[str, ...], example: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme.lower() not in schemes or not parts.hostname:
        _bad(
            f"must be a URL starting {' or '.join(s + '://' for s in schemes)}, "
            f"such as {example}, not {text!r}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        _bad(f"has a port that is not a number from 0 to 65535: {text!r}")
    if parts.query or parts.fragment:
        _bad(f"must not have a query (?...) or a fragment (#...): {text!r}")
    return text.strip()


def _gateway_url(text: str) -> str:
    url = _url(text, ("http", "https"), "https://llm-gateway.assemblyai.com/v1")
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        base = urlunsplit(parts._replace(path=path.removesuffix("/chat/completions")))
        _bad(f"give the base URL, the part before /chat/completions: {base}, not {text!r}")
    return url.rstrip("/")


def _stt_url(text: str) -> str:
    return _url(text, ("ws", "wss"), "wss://streaming.assemblyai.com/v3/ws")


def _redis_url(text: str) -> str:
    return _url(text, ("redis", "rediss"), "redis://127.0.0.1:6379/0")


# --- a parser whose options may also come from the environment --------------------------------


@dataclass(frozen=True, slots=True)
class _FromEnv:
    flag: str
    env: str
    parse: Parse
    default: Any


class _Parser(argparse.ArgumentParser):
    """argparse, plus: `option()` adds a flag backed by an environment variable, read after the
    command line with the same parse; `checks` run on the result; errors are one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.from_env: dict[str, _FromEnv] = {}
        self.checks: list[Callable[[_Parser, argparse.Namespace], None]] = []

    def option(
        self,
        flag: str,
        *,
        env: str,
        help: str,
        parse: Parse | None = None,
        default: Any = None,
        shown: str | None = None,
        env_parse: Parse | None = None,
        **kwargs: Any,
    ) -> None:
        """Add `flag` (default None: "not given") and remember where else its value may come
        from: `env`, parsed by `env_parse` (default `parse`), else `default`."""
        if parse is not None:
            kwargs["type"] = parse
        shown = shown if shown is not None else str(default)
        action = self.add_argument(
            flag, default=None, help=f"{help} ({env}; default {shown})", **kwargs
        )
        self.from_env[action.dest] = _FromEnv(flag, env, env_parse or parse or str, default)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        for dest, option in self.from_env.items():
            if getattr(ns, dest, None) is None:  # the flag was not given
                setattr(ns, dest, self._from_env(option))
        for check in self.checks:
            check(self, ns)
        return ns, rest

    def _from_env(self, option: _FromEnv) -> Any:
        raw = os.environ.get(option.env)
        if raw is None:
            return option.default
        try:
            return option.parse(raw)
        except argparse.ArgumentTypeError as exc:
            self.error(f"argument {option.flag} (from {option.env}): {exc}")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    assert isinstance(serve, _Parser)
    _serve_options(serve)
    serve.checks += [_check_auth, _check_region, _check_loop]

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
    demo.add_argument(
        "--meeting",
        action="store_true",
        help="replay a scripted three-speaker meeting with the summary preset instead, "
        "printing the rolling summary as it updates",
    )
    return parser


def serve_variables() -> dict[str, str]:
    """Each `serve` flag and the environment variable it may also come from."""
    parser = _Parser(add_help=False)
    _serve_options(parser)
    return {option.flag: option.env for option in parser.from_env.values()}


def _serve_options(serve: _Parser) -> None:
    serve.option(
        "--host",
        env="REALTIME_HOST",
        parse=_host,
        default="127.0.0.1",
        help="interface to listen on; any other than loopback needs --auth-token "
        "or --allow-unauthenticated",
    )
    serve.option(
        "--port",
        env="REALTIME_PORT",
        parse=_whole(0, 65535, rule="a whole number from 0 to 65535"),
        default=8080,
        metavar="P",
        help="TCP port; 0 picks a free one",
    )
    serve.option(
        "--gateway-url",
        env="LLM_GATEWAY_URL",
        parse=_gateway_url,
        metavar="URL",
        shown="AssemblyAI's LLM Gateway for --region",
        help="chat-completions base URL, the part before /chat/completions, "
        "e.g. https://llm-gateway.assemblyai.com/v1",
    )
    serve.option(
        "--api-key",
        env="ASSEMBLYAI_API_KEY",
        parse=_api_key,
        metavar="KEY",
        shown="none: the local emulators",
        help="AssemblyAI API key, for the gateway and speech-to-text; never logged",
    )
    serve.option(
        "--stt-url",
        env="REALTIME_STT_URL",
        parse=_stt_url,
        metavar="URL",
        shown="AssemblyAI's wss://streaming.assemblyai.com/v3/ws with an API key, "
        "wss://streaming.eu.assemblyai.com/v3/ws with --region eu; without a key, a local "
        "speech-to-text emulator started in-process",
        help="upstream speech-to-text WebSocket for audio clients",
    )
    serve.option(
        "--region",
        env="LLM_GATEWAY_REGION",
        parse=_choice("us", "eu"),
        default="us",
        metavar="{us,eu}",
        help="AssemblyAI data zone: the gateway when --gateway-url is not given, and "
        "speech-to-text when --stt-url is not given; EU serves Claude and Gemini models only",
    )
    serve.option(
        "--auth-scheme",
        env="LLM_GATEWAY_AUTH_SCHEME",
        parse=_choice("raw", "bearer"),
        default="raw",
        metavar="{raw,bearer}",
        help="how the key is sent: raw 'Authorization: KEY' as AssemblyAI documents, "
        "or 'Bearer KEY' for other OpenAI-compatible servers",
    )
    serve.option(
        "--model",
        env="REALTIME_MODEL",
        parse=_text,
        default="gpt-4.1",
        metavar="M",
        help="default model for new sessions",
    )
    serve.option(
        "--auth-token",
        env="REALTIME_AUTH_TOKENS",
        parse=_token,
        env_parse=_token_list,
        default=(),
        action="append",
        metavar="TOKEN",
        shown="none: auth off, allowed on loopback only",
        help="require clients to present this token (Bearer header or ?token=); repeat for "
        "several (the variable: comma-separated); an empty token is refused",
    )
    serve.option(
        "--allow-unauthenticated",
        env="REALTIME_ALLOW_UNAUTHENTICATED",
        env_parse=_boolean,
        default=False,
        action=argparse.BooleanOptionalAction,
        shown="off",
        help="let a --host other than loopback run without --auth-token (logged as a warning)",
    )
    serve.option(
        "--public-metrics",
        env="REALTIME_PUBLIC_METRICS",
        env_parse=_boolean,
        default=False,
        action=argparse.BooleanOptionalAction,
        shown="off",
        help="serve /metrics without a token even when auth is on (/healthz never needs one)",
    )
    serve.option(
        "--v3-default-llm",
        env="REALTIME_V3_DEFAULT_LLM",
        env_parse=_boolean,
        default=False,
        action=argparse.BooleanOptionalAction,
        shown="off",
        help="/v3/ws clients that pass no llm_gateway get LLM replies from the default model "
        "and preset (for clients that cannot pass it, such as Pipecat's AssemblyAI service)",
    )
    serve.option(
        "--max-frame-bytes",
        env="REALTIME_MAX_FRAME_BYTES",
        parse=_whole(1, rule="a whole number, 1 or more"),
        default=1024 * 1024,
        metavar="N",
        help="largest client frame; bigger ones close the connection with 1009",
    )
    serve.option(
        "--max-concurrent",
        env="REALTIME_MAX_CONCURRENT",
        parse=_whole(1, rule="a whole number, 1 or more"),
        default=512,
        metavar="N",
        help="cap on concurrent gateway requests across all sessions",
    )
    serve.option(
        "--rate-limit",
        env="REALTIME_RATE_LIMIT",
        parse=_whole(0, rule="a whole number, 0 (no limit) or more"),
        default=0,
        metavar="N",
        shown="0 = no limit; the AssemblyAI gateway allows 30 on paid plans",
        help="requests per model per minute; requests beyond it wait instead of drawing a 429",
    )
    serve.option(
        "--redis-url",
        env="REDIS_URL",
        parse=_redis_url,
        metavar="URL",
        shown="none: this node's limits are its own",
        help="cluster mode: nodes given the same Redis share the per-model --rate-limit windows "
        "(--max-concurrent stays per node); while Redis does not answer, each node falls back "
        "to its own windows",
    )
    for phase, default, what in (
        ("connect", 5.0, "to connect to the gateway"),
        ("first-token", 30.0, "from request sent to the first streamed token"),
        ("idle", 30.0, "between two streamed chunks"),
        ("total", 300.0, "for one whole reply"),
    ):
        serve.option(
            f"--{phase}-timeout",
            env="REALTIME_" + phase.upper().replace("-", "_") + "_TIMEOUT",
            parse=_seconds,
            default=default,
            shown=f"{default:g}",
            metavar="S",
            help=f"deadline in seconds {what}; a reply that misses it ends with "
            "response.failed (code gateway_timeout)",
        )
    serve.option(
        "--write-timeout",
        env="REALTIME_WRITE_TIMEOUT",
        parse=_seconds,
        default=10.0,
        shown="10",
        metavar="S",
        help="a WebSocket client that does not accept queued data within S seconds is "
        "aborted (a viewer is dropped; a participant's live replies are cancelled and their "
        "gateway slots freed)",
    )
    serve.option(
        "--max-connections",
        env="REALTIME_MAX_CONNECTIONS",
        parse=_whole(0, rule="a whole number, 0 (derived) or more"),
        default=0,
        metavar="N",
        shown="0 = derived from the open-file limit, which serve raises to its hard limit at "
        "start, leaving room for upstream sockets",
        help="WebSocket connections beyond N are refused with 503 over_capacity",
    )
    serve.option(
        "--loop",
        env="REALTIME_LOOP",
        parse=_choice("auto", "asyncio", "uvloop"),
        default="auto",
        metavar="{auto,asyncio,uvloop}",
        shown="auto: uvloop where installed (a dependency on Linux and macOS), else asyncio's",
        help="event loop",
    )
    serve.option(
        "--log-level",
        env="REALTIME_LOG_LEVEL",
        parse=_choice("debug", "info", "warning", "error"),
        default="info",
        metavar="{debug,info,warning,error}",
        help="log level, in any case",
    )


# --- checks across options, run at parse time --------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach ("localhost", 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _check_auth(parser: _Parser, args: argparse.Namespace) -> None:
    if args.auth_token or args.allow_unauthenticated or is_loopback(args.host):
        return
    parser.error(
        f"--host {args.host} accepts connections from other machines, and no --auth-token "
        "(REALTIME_AUTH_TOKENS) is set: set one, or pass --allow-unauthenticated "
        "(REALTIME_ALLOW_UNAUTHENTICATED=1) to run without auth on purpose"
    )


def uses_eu_gateway(args: argparse.Namespace) -> bool:
    """The replies come from AssemblyAI's EU gateway (or the emulator standing in for it)."""
    if args.gateway_url is None:
        return bool(args.region == "eu")
    from gateway_client.client import REGION_URLS

    url: str = args.gateway_url
    return urlsplit(url).hostname == urlsplit(REGION_URLS["eu"]).hostname


def _check_region(parser: _Parser, args: argparse.Namespace) -> None:
    if uses_eu_gateway(args) and not args.model.lower().startswith(EU_MODEL_PREFIXES):
        chosen_by = (
            f"--gateway-url {args.gateway_url}"
            if args.gateway_url
            else "--region eu, LLM_GATEWAY_REGION"
        )
        parser.error(
            f"--model {args.model} (REALTIME_MODEL) is not served by AssemblyAI's EU gateway "
            f"({chosen_by}), which serves Claude and Gemini models only: choose one such as "
            "claude-sonnet-4-6, or use the US gateway"
        )


def _check_loop(parser: _Parser, args: argparse.Namespace) -> None:
    if args.loop == "uvloop" and _uvloop_factory() is None:
        parser.error("--loop uvloop (REALTIME_LOOP): uvloop is not installed (pip install uvloop)")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# --- serve --------------------------------------------------------------------------------------


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or url


def gateway_url(args: argparse.Namespace) -> str | None:
    """Where replies come from: --gateway-url, else AssemblyAI's gateway for --region when
    there is an API key; None: the local LLM Gateway emulator."""
    from gateway_client.client import REGION_URLS

    if args.gateway_url:
        return str(args.gateway_url)
    return REGION_URLS[args.region] if args.api_key else None


def upstream_stt_url(args: argparse.Namespace) -> str | None:
    """Where audio goes: --stt-url, else AssemblyAI's streaming host when there is an API key
    (edge-routed, or the EU host with --region eu); None: the local speech-to-text emulator."""
    from realtime.stt import stt_url_for_region

    if args.stt_url:
        return str(args.stt_url)
    return stt_url_for_region("eu" if args.region == "eu" else None) if args.api_key else None


def server_settings(
    args: argparse.Namespace, *, stt_url: str, max_connections: int
) -> ServerSettings:
    """The `ServerSettings` the options describe."""
    from realtime.core.config import SessionConfig
    from realtime.server import ServerSettings

    return ServerSettings(
        host=args.host,
        port=args.port,
        auth_tokens=tuple(args.auth_token),
        max_frame_bytes=args.max_frame_bytes,
        max_concurrent_requests=args.max_concurrent,
        rate_limit_per_minute=args.rate_limit,
        default_config=SessionConfig.from_defaults(model=args.model),
        stt_url=stt_url,
        stt_api_key=args.api_key,
        write_timeout_s=args.write_timeout,
        max_connections=max_connections,
        v3_default_llm=args.v3_default_llm,
        public_metrics=args.public_metrics,
        redis_url=args.redis_url,
        model_prefixes=EU_MODEL_PREFIXES if uses_eu_gateway(args) else (),
    )


def _log_start(args: argparse.Namespace, max_connections: int, fds: tuple[int, int]) -> None:
    """The first line: where replies and audio go, whether auth is on, the limits in force."""
    gateway, stt = gateway_url(args), upstream_stt_url(args)
    tokens = len(args.auth_token)
    fields = {
        "gateway_host": _host_of(gateway) if gateway else "local emulator",
        "stt_host": _host_of(stt) if stt else "local emulator",
        "auth": bool(tokens),
        "auth_tokens": tokens,
        "max_connections": max_connections,
        "write_timeout_s": args.write_timeout,
        "max_concurrent_requests": args.max_concurrent,
        "rate_limit_per_minute": args.rate_limit,
        "region": args.region,
        "model": args.model,
        "public_metrics": args.public_metrics,
        "v3_default_llm": args.v3_default_llm,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "fd_soft_limit": fds[0],
        "fd_hard_limit": fds[1],
    }
    log.info(
        "starting: gateway %s, speech-to-text %s, auth %s; limits: %d connections, "
        "write timeout %gs, %d concurrent gateway requests, %s",
        fields["gateway_host"] if gateway else "local emulator (no API key, no --gateway-url)",
        fields["stt_host"] if stt else "local emulator (no API key, no --stt-url)",
        f"on ({tokens} token{'s' if tokens != 1 else ''})" if tokens else "off",
        max_connections,
        args.write_timeout,
        args.max_concurrent,
        f"{args.rate_limit} requests per model per minute" if args.rate_limit else "no rate limit",
        extra=fields,
    )
    if not tokens and not is_loopback(args.host):
        log.warning(
            "auth is off on %s (--allow-unauthenticated): anyone who can reach it can use "
            "the service",
            args.host,
            extra={"auth": False, "host": args.host},
        )


async def serve(args: argparse.Namespace) -> int:
    from gateway_client import GatewayClient
    from realtime.server import Server, default_max_connections, raise_fd_limit

    logs.setup(args.log_level, secrets=[args.api_key or "", *args.auth_token])
    fds = raise_fd_limit()
    max_connections = args.max_connections or default_max_connections()
    _log_start(args, max_connections, fds)
    base_url, stt_url = args.gateway_url, upstream_stt_url(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if gateway_url(args) is None:
            from gateway_client.emulator import GatewayEmulator

            emulator = GatewayEmulator(host="127.0.0.1", port=0, token_delay=0.03)
            base_url = (await stack.enter_async_context(emulator)).base_url
        if stt_url is None:
            from realtime.emulators.stt import SttEmulator

            stt_emulator = SttEmulator(host="127.0.0.1", port=0)
            stt_url = (await stack.enter_async_context(stt_emulator)).url + "/v3/ws"
        gateway = await stack.enter_async_context(
            GatewayClient(
                base_url=base_url,
                api_key=args.api_key,
                region=args.region,
                auth_scheme=args.auth_scheme,
                connect_timeout=args.connect_timeout,
                first_token_timeout=args.first_token_timeout,
                idle_timeout=args.idle_timeout,
                total_timeout=args.total_timeout,
                # One pooled connection per admitted request: the global cap is the pool size.
                max_connections=args.max_concurrent,
            )
        )
        server = Server(
            server_settings(args, stt_url=stt_url, max_connections=max_connections), gateway
        )
        await server.start()
        stack.push_async_callback(server.stop)  # first out: before the gateway pool closes
        # Everything built so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise grow with it and stall the loop.
        gc.collect()
        gc.freeze()
        log.info(
            "listening on ws://%s:%d/v1/realtime (gateway %s)",
            args.host,
            server.port,
            base_url or gateway.base_url,
            extra={"port": server.port},
        )
        await stop.wait()
        log.info("shutting down")
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        factory = None if args.loop == "asyncio" else _uvloop_factory()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(serve(args))
        except OSError as exc:
            print(
                f"python -m realtime serve: error: cannot start the server: {exc}", file=sys.stderr
            )
            return 2
    if args.command == "demo":
        if args.speed <= 0 or args.token_delay < 0:
            parser.error("--speed must be more than 0 and --token-delay at least 0")
        from realtime.demo import run_demo

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(
                run_demo(speed=args.speed, token_delay=args.token_delay, meeting=args.meeting)
            )
        return 130
    return 2  # pragma: no cover - argparse rejects unknown commands
