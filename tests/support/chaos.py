"""A seeded chaos scenario: hundreds of misbehaving client lifecycles against one server.

One server, with upstream speech-to-text pointed at the `SttEmulator` (so `/v3/ws` and audio
on `/v1/realtime` work), and the `GatewayEmulator`, on loopback in this process. A control
session (a well-behaved participant sending a turn every `control_interval_s` and reading
everything) runs alone first, then throughout the chaos. The chaos clients run in a child
process (`support.chaos_clients`, which lists the kinds): `lifecycles` of them,
`concurrency` at a time. At the end some clients are left connected, some stalled, and the
server is stopped as SIGTERM would stop it.

What is checked (`ChaosReport.problems`):
- once every lifecycle and the control are over, the running server holds nothing, and
  after `server.stop()` neither: `server.residue()` all 0, no task left that did not exist
  before the server started, the emulators' `open_requests` / `open_sessions` 0 (the release
  invariant of tests/support/residue.py); then this process's file descriptors are back to
  the count before the server started (within `fd_slack`);
- every transcript of a client that read to the end satisfies guarantees 1 and 2
  (`support.service.assert_guarantees`), and no well-behaved client is left hanging;
- the control session's p99 gap between deltas under chaos is at most twice its p99 alone,
  plus `gap_floor_ms` (guarantee 5: what other sessions do does not disturb it). This one
  is judged only when the server's event loop thread got a CPU whenever it wanted one (it
  waited for one at most `max_cpu_wait` of each phase, from /proc/thread-self/schedstat):
  on an oversubscribed machine the gaps measure the other processes, and the report says
  so in `notes()` instead.

Used by tests/realtime/test_chaos.py (CI size) and bench/chaos.py (longer runs, a summary).
The kinds and their random choices come from the seed; the interleaving on a shared machine
does not, so a re-run with the same seed runs the same mix, not the same schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from support.chaos_clients import KINDS, Findings, Peer, terminal_for
from support.residue import Leftovers, open_fds, snapshot_tasks, wait_released
from support.service import turn

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator
from realtime.server import Server, ServerSettings

REPO = Path(__file__).resolve().parents[2]
_CONTROL_WORDS = "paris london rain sunny coffee meeting budget robot river music".split()
# A /v3/ws client never sees its session's id (there is no session.created on /v3/ws):
# a session the /v1/realtime clients did not see created is a /v3/ws one.
_V3_SESSION = "a /v3/ws client (audio_v3_drop, audio_stt_failure or at_stop)"


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int = 20_240_607
    lifecycles: int = 300
    concurrency: int = 30
    write_timeout_s: float = 1.0
    # A participant that drops without Termination leaves its session detached this long,
    # for a resume (when the server has resume windows); the release checks wait longer.
    resume_window_ms: int = 1000
    max_connections: int = 1000
    token_delay: float = 0.002
    reply_words: int = 12
    control_interval_s: float = 0.5
    control_words: int = 80  # the control's turns are this long: its replies echo them
    solo_turns: int = 20
    parked_at_stop: int = 3  # of each end-of-run client kind, connected when the server stops
    release_deadline_s: float = 10.0
    fd_slack: int = 4
    gap_floor_ms: float = 5.0
    max_lifecycle_s: float = 45.0
    min_gap_samples: int = 500
    # The control ratio is judged only when the server's thread got a CPU when it wanted one:
    # waiting for one more than this fraction of a phase means other processes had the machine.
    max_cpu_wait: float = 0.05


def pctl(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (NaN without values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---- the report --------------------------------------------------------------------------------


@dataclass
class Load:
    """What the server process's event loop thread got while a phase ran (fractions of wall)."""

    cpu: float = 0.0  # on a CPU
    waiting: float = 0.0  # runnable, waiting for a CPU (another process had it)


@dataclass
class ChaosReport:
    config: ChaosConfig
    clients: Findings = field(default_factory=Findings)
    while_running: Leftovers | None = None
    held_sessions: dict[str, str] = field(default_factory=dict)  # session id -> who made it
    residue_before_stop: dict[str, int] = field(default_factory=dict)
    after_stop: Leftovers | None = None
    fds_before: int = 0
    fds_after: int = 0
    solo_gaps_ms: list[float] = field(default_factory=list)
    chaos_gaps_ms: list[float] = field(default_factory=list)
    control_problems: list[str] = field(default_factory=list)
    process_problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    chaos_s: float = 0.0
    # How late the server's event loop ran a 5 ms timer, and how much CPU its thread got or
    # waited for, alone and under chaos: what the control's gaps are made of.
    loop_lag_solo_ms: list[float] = field(default_factory=list)
    loop_lag_chaos_ms: list[float] = field(default_factory=list)
    load_solo: Load = field(default_factory=Load)
    load_chaos: Load = field(default_factory=Load)

    @property
    def starved(self) -> bool:
        """The server's thread waited for a CPU more than `max_cpu_wait` of a phase: other
        processes had the machine, and its timings say nothing about the service."""
        limit = self.config.max_cpu_wait
        return self.load_solo.waiting > limit or self.load_chaos.waiting > limit

    @property
    def solo_p99(self) -> float:
        return pctl(self.solo_gaps_ms, 0.99)

    @property
    def chaos_p99(self) -> float:
        return pctl(self.chaos_gaps_ms, 0.99)

    @property
    def gap_limit_ms(self) -> float:
        return 2 * self.solo_p99 + self.config.gap_floor_ms

    def problems(self) -> list[str]:
        out: list[str] = list(self.process_problems)
        for kind, items in sorted(self.clients.problems.items()):
            more = f" (the first 5 of {len(items)})" if len(items) > 5 else ""
            out.append(f"[{kind}] {len(items)} problem(s){more}:")
            out.extend(f"    {p}" for p in items[:5])
        if self.while_running is not None and not self.while_running.clean:
            out.append(self.while_running.describe())
            by_maker: dict[str, list[str]] = defaultdict(list)
            for sid, maker in self.held_sessions.items():
                by_maker[maker].append(sid)
            for maker, sids in sorted(by_maker.items()):
                more = f" and {len(sids) - 3} more" if len(sids) > 3 else ""
                out.append(
                    f"  {len(sids)} session(s) held, made by {maker}: {', '.join(sids[:3])}{more}"
                )
        if self.after_stop is not None and not self.after_stop.clean:
            out.append(self.after_stop.describe())
        if self.fds_after > self.fds_before + self.config.fd_slack:
            out.append(
                f"file descriptors: {self.fds_after} once everything closed, "
                f"{self.fds_before} before the server started (slack {self.config.fd_slack})"
            )
        out.extend(self.control_problems)
        need = self.config.min_gap_samples
        if len(self.solo_gaps_ms) < need or len(self.chaos_gaps_ms) < need:
            out.append(
                f"too few control samples to compare: solo {len(self.solo_gaps_ms)}, "
                f"chaos {len(self.chaos_gaps_ms)} (need {need} each)"
            )
        elif self.chaos_p99 > self.gap_limit_ms and not self.starved:
            out.append(
                f"control session disturbed: delta gap p99 {self.chaos_p99:.2f} ms under chaos > "
                f"2 x {self.solo_p99:.2f} ms alone + {self.config.gap_floor_ms:g} ms = "
                f"{self.gap_limit_ms:.2f} ms (event loop lag p99 alone "
                f"{pctl(self.loop_lag_solo_ms, 0.99):.1f} ms, under chaos "
                f"{pctl(self.loop_lag_chaos_ms, 0.99):.1f} ms)"
            )
        return out

    def notes(self) -> list[str]:
        """What could not be judged (not problems)."""
        if self.starved and self.chaos_p99 > self.gap_limit_ms:
            return [
                f"the control ratio was not judged: the server's thread waited for a CPU "
                f"{self.load_solo.waiting:.0%} of the time alone and {self.load_chaos.waiting:.0%}"
                f" under chaos (more than {self.config.max_cpu_wait:.0%}): the machine was "
                f"oversubscribed (p99 {self.chaos_p99:.2f} ms under chaos, limit "
                f"{self.gap_limit_ms:.2f} ms)"
            ]
        return []

    def summary(self) -> str:
        c = self.config
        kinds = self.clients.kinds
        lines = [
            f"chaos: seed {c.seed}, {sum(kinds.values())} lifecycles, {c.concurrency} at a time, "
            f"write_timeout_s {c.write_timeout_s:g}",
            f"wall time {self.wall_s:.1f} s (chaos phase {self.chaos_s:.1f} s)",
            "lifecycles by kind: count, outcomes",
        ]
        for kind in [*KINDS, "at_stop"]:
            outcomes = self.clients.outcomes.get(kind)
            if kinds.get(kind) or outcomes:
                outs = "; ".join(f"{o} x{n}" for o, n in (outcomes or Counter()).most_common())
                lines.append(f"  {kind:26s} {kinds.get(kind, 0):5d}  {outs}")
        lines.append(f"transcripts checked (guarantees 1-2): {self.clients.transcripts_checked}")
        lines.append(f"server.residue() just before stop: {self.residue_before_stop}")
        for phase in (self.while_running, self.after_stop):
            if phase is not None:
                lines.append(phase.describe())
        lines.append(
            f"file descriptors (server process): {self.fds_before} before the server, "
            f"{self.fds_after} after"
        )
        lines.append(
            f"control delta gaps (ms): alone p50 {pctl(self.solo_gaps_ms, 0.5):.2f} "
            f"p99 {self.solo_p99:.2f} (n={len(self.solo_gaps_ms)}); under chaos p50 "
            f"{pctl(self.chaos_gaps_ms, 0.5):.2f} p99 {self.chaos_p99:.2f} "
            f"(n={len(self.chaos_gaps_ms)}); limit {self.gap_limit_ms:.2f}"
        )
        lines.append(
            f"event loop lag (ms): alone p50 {pctl(self.loop_lag_solo_ms, 0.5):.2f} "
            f"p99 {pctl(self.loop_lag_solo_ms, 0.99):.2f}; under chaos p50 "
            f"{pctl(self.loop_lag_chaos_ms, 0.5):.2f} p99 {pctl(self.loop_lag_chaos_ms, 0.99):.2f}"
        )
        lines.append(
            f"the server's event loop thread on a CPU: alone {self.load_solo.cpu:.0%}, under "
            f"chaos {self.load_chaos.cpu:.0%}; waiting for one: alone {self.load_solo.waiting:.0%}"
            f", under chaos {self.load_chaos.waiting:.0%}"
        )
        lines.extend(f"note: {n}" for n in self.notes())
        problems = self.problems()
        lines.append("problems: none" if not problems else "problems:")
        lines.extend("  " + p for p in problems)
        return "\n".join(lines)


# ---- the control session -----------------------------------------------------------------------


class Control:
    """The well-behaved participant: a turn every interval, each delta's arrival timed."""

    def __init__(self, config: ChaosConfig, http: aiohttp.ClientSession, port: int) -> None:
        self.config = config
        self.http = http
        self.port = port
        self.session_id: str | None = None
        self.problems: list[str] = []

    async def run(self, stop: asyncio.Event, *, turns: int | None, gaps: list[float]) -> None:
        """Until `stop` is set (or `turns` turns); then Termination. Gaps go to `gaps`."""
        url = f"ws://127.0.0.1:{self.port}/v1/realtime"
        try:
            async with asyncio.timeout(10):
                peer = Peer(await self.http.ws_connect(url), "control")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.problems.append(f"control: could not connect: {exc!r}")
            return
        try:
            await self._turns(peer, stop, turns)
        finally:
            if not peer.done:
                await peer.send({"type": "Termination"})
                if not await peer.wait_closed(10):
                    self.problems.append("control: no close within 10 s of Termination")
                    peer.abort()
                    await peer.wait_closed(5)
            gaps.extend(delta_gaps(peer))
            for m in peer.messages:
                if m.get("type") in ("response.cancelled", "response.failed", "error"):
                    self.problems.append(f"control: got {m}")

    async def _turns(self, peer: Peer, stop: asyncio.Event, turns: int | None) -> None:
        c = self.config
        if not await peer.wait_for(lambda m: m.get("type") == "session.created", 10):
            self.problems.append(f"control: no session.created (got {peer.types()})")
            return
        self.session_id = next(m for m in peer.messages if m["type"] == "session.created")[
            "session_id"
        ]
        await peer.send({"type": "session.update", "session": {"preset": "per_turn"}})
        await peer.wait_for(lambda m: m.get("type") == "session.updated", 5)
        text = " ".join(_CONTROL_WORDS[k % len(_CONTROL_WORDS)] for k in range(c.control_words))
        order = 0
        while not stop.is_set() and (turns is None or order < turns):
            started = time.perf_counter()
            await peer.send(turn(order, text))
            if not await peer.wait_for(terminal_for(order), 10):
                self.problems.append(
                    f"control: no terminal for turn {order} within 10 s (last {peer.types()[-6:]})"
                )
                return
            order += 1
            rest = c.control_interval_s - (time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, rest)):
                    await stop.wait()


def delta_gaps(peer: Peer) -> list[float]:
    """Milliseconds between consecutive deltas of the same response, as the client read them."""
    last: dict[str, float] = {}
    gaps: list[float] = []
    for m, at in zip(peer.messages, peer.arrivals, strict=True):
        if m.get("type") != "response.delta":
            continue
        rid = m["response_id"]
        if rid in last:
            gaps.append((at - last[rid]) * 1000.0)
        last[rid] = at
    return gaps


# ---- the client process --------------------------------------------------------------------------


class ClientProcess:
    """The chaos clients' process, spoken to in JSON lines (see support.chaos_clients)."""

    def __init__(
        self, proc: asyncio.subprocess.Process, stt: SttEmulator, say: Callable[[str], None]
    ) -> None:
        self.proc = proc
        self.stt = stt
        self.say = say
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.ready = asyncio.Event()
        self.report: dict[str, Any] | None = None
        self.stderr_tail: list[str] = []
        self.tasks = {
            asyncio.create_task(self._read_stdout(), name="chaos clients stdout"),
            asyncio.create_task(self._read_stderr(), name="chaos clients stderr"),
        }

    @classmethod
    async def start(cls, stt: SttEmulator, say: Callable[[str], None]) -> ClientProcess:
        env = dict(os.environ)
        paths = [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from support.chaos_clients import main; main()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
            limit=1 << 26,  # a line is one message; the last ones name every session made
        )
        return cls(proc, stt, say)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")

    async def _read_stdout(self) -> None:
        reason = "the chaos clients' process ended early"
        try:
            await self._dispatch()
        except Exception as exc:
            reason = f"reading the chaos clients' messages failed: {exc!r}"
            raise
        finally:  # whatever ended the reading, nobody waits for a message that cannot come
            if not self.done.done():
                self.done.set_exception(RuntimeError(reason))
            self.ready.set()

    async def _dispatch(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = orjson.loads(line)
            if "fail_next" in message:
                code, text = message["fail_next"]
                self.stt.fail_next(int(code), str(text))
            elif "progress" in message:
                self.say(message["progress"])
            elif "done" in message and not self.done.done():
                self.done.set_result(message["done"])
            elif "ready" in message:
                self.ready.set()
            elif "report" in message:
                self.report = message["report"]

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_tail = [*self.stderr_tail[-40:], line.decode(errors="replace").rstrip()]

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit (killed after `timeout`); its return code."""
        try:
            async with asyncio.timeout(timeout):
                rc = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await task
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait(5)


# ---- the run ---------------------------------------------------------------------------------------


async def run_chaos(
    config: ChaosConfig, progress: Callable[[str], None] | None = None
) -> ChaosReport:
    """The whole scenario; it reports what it finds (`ChaosReport.problems`), never raises it."""
    say = progress or (lambda _line: None)
    report = ChaosReport(config)
    wall = time.perf_counter()
    async with (
        GatewayEmulator(
            host="127.0.0.1",
            port=0,
            token_delay=config.token_delay,
            reply_words=config.reply_words,
            max_recorded=100,  # it keeps request bodies: megabytes each for a stalled reader
        ) as gateway_emu,
        SttEmulator(
            script=["hello there", "how are you", "what is the weather like today"],
            word_ms=150,
            silence_ms=300,
        ) as stt_emu,
    ):
        emulators = (gateway_emu, stt_emu)
        tasks_before = snapshot_tasks()
        report.fds_before = open_fds()
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            write_timeout_s=config.write_timeout_s,
            max_connections=config.max_connections,
            stt_url=stt_emu.url + "/v3/ws",
            stt_api_key=None,
            default_config=_session_defaults(config),
        )
        async with contextlib.AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(
                GatewayClient(base_url=gateway_emu.base_url, api_key=None, max_retries=0)
            )
            http = await stack.enter_async_context(aiohttp.ClientSession())
            server = Server(settings, gateway)
            stack.push_async_callback(server.stop)  # stopped below; again here if that failed
            await server.start()
            control = Control(config, http, server.port)

            say(
                f"server on port {server.port}; the control session alone: {config.solo_turns} turns"
            )
            async with _measured(report.loop_lag_solo_ms) as report.load_solo:
                await control.run(
                    asyncio.Event(), turns=config.solo_turns, gaps=report.solo_gaps_ms
                )

            clients = await ClientProcess.start(stt_emu, say)
            stack.push_async_callback(clients.kill)
            # What the server keeps while it runs is its own; the pipe readers are ours.
            tasks_running = snapshot_tasks()
            started = time.perf_counter()
            stop_control = asyncio.Event()
            async with _measured(report.loop_lag_chaos_ms) as report.load_chaos:
                control_task = asyncio.create_task(
                    control.run(stop_control, turns=None, gaps=report.chaos_gaps_ms)
                )
                while control.session_id is None and not control_task.done():
                    await asyncio.sleep(0.01)
                clients.send(
                    {"config": asdict(config), "port": server.port, "control": control.session_id}
                )
                say(f"chaos: {config.lifecycles} lifecycles, {config.concurrency} at a time")
                try:
                    done = await clients.done
                except RuntimeError as exc:
                    done = {}
                    report.process_problems.append(f"{exc}:\n" + "\n".join(clients.stderr_tail))
                stop_control.set()
                await control_task
            report.chaos_s = time.perf_counter() - started
            report.control_problems = control.problems

            # Every client has left (the stalled ones still connected were on sessions that
            # have ended): the running server must hold nothing now, not only after stop().
            report.while_running = await wait_released(
                server,
                emulators=emulators,
                baseline_tasks=tasks_running,
                deadline=config.release_deadline_s,
                phase="every lifecycle over, server running",
            )
            made = done.get("made", {})
            report.held_sessions = {
                sid: made.get(sid, _V3_SESSION) for sid in list(getattr(server, "sessions", {}))
            }

            say("clients connected, some stalled; stopping the server")
            clients.send({"cmd": "at_stop"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await clients.ready.wait()
            report.residue_before_stop = dict(server.residue())
            await server.stop()
            report.after_stop = await wait_released(
                server,
                emulators=emulators,
                baseline_tasks=tasks_before | clients.tasks,
                deadline=config.release_deadline_s,
                phase="after server.stop()",
            )
            clients.send({"cmd": "finish"})
            rc = await clients.wait(60)
            if clients.report is not None:
                report.clients = Findings.from_json(clients.report)
            if rc != 0 or clients.report is None:
                report.process_problems.append(
                    f"the chaos clients' process exited with {rc}"
                    + ("" if clients.report is not None else " without a report")
                    + ":\n"
                    + "\n".join(clients.stderr_tail)
                )
        # the gateway pool and the control's client session are closed too: count fds
        report.fds_after = await _settled_fds(report.fds_before + config.fd_slack, 5.0)
    report.wall_s = time.perf_counter() - wall
    return report


def _session_defaults(config: ChaosConfig) -> SessionConfig:
    overrides: dict[str, object] = {"model": "gpt-4.1"}
    if "resume_window_ms" in {f.name for f in fields(SessionConfig)}:
        overrides["resume_window_ms"] = config.resume_window_ms
    return SessionConfig.from_defaults(**overrides)


@contextlib.asynccontextmanager
async def _measured(lags: list[float]) -> AsyncIterator[Load]:
    """Sample the loop's lag into `lags` while the block runs; the `Load` is filled after."""

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - t - 0.005) * 1000.0)

    load = Load()
    task = asyncio.create_task(probe(), name="chaos loop-lag probe")
    wall, (ran, waited) = time.perf_counter(), _schedstat()
    try:
        yield load
    finally:
        elapsed = max(1e-9, time.perf_counter() - wall)
        ran_after, waited_after = _schedstat()
        load.cpu, load.waiting = (ran_after - ran) / elapsed, (waited_after - waited) / elapsed
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _schedstat() -> tuple[float, float]:
    """This thread's seconds on a CPU and waiting for one (Linux; zeros elsewhere)."""
    for path in ("/proc/thread-self/schedstat", "/proc/self/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(path) as f:
                ran, waited = f.read().split()[:2]
            return int(ran) / 1e9, int(waited) / 1e9
    return 0.0, 0.0


async def _settled_fds(limit: int, deadline: float) -> int:
    start = time.monotonic()
    while True:
        count = open_fds()
        if count <= limit or time.monotonic() - start >= deadline:
            return count
        await asyncio.sleep(0.05)
