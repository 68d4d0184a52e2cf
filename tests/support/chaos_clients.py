"""The chaos clients: randomized, misbehaving lifecycles, run in a process of their own.

`python -c "from support.chaos_clients import main; main()"` (tests/ on the path) is started
by `support.chaos.run_chaos`, which keeps the server, the emulators and the control session
in its own process: what the clients cost (parsing every frame they read, masking what they
send) does not load the server's event loop, and the server process's file descriptors are
the server's own.

The parent talks to this process in JSON lines. On stdin: first the setup
(`{"config": {...}, "port": P, "control": SESSION_ID}`), then `{"cmd": "at_stop"}` and
`{"cmd": "finish"}`. On stdout: `{"progress": "..."}`, `{"fail_next": [code, message]}` (the
parent makes the speech-to-text emulator fail its next session), `{"done": {...}}` when every
lifecycle is over, `{"ready": true}` once the clients meant to be connected during
`server.stop()` are, and `{"report": {...}}` at the end. Nothing else is written to stdout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import struct
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from support.audio import tone
from support.service import TERMINALS, assert_guarantees, turn

# kind -> weight in the random mix
KINDS: dict[str, float] = {
    "turns_then_drop": 3.0,
    "turns_then_terminate": 3.0,
    "audio_v3_drop": 2.0,
    "audio_v1": 1.5,
    "audio_stt_failure": 1.0,
    "stalled_viewer": 1.5,
    "stalled_participant": 1.5,
    "viewers_join_while_ending": 1.0,
    "concurrent_creators": 1.0,
    "deep_update": 0.5,
    "huge_update": 0.5,
}

WELL_BEHAVED_WAIT_S = 20.0  # a client that did everything right gets its close within this
STALL_RCVBUF = 4096  # the kernel doubles it; a peer that never reads fills up fast
# A peer that never reads announces the segment size of a real network (Ethernet): with
# loopback's 64 KiB segments, the kernel would autotune the server's send buffer to about
# 3 MB for it, and with 1460-byte ones to about 75 KB, as it would for a remote client.
STALL_MSS = 1460
# What a stalled participant asks for in all (long replies it never reads): well over what
# the server's buffers hold for it, so the server's writes block and its write deadline fires.
STALL_BYTES = 400_000
# A /v3/ws client may get the failure another lifecycle asked the speech-to-text emulator
# for: its close code is then forwarded from upstream.
STT_FAILURES = (3005, 3006, 3007, 3008, 1008)
V3_CLOSE_CODES = (1000, *STT_FAILURES)
_WORDS = "paris london rain sunny coffee meeting budget robot river music".split()


def kinds_for(seed: int, n: int) -> list[str]:
    """The seeded mix: the same seed gives the same kinds in the same order."""
    return random.Random(seed).choices(list(KINDS), weights=list(KINDS.values()), k=n)


def terminal_for(turn_order: int) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the terminal message of a response to turn `turn_order`."""
    return lambda m: m.get("type") in TERMINALS and m.get("turn_order") == turn_order


def long_text(rng: random.Random, words: int, word_chars: int) -> str:
    """A turn whose reply (the gateway emulator echoes it) is about words * word_chars bytes."""
    return " ".join(rng.choice(_WORDS)[0] * word_chars for _ in range(words))


# ---- clients ---------------------------------------------------------------------------------


class Peer:
    """A WebSocket client over aiohttp that reads (and records) everything until the close."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> None:
        self.ws = ws
        self.name = name
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name=f"chaos-client {name}")

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(orjson.loads(frame.data))
                    self.arrivals.append(time.perf_counter())
                    self._changed.set()
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    @property
    def done(self) -> bool:
        return self._task.done()

    def types(self) -> list[str]:
        return [m.get("type", "?") for m in self.messages]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """True once a recorded message matches; False at the timeout or the close."""
        seen = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    for m in self.messages[seen:]:
                        if predicate(m):
                            return True
                    seen = len(self.messages)
                    if self.done:
                        return False
                    self._changed.clear()
                    await self._changed.wait()
        return False

    async def wait_closed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        return self.done

    async def send(self, message: dict[str, Any]) -> bool:
        return await self.send_raw(orjson.dumps(message).decode())

    async def send_raw(self, text: str) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        return True

    async def send_bytes(self, data: bytes) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_bytes(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        return True

    def abort(self) -> None:
        """Drop the TCP connection: no close frame (a crashed client, a lost network)."""
        conn = getattr(self.ws, "_conn", None)
        transport = getattr(conn, "transport", None) or self.ws._writer.transport
        if transport is not None:
            transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()
        if not self.done:
            self.abort()
        await self.wait_closed(5)


class StalledSocket:
    """A WebSocket client on a raw socket: completes the handshake, then never reads again."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, *, rcvbuf: int = STALL_RCVBUF, mss: int = STALL_MSS
    ) -> tuple[StalledSocket | None, int]:
        """(the socket, 101), or (None, the refusal's HTTP status; 0 if it failed to connect)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # before connect: the window and the segment size are announced in the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, (host, port))
                key = base64.b64encode(os.urandom(16)).decode()
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                )
                await loop.sock_sendall(sock, request.encode())
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        break
                    head += chunk
        except (OSError, TimeoutError):
            sock.close()
            return None, 0
        parts = head.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            sock.close()
            return None, status
        return cls(sock), status

    async def send_text(self, payload: bytes) -> bool:
        """One masked text frame; False once the server has dropped the connection."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10):
                await loop.sock_sendall(self.sock, client_frame(0x1, payload))
        except (OSError, TimeoutError):
            return False
        return True

    def close(self, *, reset: bool = False) -> None:
        if self.sock.fileno() < 0:
            return
        if reset:  # RST instead of FIN
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    head = bytearray([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    key = os.urandom(4)
    if not n:
        return bytes(head) + key
    keys = (key * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")
    return bytes(head) + key + masked.to_bytes(n, "little")


# ---- what the clients found --------------------------------------------------------------------


@dataclass
class Findings:
    """The client side of the report (sent to the parent as JSON)."""

    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    transcripts_checked: int = 0
    made: dict[str, str] = field(default_factory=dict)  # session id -> the kind that made it

    def note(self, kind: str, problem: str) -> None:
        self.problems[kind].append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": dict(self.kinds),
            "outcomes": {k: dict(v) for k, v in self.outcomes.items()},
            "problems": dict(self.problems),
            "transcripts_checked": self.transcripts_checked,
            "made": self.made,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Findings:
        f = cls()
        f.kinds.update(data.get("kinds", {}))
        for kind, outs in data.get("outcomes", {}).items():
            f.outcomes[kind].update(outs)
        for kind, items in data.get("problems", {}).items():
            f.problems[kind].extend(items)
        f.transcripts_checked = int(data.get("transcripts_checked", 0))
        f.made.update(data.get("made", {}))
        return f


def check_transcript(findings: Findings, kind: str, peer: Peer) -> None:
    """Guarantees 1-2 on the transcript of a client that read to its close."""
    findings.transcripts_checked += 1
    try:
        assert_guarantees(peer.messages)
    except AssertionError as exc:
        findings.note(kind, f"{peer.name}: guarantee 1/2 broken: {exc}")


# ---- the lifecycles --------------------------------------------------------------------------


class Lifecycles:
    """The kinds of client lifecycle (one method each, named as in `KINDS`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        seed: int,
        http: aiohttp.ClientSession,
        findings: Findings,
        fail_next: Callable[[int, str], None],
        control: str | None,
    ) -> None:
        self.host, self.port, self.seed = host, port, seed
        self.http = http
        self.findings = findings
        self.fail_next = fail_next
        self.live: dict[str, str] = {}  # session id -> kind, while its lifecycle runs
        if control:
            self.live[control] = "control"  # stalled viewers may join the control session
        self.parked: list[StalledSocket | Peer] = []  # left connected for server.stop()

    # ---- connecting ----

    async def connect(self, path: str, name: str) -> Peer | int:
        """A Peer, or the HTTP status of the refusal (0: the connection failed)."""
        url = f"ws://{self.host}:{self.port}{path}"
        try:
            async with asyncio.timeout(10):
                ws = await self.http.ws_connect(url, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0
        return Peer(ws, name)

    async def participant(
        self, kind: str, name: str, query: str = ""
    ) -> tuple[Peer | None, str | None, str]:
        """A /v1/realtime participant that got `session.created`: (peer, session id, outcome)."""
        got = await self.connect("/v1/realtime" + (f"?{query}" if query else ""), name)
        if isinstance(got, int):
            return None, None, f"refused {got}"
        if not await got.wait_for(lambda m: m.get("type") == "session.created", 10):
            await got.close()
            return None, None, "no session.created"
        sid = next(m["session_id"] for m in got.messages if m.get("type") == "session.created")
        self.findings.made.setdefault(sid, kind)
        return got, sid, "ok"

    async def finish(self, kind: str, peer: Peer, *, expect: tuple[int, ...] = (1000,)) -> str:
        """Wait for the server to close a well-behaved client; check what it read."""
        if not await peer.wait_closed(WELL_BEHAVED_WAIT_S):
            self.findings.note(
                kind,
                f"{peer.name}: no close within {WELL_BEHAVED_WAIT_S:g} s "
                f"(last messages {peer.types()[-6:]})",
            )
            peer.abort()
            await peer.wait_closed(5)
            return "hung"
        check_transcript(self.findings, kind, peer)
        if peer.close_code not in expect:
            return f"closed {peer.close_code} (expected {'/'.join(map(str, expect))})"
        return f"closed {peer.close_code}"

    # ---- input ----

    async def converse(self, peer: Peer, rng: random.Random, turns: int, *, text: str) -> None:
        """Turns with partials, barge-ins and cancels at random offsets into each reply."""
        if rng.random() < 0.5:
            await peer.send(
                {
                    "type": "session.update",
                    "session": {
                        "on_new_turn": rng.choice(["cancel", "supersede", "keep"]),
                        "trigger": rng.choice(["end_of_turn", "end_of_turn", "formatted", "eager"]),
                    },
                }
            )
        for order in range(turns):
            said = f"{text} {order} " + " ".join(
                rng.choice(_WORDS) for _ in range(rng.randint(1, 8))
            )
            if rng.random() < 0.4:
                partial = " ".join(said.split()[:2])
                await peer.send(turn(order, partial, final=False, utterance=partial))
            await peer.send(turn(order, said))
            if rng.random() < 0.3:
                await peer.send(turn(order, said.capitalize() + ".", formatted=True))
            await asyncio.sleep(rng.uniform(0.0, 0.08))  # a random offset into the reply
            action = rng.random()
            if action < 0.25:
                await peer.send({"type": "SpeechStarted", "timestamp": 100 * order})
            elif action < 0.4:
                await peer.send({"type": "response.cancel"})
            elif action < 0.55:
                pass  # the next turn comes at once: a barge-in by a newer turn
            else:
                await peer.wait_for(terminal_for(order), 2.0)

    async def send_audio(self, peer: Peer, rng: random.Random, seconds: float) -> None:
        """PCM16 at 16 kHz: silence and loud bursts, sometimes in real time, sometimes at once."""
        sent = 0.0
        while sent < seconds and not peer.done:
            span = rng.uniform(0.2, 0.8)
            paced = rng.random() < 0.6
            for frame in tone(span, rng.random() < 0.5):
                if not await peer.send_bytes(frame):
                    return
                if paced:
                    await asyncio.sleep(0.05)
            sent += span
            if not paced:
                await asyncio.sleep(span / 2)

    # ---- the kinds ----

    async def turns_then_drop(self, kind: str, i: int, rng: random.Random) -> str:
        peer, sid, outcome = await self.participant(kind, f"{kind}#{i}")
        if peer is None or sid is None:
            return outcome
        self.live[sid] = kind
        try:
            await self.converse(peer, rng, rng.randint(1, 4), text="tell me more about")
            await asyncio.sleep(rng.uniform(0.0, 0.1))
        finally:
            self.live.pop(sid, None)
            peer.abort()  # no Termination, no close frame
            await peer.wait_closed(5)
        return "dropped"

    async def turns_then_terminate(self, kind: str, i: int, rng: random.Random) -> str:
        peer, sid, outcome = await self.participant(kind, f"{kind}#{i}")
        if peer is None or sid is None:
            return outcome
        self.live[sid] = kind
        try:
            await self.converse(peer, rng, rng.randint(1, 5), text="what about")
            await peer.send({"type": "Termination"})
            return await self.finish(kind, peer)
        finally:
            self.live.pop(sid, None)

    async def audio_v3_drop(self, kind: str, i: int, rng: random.Random) -> str:
        query = "sample_rate=16000"
        if rng.random() < 0.5:
            llm = {
                "model": "gpt-4.1",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "{{turn}}"}],
            }
            query += "&llm_gateway=" + quote(orjson.dumps(llm).decode())
        if rng.random() < 0.5:
            query += "&stream_llm=true"
        got = await self.connect("/v3/ws?" + query, f"{kind}#{i}")
        if isinstance(got, int):
            return f"refused {got}"
        await got.wait_for(lambda m: m.get("type") == "Begin", 10)
        await self.send_audio(got, rng, rng.uniform(0.3, 2.5))
        if rng.random() < 0.2:
            await got.send({"type": "Terminate"})
            return await self.finish(kind, got, expect=V3_CLOSE_CODES)
        got.abort()  # no Terminate
        await got.wait_closed(5)
        return "dropped"

    async def audio_v1(self, kind: str, i: int, rng: random.Random) -> str:
        peer, sid, outcome = await self.participant(kind, f"{kind}#{i}")
        if peer is None or sid is None:
            return outcome
        self.live[sid] = kind
        try:
            await self.send_audio(peer, rng, rng.uniform(0.3, 2.5))
            if rng.random() < 0.3:
                await peer.send({"type": "Termination"})
                return await self.finish(kind, peer)
            peer.abort()
            await peer.wait_closed(5)
            return "dropped"
        finally:
            self.live.pop(sid, None)

    async def audio_stt_failure(self, kind: str, i: int, rng: random.Random) -> str:
        """Audio while speech-to-text fails (the next upstream session the server opens)."""
        code = rng.choice(STT_FAILURES)
        self.fail_next(code, f"chaos: upstream fails with {code}")
        sid: str | None = None
        if rng.random() < 0.5:
            got = await self.connect("/v3/ws?sample_rate=16000", f"{kind}#{i}")
            if isinstance(got, int):
                return f"refused {got}"
            peer = got
        else:
            maybe, sid, outcome = await self.participant(kind, f"{kind}#{i}")
            if maybe is None:
                return outcome
            peer = maybe
        try:
            await self.send_audio(peer, rng, rng.uniform(0.3, 1.5))
            if await peer.wait_closed(rng.uniform(0.5, 3.0)):
                check_transcript(self.findings, kind, peer)
                return f"closed {peer.close_code}"
            peer.abort()  # the failure went to another session; this one leaves abruptly
            await peer.wait_closed(5)
            return "dropped"
        finally:
            if sid is not None:
                self.live.pop(sid, None)

    async def stalled_viewer(self, kind: str, i: int, rng: random.Random) -> str:
        """Viewers that never read, on a session streaming long replies (or on another one)."""
        owner: Peer | None = None
        if rng.random() < 0.3 and self.live:
            sid: str | None = rng.choice(sorted(self.live))
        else:
            owner, sid, outcome = await self.participant(kind, f"{kind}#{i}-owner")
            if owner is None:
                return outcome
        assert sid is not None
        stalled: list[StalledSocket] = []
        refused = 0
        for _ in range(rng.randint(1, 3)):
            sock, _ = await StalledSocket.open(
                self.host, self.port, f"/v1/realtime?role=viewer&session_id={sid}"
            )
            if sock is None:
                refused += 1
            else:
                stalled.append(sock)
        if owner is not None:
            self.live[sid] = kind
            try:
                for order in range(rng.randint(1, 3)):
                    await owner.send(turn(order, long_text(rng, 120, 2500)))
                    await owner.wait_for(terminal_for(order), 15)
                await owner.send({"type": "Termination"})
                outcome = await self.finish(kind, owner)
            finally:
                self.live.pop(sid, None)
        else:
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            outcome = f"joined a {self.live.get(sid, 'finished')} session"
        for sock in stalled:
            if owner is not None and rng.random() < 0.25:
                self.parked.append(sock)  # connected (and stalled) until after server.stop()
            else:
                sock.close(reset=rng.random() < 0.5)
        return outcome + (f", {refused} refused" if refused else "")

    async def stalled_participant(self, kind: str, i: int, rng: random.Random) -> str:
        """A participant asking for long replies, never reading them."""
        sock, status = await StalledSocket.open(self.host, self.port, "/v1/realtime")
        if sock is None:
            return f"refused {status}"
        # per_turn: replies run side by side (up to max_inflight), none cancels another
        update = {"type": "session.update", "session": {"preset": "per_turn"}}
        turns = rng.randint(1, 3)
        sent = 0
        if await sock.send_text(orjson.dumps(update)):
            for order in range(turns):
                said = turn(order, long_text(rng, STALL_BYTES // turns // 2501, 2500))
                said["words"] = []  # the transcript alone: the frame stays small
                if not await sock.send_text(orjson.dumps(said)):
                    break
                sent += 1
        parked = rng.random() < 0.25
        if parked:
            self.parked.append(sock)  # the server must release it all the same
        else:
            await asyncio.sleep(rng.uniform(0.2, 3.0))  # before or after the server gives up
            sock.close(reset=rng.random() < 0.5)
        return f"sent {sent} of {turns} long turns" + (", parked" if parked else "")

    async def viewers_join_while_ending(self, kind: str, i: int, rng: random.Random) -> str:
        """Viewers connect while the session ends: before, during and after its end."""
        owner, sid, outcome = await self.participant(kind, f"{kind}#{i}-owner")
        if owner is None or sid is None:
            return outcome
        # a reply of a few hundred ms, so that a Termination has something to wait for
        await owner.send(turn(0, "the session is about to end " + long_text(rng, 150, 5)))
        await owner.wait_for(lambda m: m.get("type") == "response.delta", 5)
        ending = rng.choice(["terminate", "terminate", "drop"])
        end_at = rng.uniform(0.0, 0.1)

        async def viewer(n: int) -> Peer | int:
            await asyncio.sleep(max(0.0, end_at + rng.uniform(-0.1, 0.3)))
            return await self.connect(
                f"/v1/realtime?role=viewer&session_id={sid}", f"{kind}#{i}-viewer{n}"
            )

        joining = [asyncio.create_task(viewer(n)) for n in range(rng.randint(2, 5))]
        await asyncio.sleep(end_at)
        if ending == "terminate":
            await owner.send({"type": "Termination"})
        else:
            owner.abort()
        viewers = await asyncio.gather(*joining)
        refused = sum(1 for v in viewers if isinstance(v, int))
        for v in viewers:
            if isinstance(v, Peer):
                await self.finish(kind, v, expect=(1000, 1001))
        if ending == "terminate":
            await self.finish(kind, owner)
        else:
            await owner.wait_closed(5)
        return f"{ending}: {len(viewers) - refused} joined, {refused} refused"

    async def concurrent_creators(self, kind: str, i: int, rng: random.Random) -> str:
        sid = f"chaos-{self.seed}-{i}"
        n = rng.randint(2, 5)
        results = await asyncio.gather(
            *(self.participant(kind, f"{kind}#{i}-{k}", f"session_id={sid}") for k in range(n))
        )
        peers = [p for p, _, _ in results if p is not None]
        if not peers:
            return "all refused"
        self.live[sid] = kind
        try:
            talker = rng.choice(peers)
            await self.converse(talker, rng, rng.randint(1, 3), text="who created this")
            ending = rng.choice(["terminate", "drop_one", "drop_all"])
            if ending == "terminate":
                await rng.choice(peers).send({"type": "Termination"})
            elif ending == "drop_one":
                dropped = rng.choice(peers)
                dropped.abort()
                peers.remove(dropped)
                await asyncio.sleep(rng.uniform(0.0, 0.2))
                if peers:
                    await rng.choice(peers).send({"type": "Termination"})
            else:
                for p in peers:
                    p.abort()
                peers = []
            for p in peers:
                await self.finish(kind, p)
            return f"{ending} ({len(results)} creators)"
        finally:
            self.live.pop(sid, None)

    async def deep_update(self, kind: str, i: int, rng: random.Random) -> str:
        depth = rng.randint(250, 350)
        # Written out by hand: orjson refuses to serialize more than 254 levels.
        opens = [rng.choice(['{"a":', "["]) for _ in range(depth)]
        closes = "".join("}" if o.startswith("{") else "]" for o in reversed(opens))
        name = rng.choice(["metadata", "tools", "response_format", "fallbacks"])
        frame = f'{{"type":"session.update","session":{{"{name}":{"".join(opens)}{{}}{closes}}}}}'
        return await self._bad_update(kind, i, rng, frame, f"{name} {depth} deep")

    async def huge_update(self, kind: str, i: int, rng: random.Random) -> str:
        size = rng.choice([900_000, 1_040_000, 1_048_000, 1_100_000])  # the frame limit: 1 MiB
        name = rng.choice(["instructions", "metadata", "prompt"])
        value: Any = "x" * size if name != "metadata" else {"blob": "y" * size}
        frame = orjson.dumps({"type": "session.update", "session": {name: value}}).decode()
        return await self._bad_update(kind, i, rng, frame, f"{name} {size // 1000} kB")

    async def _bad_update(
        self, kind: str, i: int, rng: random.Random, frame: str, what: str
    ) -> str:
        peer, sid, outcome = await self.participant(kind, f"{kind}#{i}")
        if peer is None or sid is None:
            return outcome
        self.live[sid] = kind
        try:
            await peer.send_raw(frame)
            answered = await peer.wait_for(
                lambda m: m.get("type") in ("error", "session.updated"), 10
            )
            if peer.done:  # over the frame limit: closed 1009
                check_transcript(self.findings, kind, peer)
                return f"{what}: closed {peer.close_code}"
            if not answered:
                self.findings.note(kind, f"{peer.name}: no answer to a {what} session.update")
            answer = next(
                (m for m in peer.messages if m.get("type") in ("error", "session.updated")), {}
            )
            code = (answer.get("error") or {}).get("code", answer.get("type", "nothing"))
            await self.converse(peer, rng, 1, text="still there")
            await peer.send({"type": "Termination"})
            return f"{what}: {code}, {await self.finish(kind, peer)}"
        finally:
            self.live.pop(sid, None)

    # ---- the end ----

    async def at_stop(self, rng: random.Random, n: int) -> None:
        """Clients connected when the server stops: stalled ones, and some mid-reply."""
        for k in range(n):
            sock, _ = await StalledSocket.open(self.host, self.port, "/v1/realtime")
            if sock is not None:
                said = turn(0, long_text(rng, STALL_BYTES // 2501, 2500))
                said["words"] = []
                await sock.send_text(orjson.dumps(said))
                self.parked.append(sock)
            peer, sid, _ = await self.participant("at_stop", f"at_stop#{k}")
            if peer is not None and sid is not None:
                await peer.send(turn(0, long_text(rng, 400, 6)))
                self.parked.append(peer)
                viewer, _ = await StalledSocket.open(
                    self.host, self.port, f"/v1/realtime?role=viewer&session_id={sid}"
                )
                if viewer is not None:
                    self.parked.append(viewer)
            audio = await self.connect("/v3/ws?sample_rate=16000", f"at_stop-v3#{k}")
            if isinstance(audio, Peer):
                for frame in tone(0.3, True):
                    await audio.send_bytes(frame)
                self.parked.append(audio)
        await asyncio.sleep(0.3)  # the replies are streaming, into the stalled sockets too

    async def after_stop(self) -> None:
        """Every reading client left connected was closed by `server.stop()`; then close all."""
        for item in self.parked:
            if isinstance(item, Peer):
                if not await item.wait_closed(5):
                    self.findings.note("at_stop", f"{item.name}: still open after server.stop()")
                    outcome = "still open"
                else:
                    check_transcript(self.findings, "at_stop", item)
                    outcome = f"closed {item.close_code}"
                self.findings.outcomes["at_stop"][outcome] += 1
        for item in self.parked:
            if isinstance(item, StalledSocket):
                item.close()
            else:
                await item.close()
        self.parked.clear()


# ---- the process -----------------------------------------------------------------------------


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _expect(reader: asyncio.StreamReader, cmd: str) -> None:
    line = await reader.readline()
    if not line:
        raise SystemExit(f"chaos clients: the parent left before {cmd!r}")
    got = orjson.loads(line)
    if got.get("cmd") != cmd:
        raise SystemExit(f"chaos clients: expected {cmd!r}, got {got!r}")


async def run(reader: asyncio.StreamReader) -> None:
    setup = orjson.loads(await reader.readline())
    config: dict[str, Any] = setup["config"]
    seed, n = int(config["seed"]), int(config["lifecycles"])
    findings = Findings()
    kinds = kinds_for(seed, n)
    findings.kinds.update(kinds)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        life = Lifecycles(
            host=setup.get("host", "127.0.0.1"),
            port=int(setup["port"]),
            seed=seed,
            http=http,
            findings=findings,
            fail_next=lambda code, message: _say({"fail_next": [code, message]}),
            control=setup.get("control"),
        )
        gate = asyncio.Semaphore(int(config["concurrency"]))
        limit_s = float(config["max_lifecycle_s"])
        finished = [0]

        async def one(i: int, kind: str) -> None:
            rng = random.Random(f"{seed}/{i}")
            async with gate:
                method: Callable[[str, int, random.Random], Awaitable[str]] = getattr(life, kind)
                try:
                    async with asyncio.timeout(limit_s):
                        outcome = await method(kind, i, rng)
                except TimeoutError:
                    outcome = "hung"
                    findings.note(kind, f"{kind}#{i}: not over within {limit_s:g} s")
                except Exception as exc:  # a finding, not the end of the run
                    outcome = f"raised {type(exc).__name__}"
                    findings.note(kind, f"{kind}#{i}: raised {type(exc).__name__}: {exc}")
                findings.outcomes[kind][outcome] += 1
                finished[0] += 1
                if finished[0] % 50 == 0:
                    _say({"progress": f"{finished[0]} / {n} lifecycles over"})

        async with asyncio.TaskGroup() as tg:
            for i, kind in enumerate(kinds):
                tg.create_task(one(i, kind), name=f"chaos lifecycle {kind}#{i}")
        _say({"done": {"made": findings.made}})
        await _expect(reader, "at_stop")
        await life.at_stop(random.Random(f"{seed}/stop"), int(config["parked_at_stop"]))
        _say({"ready": True})
        await _expect(reader, "finish")
        await life.after_stop()
    _say({"report": findings.to_json()})


def main() -> None:
    # The clients stand for the outside world: when they and the server want the same CPU,
    # the server goes first, so that its timings are its own.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)

    async def go() -> None:
        await run(await _lines())

    asyncio.run(go())
