"""Latency, relay and memory of the realtime service, next to a plain client of the gateway.

What is measured (each service figure beside the same figure for a plain aiohttp client that
talks to the gateway emulator directly, measured in the same run, interleaved round by round):

(a) added latency: the client sends a final ``Turn`` -> the chat request arrives at the gateway
    (the emulator's ``arrived_at``); direct: the client starts its POST -> arrival.
(b) relay: the gateway wrote a chunk (``chunk_times``) -> the client received the
    ``response.delta`` for it; direct: the chunk was written -> its SSE line was parsed.
(c) barge-in: the client sends a barge-in (alternately ``SpeechStarted`` and a one-word partial
    ``Turn`` of the next turn) -> the gateway saw the upstream connection close
    (``disconnected_at``); direct: the client closes its response -> ``disconnected_at``.
(d) (b) with 100 and with 1,000 concurrent sessions (vs as many concurrent direct streams);
    the 1,000-session run streams 10 tokens/s per session.
(e) RSS per idle session: VmRSS of the service process before/after opening N idle sessions,
    next to a bare aiohttp WebSocket server holding as many idle connections.

Process layout (three processes, so no client sits in the process it is measured against):
the service in its own process (``python -m realtime serve --gateway-url
http://127.0.0.1:EMU/v1``, started through ``bench/_common.py`` so uvloop and cProfile can be
chosen without touching the service); the gateway emulator in *this driver process*, so its
records (``arrived_at``, ``chunk_times``, ``disconnected_at``) are read directly; every client,
of the service and of the gateway alike, in a *load worker* process (``latency.py
--load-worker``) driven by JSON lines on its stdin. Every timestamp is ``time.perf_counter()``
(CLOCK_MONOTONIC on Linux, comparable across processes). Each phase gets a fresh emulator,
service process and load worker. Run from the repository root:

    python bench/latency.py                 # everything, about 3-4 minutes
    python bench/latency.py --quick         # smaller, about 1 minute
    python bench/latency.py --write-docs    # also update docs/benchmarks.md "## latency"
    python bench/latency.py --only barge --profile-service /tmp/prof   # cProfile the service
    python bench/latency.py --only c1000 --service-gc 50000   # what-if: fewer GC passes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import platform
import pstats
import re
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from _common import (  # noqa: E402
    Sample,
    ServiceProcess,
    cpu_seconds,
    free_port,
    gc_summary,
    install_loop,
    peak_overlap,
    raise_fd_limit,
    ratio,
    service_args,
    spawn,
    write_docs_section,
)

from gateway_client.emulator import GatewayEmulator  # noqa: E402

MODEL = "gpt-4.1"
TERMINALS = frozenset({"response.done", "response.cancelled", "response.failed"})
TAG = re.compile(r"\bq(\d+)x\b")
WAIT = 30.0  # generous deadline for any one wait: only there so a broken run cannot hang
LOGS = Path("/tmp/bench-latency")

perf = time.perf_counter
loads = orjson.loads
dumps = orjson.dumps


def turn_frame(order: int, text: str, *, final: bool) -> str:
    """An AssemblyAI v3 Turn, as a client would forward it."""
    words = [
        {"start": 100 * i, "end": 100 * i + 80, "text": w, "confidence": 0.9, "word_is_final": True}
        for i, w in enumerate(text.split())
    ]
    return dumps(
        {
            "type": "Turn",
            "turn_order": order,
            "turn_is_formatted": False,
            "end_of_turn": final,
            "transcript": text,
            "end_of_turn_confidence": 0.9 if final else 0.1,
            "words": words,
            "utterance": "",
        }
    ).decode()


# ---- the emulator's records ------------------------------------------------------------------


class Requests:
    """Finds the emulator's record of a request by the tag ``q<N>x`` in its last message."""

    def __init__(self, emu: GatewayEmulator) -> None:
        self.emu = emu
        self._seen = 0
        self._by_tag: dict[int, Any] = {}
        self._next = 0

    def new_tag(self) -> tuple[int, str]:
        self._next += 1
        return self._next, f"bench q{self._next}x go"

    def get(self, tag: int) -> Any | None:
        requests = self.emu.requests
        while self._seen < len(requests):
            req = requests[self._seen]
            self._seen += 1
            messages = req.body.get("messages") or [{}]
            match = TAG.search(str(messages[-1].get("content")))
            if match:
                self._by_tag[int(match.group(1))] = req
        return self._by_tag.get(tag)

    async def wait(self, tag: int, check: Callable[[Any], bool] = lambda r: True) -> Any:
        """The record for `tag`, once `check(record)` holds (polling: the emulator has no hook)."""
        async with asyncio.timeout(WAIT):
            while True:
                req = self.get(tag)
                if req is not None and check(req):
                    return req
                await asyncio.sleep(0.001)


# ---- the load worker's side: clients of the service and of the gateway -----------------------


class ServiceClient:
    """One participant connection; records the receive time of every delta, lean on purpose."""

    __slots__ = ("deltas", "errors", "next_order", "waiters", "want", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.deltas: dict[int, list[float]] = {}  # turn_order -> receive times
        self.waiters: dict[int, asyncio.Future[str]] = {}  # turn_order -> its terminal's type
        self.want: tuple[int, int, asyncio.Future[None]] | None = None  # (turn, n deltas, fut)
        self.errors: list[Any] = []
        self.next_order = 0

    async def run(self) -> None:
        """Read until the connection closes. Owned by the worker's TaskGroup."""
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            m = loads(frame.data)
            t = perf()  # after parsing, as the direct client's time is taken after its parse
            kind = m["type"]
            if kind == "response.delta":
                order = m["turn_order"]
                times = self.deltas[order]
                times.append(t)
                want = self.want
                if want is not None and want[0] == order and len(times) >= want[1]:
                    self.want = None
                    want[2].set_result(None)
            elif kind == "response.created":
                self.deltas[m["turn_order"]] = []
            elif kind in TERMINALS:
                fut = self.waiters.pop(m["turn_order"], None)
                if fut is not None and not fut.done():
                    fut.set_result(kind)
            elif kind == "error":
                self.errors.append(m["error"])
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the service closed the connection"))

    async def send_turn(self, text: str) -> tuple[int, float, asyncio.Future[str]]:
        """Send a final Turn of the next turn_order; return (order, sent_at, terminal future)."""
        self.next_order += 1
        order = self.next_order
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters[order] = fut
        frame = turn_frame(order, text, final=True)
        sent_at = perf()
        await self.ws.send_str(frame)
        return order, sent_at, fut

    def deltas_future(self, order: int, n: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(self.deltas.get(order, ())) >= n:
            fut.set_result(None)
        else:
            self.want = (order, n, fut)
        return fut

    async def turn(self, text: str, offset: float, barge_after: int, barge: str) -> dict[str, Any]:
        """One turn: wait `offset`, send it, optionally barge in after some deltas, await its end."""
        await asyncio.sleep(offset)
        order, sent_at, done = await self.send_turn(text)
        barge_at = None
        if barge_after:
            async with asyncio.timeout(WAIT):
                await self.deltas_future(order, barge_after)
            if barge == "SpeechStarted":
                frame = dumps({"type": "SpeechStarted"}).decode()
            else:  # a partial of the next turn with one word
                frame = turn_frame(order + 1, "wait", final=False)
            barge_at = perf()
            await self.ws.send_str(frame)
        async with asyncio.timeout(WAIT * 3):
            outcome = await done
        return {
            "sent_at": sent_at,
            "deltas": self.deltas.pop(order, []),
            "outcome": outcome,
            "barge_at": barge_at,
        }


async def connect(http: aiohttp.ClientSession, url: str, config: dict[str, Any]) -> ServiceClient:
    """Open a participant connection, apply `config`, wait for session.updated."""
    ws = await http.ws_connect(url, autoping=True, max_msg_size=0)
    for _ in range(2):  # session.created, then session.updated
        frame = await ws.receive(timeout=WAIT)
        if frame.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"unexpected frame {frame.type}")
        if loads(frame.data)["type"] == "session.created":
            await ws.send_str(dumps({"type": "session.update", "session": config}).decode())
    return ServiceClient(ws)


@dataclass(slots=True)
class DirectResult:
    sent_at: float
    chunks: list[tuple[int, float]] = field(default_factory=list)  # (chunk index, parsed at)
    closed_at: float | None = None


async def direct_stream(
    http: aiohttp.ClientSession, url: str, text: str, abort_after: int = 0
) -> DirectResult:
    """POST a streamed chat request and parse its SSE lines with orjson, as a lean client would.

    With `abort_after`, close the response after that many content chunks (a barge-in).
    """
    body = dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": True})
    headers = {"Content-Type": "application/json"}
    result = DirectResult(perf())
    async with http.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"direct request answered {resp.status}")
        index = -1
        content = 0
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = loads(payload)
            t = perf()
            index += 1
            choices = chunk.get("choices")
            if choices and choices[0].get("delta", {}).get("content"):
                result.chunks.append((index, t))
                content += 1
                if abort_after and content >= abort_after:
                    result.closed_at = perf()
                    resp.close()
                    break
    return result


def quiet_gc() -> None:
    """Keep the measuring processes' collector out of the figures (not the service's).

    With thousands of long-lived connection objects a full collection pauses for tens of
    ms; freezing what exists and collecting young objects rarely keeps the load worker and
    the emulator from adding such pauses to both columns.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


class Worker:
    """The load worker's state: open service sessions and the pooled direct-client session."""

    def __init__(
        self, http: aiohttp.ClientSession, direct: aiohttp.ClientSession, tg: asyncio.TaskGroup
    ) -> None:
        self.http = http
        self.direct = direct
        self.tg = tg
        self.sessions: list[ServiceClient] = []

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "open":
            for start in range(0, command["n"], 50):  # the listen backlog is finite
                batch = min(50, command["n"] - start)
                async with asyncio.timeout(WAIT):
                    opened = await asyncio.gather(
                        *(
                            connect(self.http, command["url"], command["config"])
                            for _ in range(batch)
                        )
                    )
                for c in opened:
                    self.sessions.append(c)
                    self.tg.create_task(c.run())
            quiet_gc()
            return {"sessions": len(self.sessions)}
        if op == "turns":
            s = self.sessions
            results = await asyncio.gather(
                *(s[i].turn(text, off, k, barge) for i, text, off, k, barge in command["items"])
            )
            return {"results": results}
        if op == "direct":
            url = command["url"]

            async def one(text: str, offset: float, abort_after: int) -> DirectResult:
                await asyncio.sleep(offset)
                return await direct_stream(self.direct, url, text, abort_after)

            async with asyncio.timeout(WAIT * 3):
                done = await asyncio.gather(*(one(*item) for item in command["items"]))
            return {"results": [[r.sent_at, r.chunks, r.closed_at] for r in done]}
        if op == "close":
            await self.close()
            return {"sessions": 0}
        raise ValueError(f"unknown command {op!r}")

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, []
        for c in sessions:
            await c.ws.close()


async def worker_main() -> None:
    """The load worker: read JSON commands on stdin, answer each on stdout, until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        ) as direct,
        asyncio.TaskGroup() as tg,
    ):
        worker = Worker(http, direct, tg)
        while line := await reader.readline():
            try:
                answer = await worker.handle(loads(line))
            except Exception as exc:  # reported to the driver, which stops the run
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(dumps(answer) + b"\n")
            out.flush()
        await worker.close()


# ---- the driver's handle on the load worker --------------------------------------------------


@dataclass(slots=True)
class TurnResult:
    sent_at: float
    deltas: list[float]
    outcome: str
    barge_at: float | None


class Load:
    """The load worker process (``latency.py --load-worker``), driven one command at a time.

    The clients live in a process of their own so that neither the service path nor the
    direct path has its client in the emulator's process: both pay the same kind of hop.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(dumps(command) + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(WAIT * 4):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load worker exited; see {LOGS}")
        answer: dict[str, Any] = loads(line)
        if "error" in answer:
            raise RuntimeError(f"load worker: {answer['error']}")
        return answer

    async def open(self, url: str, n: int, config: dict[str, Any]) -> None:
        await self.call({"op": "open", "url": url, "n": n, "config": config})

    async def turns(self, items: list[tuple[int, str, float, int, str]]) -> list[TurnResult]:
        """Items: (session index, text, start offset s, barge-in after k deltas, barge kind)."""
        answer = await self.call({"op": "turns", "items": items})
        return [TurnResult(**r) for r in answer["results"]]

    async def direct(self, url: str, items: list[tuple[str, float, int]]) -> list[DirectResult]:
        """Items: (text, start offset s, close after k content chunks or 0)."""
        answer = await self.call({"op": "direct", "url": url, "items": items})
        return [
            DirectResult(sent, [(i, t) for i, t in chunks], closed)
            for sent, chunks, closed in answer["results"]
        ]

    async def close_sessions(self) -> None:
        await self.call({"op": "close"})


@contextlib.asynccontextmanager
async def load_worker(opts: argparse.Namespace, name: str) -> AsyncIterator[Load]:
    flags = [] if opts.uvloop else ["--no-uvloop"]
    with (LOGS / f"load-{name}.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), "--load-worker", *flags,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            limit=1 << 26,
        )  # fmt: skip
        try:
            yield Load(proc)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


# ---- one phase's processes -------------------------------------------------------------------


@dataclass(slots=True)
class Rig:
    emu: GatewayEmulator
    requests: Requests
    svc: ServiceProcess
    load: Load
    ws_url: str
    chat_url: str
    layout: list[int] = field(default_factory=list)  # chunk indices that carry content

    async def direct_one(self, text: str, abort_after: int = 0) -> DirectResult:
        return (await self.load.direct(self.chat_url, [(text, 0.0, abort_after)]))[0]


@contextlib.asynccontextmanager
async def rig(
    opts: argparse.Namespace,
    name: str,
    *,
    token_delay: float,
    reply_words: int | None,
    server: str = "service",
) -> AsyncIterator[Rig]:
    """A fresh emulator (here), a fresh service process and a fresh load worker.

    `server="bare-relay"` puts bench/_common.py's minimal relay in the service's place.
    """
    async with GatewayEmulator(
        host="127.0.0.1",
        port=0,
        token_delay=token_delay,
        reply_words=reply_words,
        max_recorded=10**7,
    ) as emu:
        port = free_port()
        profile = str(Path(opts.profile_service) / f"{name}.prof") if opts.profile_service else None
        extra = ["--max-concurrent", "100000", "--log-level", opts.service_log_level]
        args = service_args(
            port, emu.base_url, uvloop=opts.uvloop, profile=profile, gc_threshold=opts.service_gc,
            extra=extra,
        )  # fmt: skip
        if server == "bare-relay":
            args = ["bare-relay", "--port", str(port), "--gateway-url", emu.base_url]
            args += ["--uvloop"] if opts.uvloop else []
        with spawn(args, port, "/healthz", LOGS / f"{server}-{name}.log") as svc:
            if server == "service":
                RUNS.service_command = shlex.join(["python", "bench/_common.py", *args])
            async with load_worker(opts, name) as load:
                r = Rig(
                    emu,
                    Requests(emu),
                    svc,
                    load,
                    f"ws://127.0.0.1:{port}/v1/realtime",
                    f"{emu.base_url}/chat/completions",
                )
                _, probe = r.requests.new_tag()
                r.layout = [i for i, _ in (await r.direct_one(probe)).chunks]
                quiet_gc()
                yield r
        if server == "service":
            summary = gc_summary(svc.log_path)
            if summary:
                note(f"[{name}] service GC pauses: {summary}")


def relay_into(
    sample: Sample,
    req: Any,
    received: list[float],
    layout: list[int],
    first: Sample | None = None,
    steady: Sample | None = None,
    since: float = 0.0,
) -> bool:
    """Add chunk-written -> delta-received samples; False if the shapes do not line up.

    `first` gets the first delta's sample; `steady` those of chunks written after `since`.
    """
    if len(received) != len(layout) or layout[-1] >= len(req.chunk_times):
        return False
    times = req.chunk_times
    for j, t in enumerate(received):
        written = times[layout[j]]
        sample.add_s(t - written)
        if steady is not None and written >= since:
            steady.add_s(t - written)
    if first is not None:
        first.add_s(received[0] - times[layout[0]])
    return True


def direct_relay_into(
    sample: Sample,
    req: Any,
    result: DirectResult,
    first: Sample | None = None,
    steady: Sample | None = None,
    since: float = 0.0,
) -> None:
    times = req.chunk_times
    for index, t in result.chunks:
        if index < len(times):
            sample.add_s(t - times[index])
            if steady is not None and times[index] >= since:
                steady.add_s(t - times[index])
    if first is not None and result.chunks:
        index, t = result.chunks[0]
        first.add_s(t - times[index])


# ---- results ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    figure: str
    service: Sample
    direct: Sample | None
    target: str
    met: bool | None
    unit: str = "ms"


@dataclass(slots=True)
class Runs:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    service_command: str = ""
    loop: str = ""


RUNS = Runs()


def note(text: str) -> None:
    RUNS.notes.append(text)
    print("  " + text, flush=True)


class CpuMeter:
    """CPU seconds of the service, the load worker and this driver (the emulator)."""

    def __init__(self, r: Rig) -> None:
        self.pids = {"service": r.svc.pid, "load worker": r.load.pid}
        self.used = dict.fromkeys([*self.pids, "emulator (driver)"], 0.0)
        self.wall = 0.0

    def _now(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["emulator (driver)"] = time.process_time()
        return now

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        before, w0 = self._now(), perf()
        try:
            yield
        finally:
            after = self._now()
            for name in self.used:
                self.used[name] += after[name] - before[name]
            self.wall += perf() - w0

    def text(self) -> str:
        if self.wall <= 0:
            return "n/a"
        parts = [f"{name} {100 * used / self.wall:.0f}%" for name, used in self.used.items()]
        return "CPU (% of one core): " + ", ".join(parts)


def interleave(
    i: int, service: Callable[[], Awaitable[None]], direct: Callable[[], Awaitable[None]]
) -> list[Callable[[], Awaitable[None]]]:
    """Service first on even rounds, direct first on odd ones (ABBA), so drift hits both."""
    return [service, direct] if i % 2 == 0 else [direct, service]


# ---- phases ----------------------------------------------------------------------------------

PER_TURN = {"preset": "per_turn"}


async def phase_sequential(opts: argparse.Namespace, server: str = "service") -> None:
    """(a) and (b): one session vs one direct client, alternating, one turn at a time.

    With `server="bare-relay"` the same is measured for a minimal relay in the service's place
    (the floor of a WebSocket-to-HTTP relay in Python on this machine), as reference rows.
    """
    name = "seq" if server == "service" else "floor"
    print(f"[{name}] {opts.rounds} rounds, {opts.words} words at {opts.delay * 1000:g} ms/token")
    added_s, added_d, relay_s, relay_d = Sample(), Sample(), Sample(), Sample()
    bad = 0
    delay, words = opts.delay, opts.words
    async with rig(opts, name, token_delay=delay, reply_words=words, server=server) as r:
        await r.load.open(r.ws_url, 1, PER_TURN)
        cpu_s, cpu_d = CpuMeter(r), CpuMeter(r)
        record = False

        async def via_service() -> None:
            nonlocal bad
            tag, text = r.requests.new_tag()
            with cpu_s.measure():
                (res,) = await r.load.turns([(0, text, 0.0, 0, "")])
            req = await r.requests.wait(tag, lambda q: q.completed)
            if record:
                ok = res.outcome == "response.done"
                ok = ok and relay_into(relay_s, req, res.deltas, r.layout)
                added_s.add_s(req.arrived_at - res.sent_at)
                bad += not ok

        async def direct() -> None:
            tag, text = r.requests.new_tag()
            with cpu_d.measure():
                res = await r.direct_one(text)
            req = await r.requests.wait(tag, lambda q: q.completed)
            if record:
                added_d.add_s(req.arrived_at - res.sent_at)
                direct_relay_into(relay_d, req, res)

        for i in range(opts.warmup + opts.rounds):
            record = i >= opts.warmup
            for step in interleave(i, via_service, direct):
                await step()
        await r.load.close_sessions()
    if bad:
        note(f"[{name}] {bad} service responses did not line up with the gateway's chunks")
    note(f"[{name}] while the {server} side ran: {cpu_s.text()}")
    note(f"[{name}] while the direct side ran: {cpu_d.text()}")
    if server != "service":
        RUNS.rows += [
            Row(
                f"(a) floor: {server} in place of the service", added_s, added_d, "reference", None
            ),
            Row(
                f"(b) floor: {server} in place of the service", relay_s, relay_d, "reference", None
            ),
        ]
        return
    RUNS.rows += [
        Row(
            "(a) added latency: turn sent -> request at gateway",
            added_s,
            added_d,
            "p50 ratio <= 1.5",
            ratio(added_s.p50, added_d.p50) <= 1.5,
        ),
        Row(
            "(b) relay: chunk written -> delta received, 1 session",
            relay_s,
            relay_d,
            "p50 ratio <= 2.0",
            ratio(relay_s.p50, relay_d.p50) <= 2.0,
        ),
    ]


async def phase_barge(opts: argparse.Namespace) -> None:
    """(c): barge-in -> upstream closed, alternating SpeechStarted and a one-word partial Turn."""
    print(f"[barge] {opts.barge_rounds} rounds, barge-in after 3 deltas at 10 ms/token")
    svc, drc = Sample(), Sample()
    kinds: dict[str, Sample] = {"SpeechStarted": Sample(), "Turn": Sample()}
    async with rig(opts, "barge", token_delay=0.01, reply_words=400) as r:
        await r.load.open(r.ws_url, 1, {"preset": "assistant", "max_context_turns": 2})
        record = False
        kind = "SpeechStarted"

        async def via_service() -> None:
            tag, text = r.requests.new_tag()
            (res,) = await r.load.turns([(0, text, 0.0, 3, kind)])
            if res.outcome != "response.cancelled" or res.barge_at is None:
                raise RuntimeError(f"barge-in ended the response with {res.outcome}")
            req = await r.requests.wait(tag, lambda q: q.disconnected_at is not None)
            if record:
                svc.add_s(req.disconnected_at - res.barge_at)
                kinds[kind].add_s(req.disconnected_at - res.barge_at)

        async def direct() -> None:
            tag, text = r.requests.new_tag()
            res = await r.direct_one(text, abort_after=3)
            req = await r.requests.wait(tag, lambda q: q.disconnected_at is not None)
            if record and res.closed_at is not None:
                drc.add_s(req.disconnected_at - res.closed_at)

        for i in range(opts.warmup + opts.barge_rounds):
            record = i >= opts.warmup
            kind = "SpeechStarted" if i % 2 == 0 else "Turn"
            for step in interleave(i // 2, via_service, direct):
                await step()
        await r.load.close_sessions()
    for k, s in kinds.items():
        note(f"[barge] via {k}: p50 {s.p50:.2f} ms, p99 {s.p99:.2f} ms (n={s.n})")
    RUNS.rows.append(
        Row(
            "(c) barge-in sent -> upstream connection closed",
            svc,
            drc,
            "service p99 <= 5 ms",
            svc.p99 <= 5.0,
        )
    )


async def phase_concurrent(
    opts: argparse.Namespace,
    n: int,
    token_delay: float,
    words: int,
    rounds: int,
    big: bool,
    server: str = "service",
) -> None:
    """(d): n sessions at once vs n direct streams at once, interleaved round by round.

    Each round starts n streams spread evenly over a ramp (one token interval, or 1 ms per
    stream if longer) and the streams last several ramps, so that after the ramp all n stream
    at once. Relay is reported for every chunk, and for the steady state alone: the chunks
    written after the round's last request arrived (the ramp's request setup is then over).
    """
    name = f"c{n}" if server == "service" else f"c{n}-floor"
    rate = f"{1 / token_delay:g} tokens/s"
    ramp = max(token_delay, n / 1000)
    print(f"[{name}] {n} sessions, {rounds} rounds, {words} words at {rate}, ramp {ramp:g} s")
    relay_s, relay_d, added_s, added_d = Sample(), Sample(), Sample(), Sample()
    first_s, first_d, steady_s, steady_d = Sample(), Sample(), Sample(), Sample()
    peaks: dict[str, list[int]] = {"service": [], "direct": []}
    bad = 0
    async with rig(opts, name, token_delay=token_delay, reply_words=words, server=server) as r:
        await r.load.open(r.ws_url, n, PER_TURN)
        cpu_s, cpu_d = CpuMeter(r), CpuMeter(r)
        offsets = [ramp * i / n for i in range(n)]
        record = False

        async def service_round() -> None:
            nonlocal bad
            tagged = [r.requests.new_tag() for _ in range(n)]
            items = [(i, text, offsets[i], 0, "") for i, (_, text) in enumerate(tagged)]
            with cpu_s.measure():
                results = await r.load.turns(items)
            reqs = [await r.requests.wait(t, lambda q: q.completed) for t, _ in tagged]
            if not record:
                return
            peaks["service"].append(peak_overlap([(q.arrived_at, q.chunk_times[-1]) for q in reqs]))
            since = max(q.arrived_at for q in reqs)
            for q, res in zip(reqs, results, strict=True):
                added_s.add_s(q.arrived_at - res.sent_at)
                ok = relay_into(relay_s, q, res.deltas, r.layout, first_s, steady_s, since)
                bad += not ok

        async def direct_round() -> None:
            tagged = [r.requests.new_tag() for _ in range(n)]
            items = [(text, offsets[i], 0) for i, (_, text) in enumerate(tagged)]
            with cpu_d.measure():
                results = await r.load.direct(r.chat_url, items)
            reqs = [await r.requests.wait(t, lambda q: q.completed) for t, _ in tagged]
            if not record:
                return
            peaks["direct"].append(peak_overlap([(q.arrived_at, q.chunk_times[-1]) for q in reqs]))
            since = max(q.arrived_at for q in reqs)
            for q, res in zip(reqs, results, strict=True):
                added_d.add_s(q.arrived_at - res.sent_at)
                direct_relay_into(relay_d, q, res, first_d, steady_d, since)

        for i in range(1 + rounds):  # round 0 warms up connections and is not recorded
            record = i >= 1
            for step in interleave(i, service_round, direct_round):
                await step()
        await r.load.close_sessions()
    if bad:
        note(f"[{name}] {bad} service responses did not line up with the gateway's chunks")
    note(
        f"[{name}] peak concurrent upstream streams: {server} {max(peaks['service'], default=0)}, "
        f"direct {max(peaks['direct'], default=0)} (of {n})"
    )
    note(
        f"[{name}] added latency (a) under load: {server} p50 {added_s.p50:.2f} / p99 "
        f"{added_s.p99:.2f} ms; direct p50 {added_d.p50:.2f} / p99 {added_d.p99:.2f} ms"
    )
    note(
        f"[{name}] relay of the first delta only: {server} p50 {first_s.p50:.2f} / p99 "
        f"{first_s.p99:.2f} ms; direct p50 {first_d.p50:.2f} / p99 {first_d.p99:.2f} ms"
    )
    note(f"[{name}] while the {server} side ran: {cpu_s.text()}")
    note(f"[{name}] while the direct side ran: {cpu_d.text()}")
    peak = max(peaks["service"], default=0)
    capped = f" (**the service streamed only {peak} at once**)" if peak < n else ""
    for label, s_, d_ in (("steady state", steady_s, steady_d), ("incl. ramp", relay_s, relay_d)):
        if server != "service":
            figure = f"(d) floor: {server}, {n} sessions at {rate}, {label}"
            RUNS.rows.append(Row(figure, s_, d_, "reference", None))
            continue
        if big:
            target, met = "service p99 <= 50 ms", s_.p99 <= 50.0
        else:
            target, met = "p99 ratio <= 2.0", ratio(s_.p99, d_.p99) <= 2.0
        met = met and peak >= n  # a target met with fewer concurrent streams is not met
        figure = f"(d) relay, {n} concurrent sessions at {rate}, {label}{capped}"
        RUNS.rows.append(Row(figure, s_, d_, target, met))


async def idle_rss(r_url: str, pid: int, http: aiohttp.ClientSession, n: int) -> float:
    """KiB of VmRSS per idle connection: open n, wait, measure, close."""
    from _common import rss_kb

    async def open_one() -> aiohttp.ClientWebSocketResponse:
        ws = await http.ws_connect(r_url, autoping=True)
        await ws.receive(timeout=WAIT)  # session.created
        return ws

    async def open_n(k: int) -> list[aiohttp.ClientWebSocketResponse]:
        out: list[aiohttp.ClientWebSocketResponse] = []
        for start in range(0, k, 50):
            async with asyncio.timeout(WAIT):
                out += await asyncio.gather(*(open_one() for _ in range(min(50, k - start))))
        return out

    for ws in await open_n(min(n, 100)):  # warm-up: first-use allocations, caches
        await ws.close()
    await asyncio.sleep(0.5)
    before = rss_kb(pid)
    conns = await open_n(n)
    await asyncio.sleep(1.0)
    after = rss_kb(pid)
    for ws in conns:
        await ws.close()
    return (after - before) / n


async def phase_rss(opts: argparse.Namespace) -> None:
    """(e): the service's RSS per idle session, next to a bare aiohttp WebSocket server."""
    n = opts.idle
    print(f"[rss] {n} idle sessions")
    async with (
        rig(opts, "rss", token_delay=0.01, reply_words=None) as r,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        per_session = await idle_rss(r.ws_url, r.svc.pid, http, n)
    port = free_port()
    with spawn(["bare-ws", "--port", str(port)], port, "/healthz", LOGS / "bare-ws.log") as bare:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            url = f"ws://127.0.0.1:{port}/v1/realtime"
            per_bare = await idle_rss(url, bare.pid, http, n)
    RUNS.rows.append(
        Row(
            f"(e) RSS per idle session ({n} sessions)",
            Sample([per_session]),
            Sample([per_bare]),
            "<= 50 KiB",
            per_session <= 50.0,
            unit="KiB",
        )
    )
    note("[rss] the direct column of (e) is a bare aiohttp WebSocket server (accept, read)")


# ---- report ----------------------------------------------------------------------------------


def fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def table() -> str:
    head = (
        "| figure | service p50 | service p99 | direct p50 | direct p99 | ratio p50 "
        "| ratio p99 | n (svc/direct) | target | met |"
    )
    lines = [head, "|" + " --- |" * 10]
    for row in RUNS.rows:
        s, d = row.service, row.direct
        u = "" if row.unit == "ms" else f" {row.unit}"
        if d is None:
            d = Sample()
        met = "n/a" if row.met is None else ("yes" if row.met else "**NO**")
        lines.append(
            f"| {row.figure} | {fmt(s.p50)}{u} | {fmt(s.p99)}{u} | {fmt(d.p50)}{u} "
            f"| {fmt(d.p99)}{u} | {fmt(ratio(s.p50, d.p50))} | {fmt(ratio(s.p99, d.p99))} "
            f"| {s.n}/{d.n} | {row.target} | {met} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import os

    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def report(opts: argparse.Namespace, started: float) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "bench/latency.py", *sys.argv[1:]])
    parts = [
        f"Run {when} on {machine()}; event loop: {RUNS.loop} (in all three processes); "
        f"took {time.monotonic() - started:.0f} s.",
        "",
        f"Command: `{command}`",
        "",
        f"Service process (one fresh process per phase): `{RUNS.service_command}`",
        "",
        "Times in ms (p50/p99 over all samples of the phase; ratio = service / direct).",
        "",
        table(),
        "",
        "Notes from the run:",
        "",
        *[f"- {n}" for n in RUNS.notes],
    ]
    return "\n".join(parts)


def print_profiles(opts: argparse.Namespace) -> None:
    for path in sorted(Path(opts.profile_service).glob("*.prof")):
        print(f"\n==== cProfile of the service, {path.stem}: top 25 by own time ====")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


INTRO = """\
`bench/latency.py` measures what the service adds on top of a plain client of the gateway:
the latency from a final turn to the chat request, the relay of each streamed chunk to the
client, the time from a barge-in to the upstream connection closing, the relay under 100 and
1,000 concurrent sessions, and the memory of an idle session. Every service figure stands
beside the same figure for a plain aiohttp client of the gateway emulator, measured in the
same run, interleaved (ABBA). Three processes: the service; the gateway emulator inside the
driver (its timestamps are read directly; perf_counter is CLOCK_MONOTONIC, shared across
processes); every client, of the service and of the gateway alike, in a load worker. The
machine is noisy: read the ratios."""


async def run(opts: argparse.Namespace) -> None:
    phases = set(opts.only.split(","))
    if "rss" in phases:
        await phase_rss(opts)
    if "seq" in phases:
        await phase_sequential(opts)
    if "floor" in phases:
        await phase_sequential(opts, server="bare-relay")
    if "barge" in phases:
        await phase_barge(opts)
    if "c100" in phases:
        await phase_concurrent(opts, 100, 0.02, opts.words, opts.conc_rounds, big=False)
    if "c1000" in phases:
        await phase_concurrent(opts, opts.big, 0.1, opts.big_words, opts.big_rounds, big=True)
    if "c1000floor" in phases:
        await phase_concurrent(
            opts, opts.big, 0.1, opts.big_words, opts.big_rounds, big=True, server="bare-relay"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    parser.add_argument(
        "--no-uvloop",
        dest="uvloop",
        action="store_false",
        help="plain asyncio event loops in the driver and the service",
    )
    parser.add_argument(
        "--only",
        default="rss,seq,floor,barge,c100,c1000,c1000floor",
        help="comma-separated phases: rss,seq,floor,barge,c100,c1000,c1000floor",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write the figures into docs/benchmarks.md, section '## latency'",
    )
    parser.add_argument(
        "--docs-label",
        default="figures",
        help="name of the generated block in the docs section (one block per label)",
    )
    parser.add_argument(
        "--profile-service",
        metavar="DIR",
        help="run each service process under cProfile; stats go to DIR",
    )
    parser.add_argument(
        "--service-log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--service-gc",
        type=int,
        metavar="N",
        help="what-if: start the service with gc.set_threshold(N, 50, 1000)",
    )
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.load_worker:
        install_loop(opts.uvloop)
        asyncio.run(worker_main())
        return
    q = opts.quick
    opts.rounds = 40 if q else 150  # sequential rounds per side
    opts.words = 20  # reply words per response (20 deltas)
    opts.delay = 0.005  # 200 tokens/s in the sequential phase
    opts.warmup = 3
    opts.barge_rounds = 20 if q else 100
    opts.conc_rounds = 2 if q else 4
    opts.big = 300 if q else 1000
    opts.big_words = 20 if q else 30  # streams last 3 ramps
    opts.big_rounds = 1 if q else 2
    opts.idle = 300 if q else 1000

    LOGS.mkdir(parents=True, exist_ok=True)
    if opts.profile_service:
        Path(opts.profile_service).mkdir(parents=True, exist_ok=True)
    fds = raise_fd_limit()
    RUNS.loop = install_loop(opts.uvloop)
    print(f"event loop: {RUNS.loop}; open-file limit {fds}; logs in {LOGS}", flush=True)
    started = time.monotonic()
    asyncio.run(run(opts))
    text = report(opts, started)
    print("\n" + text)
    if opts.profile_service:
        print_profiles(opts)
    if opts.write_docs:
        page = REPO / "docs" / "benchmarks.md"
        write_docs_section(page, "## latency", INTRO, text, label=opts.docs_label)
        print("\nwrote docs/benchmarks.md, section '## latency'")


if __name__ == "__main__":
    main()
