"""Consumer CPU per streamed chunk: gateway_client vs the official openai SDK.

The same long stream (``--words`` chunks, default 2,000, token_delay 0) is read by both
clients in one run, interleaved A B A B ... for ``--rounds`` rounds. The gateway emulator runs
in a *separate process* (``python -m gateway_client.emulator --port P``) so its CPU is not
counted; we measure this process's CPU time (``time.process_time``) around each stream and
divide by the number of chunks received. Both consumers do the same work per chunk: read
``chunk.choices[0].delta.content`` and keep it.

Run from the repository root:

    python bench/gateway_stream.py            # 10 rounds of 2,000 chunks each
    python bench/gateway_stream.py --rounds 20 --words 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openai.types.chat import ChatCompletion  # noqa: E402

from gateway_client import GatewayClient  # noqa: E402

MODEL = "gpt-4.1"
MESSAGES = [{"role": "user", "content": "benchmark"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator_process(port: int) -> Iterator[str]:
    """Start the emulator as a child process; yield its base URL; stop it afterwards."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_client.emulator", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15.0
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def measure(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """CPU seconds of this process spent in ``run()``, and the chunk count it returned."""
    start = time.process_time()
    chunks = await run()
    return time.process_time() - start, chunks


def pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--words", type=int, default=2000)
    args = parser.parse_args()

    from openai import AsyncOpenAI

    headers = {"X-Emulator-Reply-Words": str(args.words), "X-Emulator-Token-Delay": "0"}
    with emulator_process(free_port()) as base_url:
        async with GatewayClient(base_url=base_url, api_key="bench-key", headers=headers) as gw:
            oa = AsyncOpenAI(base_url=base_url, api_key="bench-key", max_retries=0)

            async def ours() -> int:
                parts: list[str] = []
                n = 0
                async with gw.stream({"model": MODEL, "messages": MESSAGES}) as stream:
                    async for chunk in stream:
                        n += 1
                        choices = chunk.choices
                        if choices:
                            parts.append(choices[0].delta.content or "")
                return n

            async def openai_sdk() -> int:
                parts: list[str] = []
                n = 0
                stream = await oa.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    stream=True,
                    extra_headers=headers,
                )
                assert not isinstance(stream, ChatCompletion)
                async for chunk in stream:
                    n += 1
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                return n

            await ours()  # warm-up: connections, imports, caches
            await openai_sdk()
            per_chunk: dict[str, list[float]] = {"gateway_client": [], "openai": []}
            counts: dict[str, set[int]] = {"gateway_client": set(), "openai": set()}
            for _ in range(args.rounds):
                for name, fn in (("gateway_client", ours), ("openai", openai_sdk)):
                    cpu, n = await measure(fn)
                    per_chunk[name].append(cpu / n * 1e6)
                    counts[name].add(n)
            await oa.close()

    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.words} words")
    for name, values in per_chunk.items():
        print(
            f"{name:15s} chunks/stream={sorted(counts[name])} "
            f"cpu/chunk median={statistics.median(values):6.2f} us  p90={pctl(values, 0.9):6.2f} us"
        )
    ratio = statistics.median(per_chunk["gateway_client"]) / statistics.median(per_chunk["openai"])
    print(f"ratio ours/openai (median) = {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
