"""Microphone (or a WAV file) -> the service's /v1/realtime -> live captions and streamed replies.

Start the service (`python -m realtime serve`), then:

    python examples/mic_assistant.py              # needs PortAudio: pip install 'realtime[mic]'
    python examples/mic_assistant.py --wav speech.wav
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import orjson

from realtime.audio import AudioDeviceError, Framer, open_microphone, read_wav


async def wav_frames(path: str) -> AsyncIterator[bytes]:
    for frame in Framer().push(read_wav(path).astype("<i2").tobytes()):
        yield frame
        await asyncio.sleep(0.05)  # real time
    for _ in range(40):  # two seconds of silence so the last turn ends
        yield bytes(1600)
        await asyncio.sleep(0.05)


async def show(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for frame in ws:
        if frame.type != aiohttp.WSMsgType.TEXT:
            continue
        m = orjson.loads(frame.data)
        kind = m.get("type")
        if kind == "Turn":
            end = "\n" if m.get("end_of_turn") else "\r"
            print(f"you: {m['transcript']}", end=end, flush=True)
        elif kind == "response.delta":
            print(m["delta"], end="", flush=True)
        elif kind == "response.created":
            print("assistant: ", end="", flush=True)
        elif kind in ("response.done", "response.cancelled", "response.failed"):
            print(f"  [{kind.split('.')[1]}]", flush=True)
        elif kind == "error":
            print(f"error: {m['error']['message']}", file=sys.stderr)


async def run(url: str, source: AsyncIterator[bytes]) -> None:
    first = await anext(source)  # a missing microphone fails here, before anything starts
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        async with asyncio.TaskGroup() as tg:
            viewer = tg.create_task(show(ws))
            await ws.send_bytes(first)
            async for frame in source:
                await ws.send_bytes(frame)
            await ws.send_str('{"type": "Termination"}')
            await viewer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/v1/realtime")
    parser.add_argument("--token", help="the service's auth token, if it has one")
    parser.add_argument("--wav", help="stream this WAV file instead of the microphone")
    args = parser.parse_args()
    url = args.url + (f"?token={args.token}" if args.token else "")
    try:
        source = wav_frames(args.wav) if args.wav else open_microphone()
        asyncio.run(run(url, source))
    except AudioDeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
