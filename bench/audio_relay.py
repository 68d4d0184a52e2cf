"""Audio relay overhead: binary frame in on /v1/realtime -> frame forwarded upstream.

A minimal upstream speech-to-text stand-in (in this process) timestamps every binary frame it
receives; each frame carries its sequence number and send time in its first 16 bytes. The
service runs in its own process (`python -m realtime serve --stt-url ws://...`). Side by side
in one run, interleaved: the same clients send the same 50 ms frames, at real-time pace,
(1) through the service and (2) straight to the stand-in (the baseline). Reported: relay
latency p50/p99 for each and their ratio, at 1 and at 100 concurrent sessions, and the
service's CPU time per session-second of audio (from /proc/PID/stat).

    python bench/audio_relay.py                 # 1 and 100 sessions, 8 s of audio each
    python bench/audio_relay.py --seconds 4     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parents[1]
FRAME_BYTES = 1600  # 50 ms of 16 kHz s16le mono
HEADER = struct.Struct("<qd")  # sequence number, client send time (perf_counter)


class Upstream:
    """Records the arrival time of every tagged frame; speaks just enough of v3."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    async def handler(self, ws: ServerConnection) -> None:
        try:
            await self._serve(ws)
        except ConnectionClosed:
            pass  # the client left first: nothing to record

    async def _serve(self, ws: ServerConnection) -> None:
        await ws.send(orjson.dumps({"type": "Begin", "id": "bench", "expires_at": 0}).decode())
        async for message in ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                _, sent = HEADER.unpack_from(message)
                if sent > 0:
                    self.latencies.append((now - sent) * 1000)
            elif '"Terminate"' in message:
                await ws.send(
                    '{"type":"Termination","audio_duration_seconds":0,"session_duration_seconds":0}'
                )
                await ws.close()
                return


def frame(seq: int) -> bytes:
    return HEADER.pack(seq, time.perf_counter()) + bytes(FRAME_BYTES - HEADER.size)


async def via_service(http: aiohttp.ClientSession, url: str, seconds: float) -> None:
    async with http.ws_connect(url) as ws:
        await ws.receive()  # session.created
        start = time.perf_counter()
        for seq in range(int(seconds * 20)):
            await ws.send_bytes(frame(seq))
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.05 - time.perf_counter()))
        await asyncio.sleep(0.3)


async def direct(http: aiohttp.ClientSession, url: str, seconds: float) -> None:
    async with http.ws_connect(url) as ws:
        await ws.receive()  # Begin
        start = time.perf_counter()
        for seq in range(int(seconds * 20)):
            await ws.send_bytes(frame(seq))
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.05 - time.perf_counter()))
        await ws.send_str('{"type":"Terminate"}')


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per session")
    parser.add_argument("--sessions", default="1,100", help="comma-separated session counts")
    args = parser.parse_args()
    upstream = Upstream()
    async with serve(upstream.handler, "127.0.0.1", 0, max_size=None) as stt_server:
        stt_port = stt_server.sockets[0].getsockname()[1]
        stt_url = f"ws://127.0.0.1:{stt_port}/v3/ws"
        port = free_port()
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
            [
                sys.executable,
                "-m",
                "realtime",
                "serve",
                "--port",
                str(port),
                "--stt-url",
                stt_url,
                "--gateway-url",
                "http://127.0.0.1:9/v1",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(2.0)
            service_url = f"ws://127.0.0.1:{port}/v1/realtime"
            print(
                f"python {sys.version.split()[0]}, {args.seconds:g} s of 50 ms frames per session"
            )
            print("| sessions | path | p50 ms | p99 ms | ratio p50 | ratio p99 | frames |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                for n in (int(x) for x in args.sessions.split(",")):
                    rows = {}
                    cpu = 0.0
                    for path in ("service", "direct", "direct", "service"):  # ABBA
                        upstream.latencies = []
                        before = cpu_seconds(proc.pid)
                        if path == "service":
                            await asyncio.gather(
                                *(via_service(http, service_url, args.seconds) for _ in range(n))
                            )
                            cpu += cpu_seconds(proc.pid) - before
                        else:
                            await asyncio.gather(
                                *(direct(http, stt_url, args.seconds) for _ in range(n))
                            )
                        rows.setdefault(path, []).extend(upstream.latencies)
                    s, d = rows["service"], rows["direct"]
                    for path, vals in (("service", s), ("direct", d)):
                        r50 = pct(s, 0.5) / pct(d, 0.5) if path == "service" else 1.0
                        r99 = pct(s, 0.99) / pct(d, 0.99) if path == "service" else 1.0
                        print(
                            f"| {n} | {path} | {pct(vals, 0.5):.2f} | {pct(vals, 0.99):.2f} | "
                            f"{r50:.2f} | {r99:.2f} | {len(vals)} |"
                        )
                    per = cpu / (2 * n * args.seconds) * 1000
                    print(
                        f"| {n} | service CPU per session-second of audio | {per:.2f} ms | | | | |"
                    )
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)


if __name__ == "__main__":
    asyncio.run(main())
