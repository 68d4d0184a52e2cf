"""Shared helpers for the benchmarks in bench/: statistics, processes, the docs page.

Also a tiny launcher for the service under test, so a benchmark can choose the event loop and
wrap the service in cProfile without touching the service's code:

    python bench/_common.py [--uvloop] [--profile OUT.prof] [--gc-threshold N] -- serve ...

runs exactly ``python -m realtime serve ...`` (``realtime.cli.main``), with uvloop's event loop
policy installed first when asked, and cProfile around it when asked (the stats are written
when the service exits after SIGTERM, which the CLI handles gracefully). ``--gc-threshold N``
is a what-if: the service's generation-0 collection threshold (Python's default is 700). The
launcher also times every garbage collection in the service and writes a summary line to its
stderr at exit (see ``gc_summary``).

``python bench/_common.py bare-ws --port P`` runs a bare aiohttp WebSocket server (accept,
read until close, nothing else): the floor for the service's memory per idle connection.
``python bench/_common.py bare-relay --port P --gateway-url URL [--uvloop]`` runs a minimal
WebSocket-to-gateway relay: the floor for the service's added latency and relay.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---- statistics ------------------------------------------------------------------------------


def pctl(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass(slots=True)
class Sample:
    """Latencies in milliseconds for one figure on one side (service or direct)."""

    values: list[float] = field(default_factory=list)

    def add_s(self, seconds: float) -> None:
        self.values.append(seconds * 1000.0)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def p50(self) -> float:
        return pctl(self.values, 0.50)

    @property
    def p99(self) -> float:
        return pctl(self.values, 0.99)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def peak_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = cur = 0
    for _, step in events:
        cur += step
        peak = max(peak, cur)
    return peak


# ---- this process ----------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def install_loop(want_uvloop: bool) -> str:
    """Install uvloop's policy when wanted and available; return the loop's name."""
    if want_uvloop:
        try:
            import uvloop
        except ImportError:
            return "asyncio (uvloop not installed)"
        import asyncio
        from importlib.metadata import version

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return f"uvloop {version('uvloop')}"
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- another process -------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    rest = text[text.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


@dataclass(slots=True)
class ServiceProcess:
    """A child process serving HTTP on 127.0.0.1:port; `command` is how it was started."""

    proc: subprocess.Popen[bytes]
    port: int
    command: list[str]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _wait_http(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before serving")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def spawn(
    args: Sequence[str], port: int, ready_path: str, log_path: Path, timeout: float = 30.0
) -> Iterator[ServiceProcess]:
    """Start ``python bench/_common.py ARGS``; wait for GET ready_path; SIGTERM it at the end."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
    handle = ServiceProcess(proc, port, command, log_path)
    try:
        try:
            _wait_http(proc, f"http://127.0.0.1:{port}{ready_path}", timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends with:\n{handle.log_tail()}") from None
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def service_args(
    port: int,
    gateway_url: str,
    *,
    uvloop: bool,
    profile: str | None,
    gc_threshold: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Launcher arguments for ``python -m realtime serve`` on 127.0.0.1:port."""
    args = ["--uvloop"] if uvloop else []
    if profile:
        args += ["--profile", profile]
    if gc_threshold:
        args += ["--gc-threshold", str(gc_threshold)]
    return [
        *args,
        "--",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gateway-url",
        gateway_url,
        *extra,
    ]


# ---- docs/benchmarks.md ----------------------------------------------------------------------


def write_docs_section(
    path: Path, heading: str, intro: str, generated: str, label: str = "figures"
) -> None:
    """Put `generated` between the markers named `label` in section `heading`.

    What is missing (the page, the section, the markers) is created. Text of the section
    outside the markers (hand-written notes), other labels' blocks and every other section of
    the page are left as they are.
    """
    begin = f"<!-- bench/latency.py {label}: generated, begin -->"
    end_marker = f"<!-- bench/latency.py {label}: generated, end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{generated.rstrip()}\n{end_marker}"
    start = text.find(f"\n{heading}\n")
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{intro.rstrip()}\n\n{block}\n"
    else:
        nxt = text.find("\n## ", start + len(heading) + 2)
        end = len(text) if nxt < 0 else nxt
        section = text[start:end]
        if begin in section and end_marker in section:
            a = section.index(begin)
            b = section.index(end_marker) + len(end_marker)
            section = section[:a] + block + section[b:]
        else:
            section = section.rstrip("\n") + f"\n\n{block}\n"
        text = text[:start] + section + text[end:]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- launcher (runs in the child process) ----------------------------------------------------


def _bare_ws(port: int) -> None:
    import asyncio

    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str('{"type":"session.created"}')
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/healthz", health)
    app.router.add_get("/v1/realtime", ws_handler)
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, access_log=None, loop=asyncio.new_event_loop()
    )


def _bare_relay(port: int, gateway_url: str) -> None:
    """The floor for (a) and (b): a WebSocket-to-gateway relay with nothing else in it.

    Speaks just enough of /v1/realtime for bench/latency.py's clients: session.created,
    session.updated, and for each final Turn one streamed POST whose content chunks go out as
    response.delta frames, then response.done. No policy, context, limits, validation, retries,
    deadlines, logging or metrics.
    """
    import asyncio

    import aiohttp
    import orjson
    from aiohttp import WSMsgType, web

    chat_url = gateway_url.rstrip("/") + "/chat/completions"
    dumps, loads = orjson.dumps, orjson.loads

    async def main() -> None:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def relay(ws: web.WebSocketResponse, order: int, text: str) -> None:
            msg = {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}]}
            body = dumps({**msg, "stream": True})
            await ws.send_frame(dumps({"type": "response.created", "turn_order": order}),
                                WSMsgType.TEXT)  # fmt: skip
            headers = {"Content-Type": "application/json"}
            async with http.post(chat_url, data=body, headers=headers) as resp:
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    choices = loads(payload).get("choices")
                    delta = choices[0].get("delta", {}).get("content") if choices else None
                    if delta:
                        frame = {"type": "response.delta", "turn_order": order, "delta": delta}
                        await ws.send_frame(dumps(frame), WSMsgType.TEXT)
            await ws.send_frame(dumps({"type": "response.done", "turn_order": order}),
                                WSMsgType.TEXT)  # fmt: skip

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str('{"type":"session.created"}')
            async with asyncio.TaskGroup() as tg:
                async for frame in ws:
                    if frame.type != WSMsgType.TEXT:
                        continue
                    m = loads(frame.data)
                    kind = m.get("type")
                    if kind == "session.update":
                        await ws.send_str('{"type":"session.updated"}')
                    elif kind == "Turn" and m.get("end_of_turn"):
                        tg.create_task(relay(ws, m["turn_order"], m["transcript"]))
            return ws

        app = web.Application()
        app.router.add_get("/healthz", health)
        app.router.add_get("/v1/realtime", ws_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await http.close()

    asyncio.run(main())


GC_MARK = "bench-gc-pauses"


def _watch_gc() -> dict[str, list[float]]:
    """Record every collection's pause by generation: {gen: [count, total ms, max ms]}."""
    import gc

    pauses: dict[str, list[float]] = {str(g): [0, 0.0, 0.0] for g in range(3)}
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000.0
        entry = pauses[str(info["generation"])]
        entry[0] += 1
        entry[1] += ms
        entry[2] = max(entry[2], ms)

    gc.callbacks.append(callback)
    return pauses


def gc_summary(log_path: Path) -> str | None:
    """The service's collection pauses, from the line the launcher writes at exit."""
    with contextlib.suppress(OSError):
        for line in reversed(log_path.read_text(errors="replace").splitlines()):
            if line.startswith(GC_MARK):
                data = json.loads(line[len(GC_MARK) :])
                return ", ".join(
                    f"gen{g}: {int(c)} collections, total {t:.0f} ms, longest {m:.1f} ms"
                    for g, (c, t, m) in sorted(data.items())
                )
    return None


def _launch(argv: list[str]) -> int:
    if argv[:1] == ["bare-ws"]:
        _bare_ws(int(argv[argv.index("--port") + 1]))
        return 0
    if argv[:1] == ["bare-relay"]:
        install_loop("--uvloop" in argv)
        _bare_relay(int(argv[argv.index("--port") + 1]), argv[argv.index("--gateway-url") + 1])
        return 0
    sep = argv.index("--")
    opts, cli_args = argv[:sep], argv[sep + 1 :]
    install_loop("--uvloop" in opts)
    sys.path.insert(0, str(REPO))
    pauses = _watch_gc()
    if "--gc-threshold" in opts:
        # What-if only (bench flag --service-gc): collect young objects less often.
        import gc

        gc.set_threshold(int(opts[opts.index("--gc-threshold") + 1]), 50, 1_000)
    # Imported by name: the service is run here, not type-checked as part of the bench.
    main = importlib.import_module("realtime.cli").main
    try:
        if "--profile" not in opts:
            return int(main(cli_args))
        import cProfile

        out = opts[opts.index("--profile") + 1]
        profiler = cProfile.Profile()
        try:
            return int(profiler.runcall(main, cli_args))
        finally:
            profiler.dump_stats(out)
    finally:
        sys.stderr.write(f"{GC_MARK} {json.dumps(pauses)}\n")


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
