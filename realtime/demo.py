"""`python -m realtime demo`: the whole path on loopback, no key, no network.

Starts the local LLM Gateway emulator and the service, then replays a bundled conversation
(AssemblyAI v3 events: partials, unformatted and formatted finals, pauses, one barge-in)
through a real WebSocket client, printing each user turn and the reply as it streams, with
its time to first token. Exits 0 when every response ended with one terminal message and the
barge-in cancelled the reply it interrupted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib import resources
from typing import Any, TextIO

import aiohttp
import orjson

from realtime.core.config import SessionConfig
from realtime.server import Server, ServerSettings

DEADLINE_S = 60.0


def load_script() -> list[dict[str, Any]]:
    text = resources.files("realtime.data").joinpath("demo_conversation.jsonl").read_text()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


class Printer:
    """Renders the session's messages for a person watching the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.open_reply: str | None = None
        self.turn_sent: dict[int, float] = {}
        self.terminals: dict[str, str] = {}
        self.created: list[str] = []
        self.deltas = 0

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def user(self, turn_order: int, text: str) -> None:
        self._close_line()
        self.write(f"\n  user  [{turn_order}] {text}\n")
        self.turn_sent[turn_order] = time.perf_counter()

    def _close_line(self) -> None:
        if self.open_reply is not None:
            self.write("\n")
            self.open_reply = None

    def on_message(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "response.created":
            self.created.append(m["response_id"])
            self._close_line()
            self.write("  reply ")
            self.open_reply = m["response_id"]
        elif kind == "response.delta":
            self.deltas += 1
            if self.open_reply == m["response_id"]:
                self.write(m["delta"])
        elif kind == "response.done":
            self.terminals[m["response_id"]] = "done"
            t = m.get("timings") or {}
            self._close_line()
            self.write(
                f"        (time to first token {t.get('ttft_ms', 0):.0f} ms, "
                f"total {t.get('total_ms', 0):.0f} ms)\n"
            )
        elif kind == "response.cancelled":
            self.terminals[m["response_id"]] = "cancelled"
            self._close_line()
            words = len(m.get("delivered_text", "").split())
            self.write(f"        [{m['reason']}: the user spoke again after {words} words]\n")
        elif kind == "response.failed":
            self.terminals[m["response_id"]] = "failed"
            self._close_line()
            self.write(f"        [failed: {m['error'].get('message')}]\n")
        elif kind == "error":
            self._close_line()
            self.write(f"  error {m['error']}\n")


async def replay(url: str, script: list[dict[str, Any]], speed: float, printer: Printer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        created = orjson.loads((await ws.receive()).data)
        printer.write(f"session {created['session_id']} (model {created['session']['model']})\n")
        # Reply to the formatted final: the demo shows punctuated text.
        await ws.send_str('{"type":"session.update","session":{"trigger":"formatted"}}')
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def read() -> None:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    m = orjson.loads(frame.data)
                    printer.on_message(m)
                    inbox.put_nowait(m)

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            turn = -1
            for step in script:
                if "wait_for" in step:
                    await _wait(inbox, step, turn)
                    await asyncio.sleep(step.get("then_ms", 0) / 1000 / speed)
                    continue
                await asyncio.sleep(step.get("delay_ms", 0) / 1000 / speed)
                event = step["event"]
                if event.get("type") == "Turn" and event.get("turn_is_formatted"):
                    turn = event["turn_order"]
                    printer.user(turn, event["transcript"])
                await ws.send_str(orjson.dumps(event).decode())
            await reader  # the server closes with 1000 once the last reply has finished


async def _wait(inbox: asyncio.Queue[dict[str, Any]], step: dict[str, Any], turn: int) -> None:
    """Wait for the reply to turn `turn` to end, or for `count` of its deltas."""
    seen = 0
    while True:
        m = await inbox.get()
        if m.get("turn_order") != turn:
            continue
        if step["wait_for"] == "response_end" and m["type"] in (
            "response.done",
            "response.cancelled",
            "response.failed",
        ):
            return
        if step["wait_for"] == "deltas" and m["type"] == "response.delta":
            seen += 1
            if seen >= step.get("count", 1):
                return


async def run_demo(
    *, speed: float = 1.0, token_delay: float = 0.04, out: TextIO = sys.stdout
) -> int:
    from gateway_client import GatewayClient
    from gateway_client.emulator import GatewayEmulator

    printer = Printer(out)
    async with (
        GatewayEmulator(
            host="127.0.0.1", port=0, token_delay=token_delay, first_token_delay=0.12
        ) as emulator,
        GatewayClient(base_url=emulator.base_url, api_key=None) as gateway,
    ):
        settings = ServerSettings(
            host="127.0.0.1", port=0, default_config=SessionConfig.from_defaults(model="gpt-4.1")
        )
        async with Server(settings, gateway) as server:
            printer.write(
                f"realtime demo: service on ws://127.0.0.1:{server.port}/v1/realtime, "
                f"LLM Gateway emulator on {emulator.base_url}\n"
            )
            async with asyncio.timeout(DEADLINE_S):
                await replay(
                    f"ws://127.0.0.1:{server.port}/v1/realtime", load_script(), speed, printer
                )
    missing = [rid for rid in printer.created if rid not in printer.terminals]
    cancelled = [rid for rid, how in printer.terminals.items() if how == "cancelled"]
    failed = [rid for rid, how in printer.terminals.items() if how == "failed"]
    ok = not missing and not failed and len(cancelled) == 1 and len(printer.created) >= 5
    printer.write(
        f"\n{len(printer.created)} replies, {len(cancelled)} interrupted, "
        f"{len(failed)} failed: {'ok' if ok else 'NOT OK'}\n"
    )
    return 0 if ok else 1
