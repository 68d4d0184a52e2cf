"""AssemblyAI's official Python SDK, pointed at this service's /v3/ws instead of AssemblyAI.

The SDK streams audio as it would to AssemblyAI; the service relays it to speech-to-text with
its own key and answers each turn through the LLM Gateway, as AssemblyAI's `llm_gateway`
parameter does. Start the service first (`python -m realtime serve`), then:

    python examples/aai_sdk_client.py --wav speech.wav
    python examples/aai_sdk_client.py            # a generated tone: the emulator "hears" a script
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from assemblyai.streaming.v3 import (
    LLMGatewayResponseEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriber,
    RealTimeTranscriberOptions,
    TurnEvent,
)

from realtime.audio import Framer, read_wav

RATE = 16000


def tone_pcm() -> bytes:
    """Two bursts of tone with pauses: enough for two turns on the local emulator."""
    t = np.arange(int(0.8 * RATE)) / RATE
    burst = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    pause = np.zeros(int(1.6 * RATE), dtype="<i2")
    return np.concatenate([burst, pause, burst, pause]).tobytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="ws://127.0.0.1:8080", help="the service (ws://HOST:PORT)"
    )
    parser.add_argument("--token", default="none", help="the service's auth token, if it has one")
    parser.add_argument("--wav", help="a WAV file to stream (any rate/channels); default: a tone")
    parser.add_argument("--model", default="gpt-4.1", help="LLM Gateway model")
    args = parser.parse_args()

    pcm = read_wav(args.wav).astype("<i2").tobytes() if args.wav else tone_pcm()
    client = RealTimeTranscriber(RealTimeTranscriberOptions(api_key=args.token, api_host=args.host))

    def on_turn(_c: object, e: TurnEvent) -> None:
        if e.end_of_turn:
            print(f"turn {e.turn_order}: {e.transcript}")

    def on_reply(_c: object, e: LLMGatewayResponseEvent) -> None:
        text = e.data["choices"][0]["message"]["content"]
        print(f"reply {e.turn_order}: {text}")

    client.on(RealTimeEvents.Turn, on_turn)
    client.on(RealTimeEvents.LLMGatewayResponse, on_reply)
    client.on(RealTimeEvents.Error, lambda _c, e: print(f"error: {e}", file=sys.stderr))
    client.connect(
        RealTimeParameters.model_validate(
            {
                "sample_rate": RATE,
                "speech_model": "universal-streaming-english",
                "format_turns": True,
                "llm_gateway": {
                    "model": args.model,
                    "max_tokens": 300,
                    "messages": [{"role": "user", "content": "Answer briefly: {{turn}}"}],
                },
            }
        )
    )
    for frame in Framer().push(pcm):
        client.stream(frame)
        time.sleep(0.05)  # real time, as AssemblyAI requires
    time.sleep(2.0)  # let the last reply arrive
    client.disconnect(terminate=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
