"""`python -m realtime demo`: the whole path on loopback, no key, no network.

Starts the local LLM Gateway emulator and the service, then replays a bundled conversation
(AssemblyAI v3 events: partials, unformatted and formatted finals, pauses, one barge-in)
through a real WebSocket client, printing each user turn and the reply as it streams, with
its time to first token. Exits 0 when every response ended with one terminal message and the
barge-in cut the reply it interrupted; otherwise it says what went wrong and exits 1.

The barge-in: the user speaks again after hearing the first words of a long reply. If the
reply is still streaming when the service hears it, the service cancels it (`interrupted`).
If the reply had already arrived in full (with `--token-delay 0` the emulator sends a whole
reply in one burst, faster than the client can answer its first words), there is nothing left
to cancel, and the client does what a voice client does for a reply it stopped playing: it
sends `response.truncate` with the words the user heard, so the history keeps only those.
Either way the reply is cut where the user spoke; which one happens depends only on timing.

`python -m realtime demo --meeting`: a scripted meeting of three speakers
(realtime/data/demo_meeting.txt, in the speech-to-text emulator's script syntax: `B: text` is
spoken by B, `A>C: text` is heard as A and relabelled to C by a `SpeakerRevision`) sent as
formatted final Turns with `speaker_label` to a session with the `summary` preset and
`summary_every: {"turns": 3}`. Each rolling summary is printed when it completes; the end of
the meeting (`Termination`) fires the last one. The emulated model answers "You said: <its
prompt>", so each summary visibly contains the one before it. Exits 0 when every summary
completed and every turn reached one; otherwise it says what went wrong and exits 1.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
        self.reasons: dict[str, str] = {}  # response_id -> why it was cancelled
        self.truncated: dict[str, str] = {}  # response_id -> the text the history keeps
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
            self.reasons[m["response_id"]] = m.get("reason", "")
            self._close_line()
            words = len(m.get("delivered_text", "").split())
            self.write(f"        [{m['reason']}: the user spoke again after {words} words]\n")
        elif kind == "response.failed":
            self.terminals[m["response_id"]] = "failed"
            self._close_line()
            self.write(f"        [failed: {m['error'].get('message')}]\n")
        elif kind == "response.truncated":
            self.truncated[m["response_id"]] = m.get("text", "")
            self._close_line()
            words = len(m.get("text", "").split())
            self.write(
                f"        [the user spoke again after {words} words; the reply had already "
                "arrived: truncated to what was heard]\n"
            )
        elif kind == "error":
            self._close_line()
            self.write(f"  error {m['error']}\n")


class BargeIn:
    """The reply the user spoke over, and what they had heard of it by then."""

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.heard = ""
        self.truncate_sent = False


async def replay(
    url: str,
    script: list[dict[str, Any]],
    speed: float,
    printer: Printer,
    barge: BargeIn | None = None,
) -> None:
    barge = barge if barge is not None else BargeIn()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        created = orjson.loads((await ws.receive()).data)
        printer.write(f"session {created['session_id']} (model {created['session']['model']})\n")
        sending = asyncio.Lock()  # the script and the reader both send

        async def send(message: dict[str, Any]) -> None:
            async with sending:
                await ws.send_str(orjson.dumps(message).decode())

        async def truncate_if_finished() -> None:
            """A reply the user spoke over that had already ended `done`: keep what was heard."""
            rid = barge.response_id
            if rid is None or barge.truncate_sent or printer.terminals.get(rid) != "done":
                return
            barge.truncate_sent = True
            await send({"type": "response.truncate", "response_id": rid, "text": barge.heard})

        # Reply to the formatted final: the demo shows punctuated text.
        await send({"type": "session.update", "session": {"trigger": "formatted"}})
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def read() -> None:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    m = orjson.loads(frame.data)
                    printer.on_message(m)
                    inbox.put_nowait(m)
                    if m.get("type") == "response.done":
                        await truncate_if_finished()

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            turn = -1
            for step in script:
                if "wait_for" in step:
                    heard = await _wait(inbox, step, turn)
                    if heard is not None:  # the user speaks again after hearing this much
                        barge.response_id, barge.heard = heard
                        await truncate_if_finished()
                    await asyncio.sleep(step.get("then_ms", 0) / 1000 / speed)
                    continue
                await asyncio.sleep(step.get("delay_ms", 0) / 1000 / speed)
                event = step["event"]
                if event.get("type") == "Turn" and event.get("turn_is_formatted"):
                    turn = event["turn_order"]
                    printer.user(turn, event["transcript"])
                await send(event)
            await reader  # the server closes with 1000 once the last reply has finished


async def _wait(
    inbox: asyncio.Queue[dict[str, Any]], step: dict[str, Any], turn: int
) -> tuple[str, str] | None:
    """Wait for the reply to turn `turn` to end, or for `count` of its deltas.

    For `deltas`, returns the reply's id and the text of those deltas (what the user heard).
    """
    seen: list[str] = []
    while True:
        m = await inbox.get()
        if m.get("turn_order") != turn:
            continue
        if step["wait_for"] == "response_end" and m["type"] in (
            "response.done",
            "response.cancelled",
            "response.failed",
        ):
            return None
        if step["wait_for"] == "deltas" and m["type"] == "response.delta":
            seen.append(m["delta"])
            if len(seen) >= step.get("count", 1):
                return m["response_id"], "".join(seen)


def verdict(printer: Printer, barge: BargeIn) -> list[str]:
    """What went wrong in the run, one phrase each (empty: the demo is OK)."""
    problems = []
    missing = [rid for rid in printer.created if rid not in printer.terminals]
    if missing:
        problems.append(f"{len(missing)} replies never ended ({', '.join(missing)})")
    failed = [rid for rid, how in printer.terminals.items() if how == "failed"]
    if failed:
        problems.append(f"{len(failed)} replies failed")
    if len(printer.created) < 5:
        problems.append(f"only {len(printer.created)} of 5 turns got a reply")
    rid = barge.response_id
    cancelled = [r for r, how in printer.terminals.items() if how == "cancelled"]
    if rid is None:
        problems.append("the script's barge-in never came")
    elif printer.terminals.get(rid) == "cancelled":
        if printer.reasons.get(rid) != "interrupted":
            problems.append(f"the reply spoken over was cancelled as {printer.reasons.get(rid)!r}")
    elif printer.terminals.get(rid) == "done":
        if printer.truncated.get(rid) != barge.heard:
            problems.append(
                "the reply spoken over had ended, and was not truncated to what was heard"
            )
    others = [r for r in cancelled if r != rid]
    if others:
        problems.append(f"{len(others)} replies cancelled with no barge-in to cause it")
    return problems


@asynccontextmanager
async def local_service(token_delay: float) -> AsyncIterator[tuple[str, str]]:
    """The service and a local LLM Gateway emulator on loopback, for the demos: yields the
    service's WebSocket URL and the emulator's base URL."""
    from gateway_client import GatewayClient
    from gateway_client.emulator import GatewayEmulator

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
            yield f"ws://127.0.0.1:{server.port}/v1/realtime", emulator.base_url


async def run_demo(
    *,
    speed: float = 1.0,
    token_delay: float = 0.04,
    meeting: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    if meeting:
        return await run_meeting(speed=speed, token_delay=token_delay, out=out)
    printer = Printer(out)
    barge = BargeIn()
    async with local_service(token_delay) as (url, gateway_url):
        printer.write(f"realtime demo: service on {url}, LLM Gateway emulator on {gateway_url}\n")
        async with asyncio.timeout(DEADLINE_S):
            await replay(url, load_script(), speed, printer, barge)
    problems = verdict(printer, barge)
    cut = [r for r, how in printer.terminals.items() if how == "cancelled"]
    cut += [r for r in printer.truncated if r not in cut]
    failed = [rid for rid, how in printer.terminals.items() if how == "failed"]
    printer.write(
        f"\n{len(printer.created)} replies, {len(cut)} interrupted, "
        f"{len(failed)} failed: {'NOT OK: ' + '; '.join(problems) if problems else 'ok'}\n"
    )
    return 1 if problems else 0


# --- the meeting demo -----------------------------------------------------------------------

MEETING_PROMPT = "Summary so far: {{summary}}\nSince then:\n{{history}}"
MEETING_EVERY = 3  # turns per summary
MEETING_TURN_GAP_MS = 600  # between two turns, at speed 1


def load_meeting() -> list[tuple[str, str | None, str]]:
    """(speaker, relabelled-to or None, text) for each line of the bundled meeting."""
    from realtime.emulators.stt_engine import script_line

    text = resources.files("realtime.data").joinpath("demo_meeting.txt").read_text("utf-8")
    return [script_line(line) for line in text.splitlines() if line.strip()]


def meeting_turn(order: int, speaker: str, text: str, start_ms: int) -> dict[str, Any]:
    """A formatted final AssemblyAI v3 Turn, as the service sends it with `speaker_labels`."""
    words = [
        {
            "start": start_ms + 320 * i,
            "end": start_ms + 320 * i + 280,
            "text": w,
            "confidence": 0.93,
            "word_is_final": True,
            "speaker": speaker,
        }
        for i, w in enumerate(text.split())
    ]
    return {
        "turn_order": order,
        "turn_is_formatted": True,
        "end_of_turn": True,
        "transcript": text,
        "end_of_turn_confidence": 0.9,
        "words": words,
        "utterance": "",
        "speaker_label": speaker,
        "type": "Turn",
    }


class MeetingPrinter:
    """Prints the meeting's turns and each rolling summary as it completes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.summaries: list[dict[str, Any]] = []
        self.failed: list[str] = []
        self.errors: list[str] = []

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def on_message(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "response.done":
            self.summaries.append(m)
            lines = m.get("text", "").splitlines() or [""]
            self.write(
                f"\n  summary {len(self.summaries)} (through turn {m.get('turn_order')}, "
                f"{len(m.get('text', ''))} chars):\n"
            )
            self.write("".join(f"    | {line}\n" for line in lines))
            self.write("\n")
        elif kind in ("response.failed", "response.cancelled"):
            self.failed.append(str(m.get("response_id")))
            self.write(f"  [summary {kind.split('.')[1]}: {m.get('error') or m.get('reason')}]\n")
        elif kind == "error":
            self.errors.append(str(m.get("error")))
            self.write(f"  error {m.get('error')}\n")


async def meeting_replay(url: str, speed: float, printer: MeetingPrinter) -> tuple[int, int | None]:
    """Send the meeting; return (turns sent, the server's close code)."""
    script = load_meeting()
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        created = orjson.loads((await ws.receive()).data)
        printer.write(f"session {created['session_id']} (model {created['session']['model']})\n")
        update = {
            "preset": "summary",
            "instructions": "",
            "prompt": MEETING_PROMPT,
            "summary_every": {"turns": MEETING_EVERY},
        }
        await ws.send_str(orjson.dumps({"type": "session.update", "session": update}).decode())
        while True:
            m = orjson.loads((await ws.receive()).data)
            if m.get("type") == "session.updated":
                break
            if m.get("type") == "error":
                raise RuntimeError(f"session.update refused: {m.get('error')}")
        printer.write(f"summary preset, a summary every {MEETING_EVERY} turns\n\n")

        async def read() -> None:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    printer.on_message(orjson.loads(frame.data))

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            clock = 0
            for order, (speaker, revised, text) in enumerate(script):
                await asyncio.sleep(MEETING_TURN_GAP_MS / 1000 / speed)
                turn = meeting_turn(order, speaker, text, clock)
                clock = turn["words"][-1]["end"] + MEETING_TURN_GAP_MS
                printer.write(f"  [{order}] {speaker}: {text}\n")
                await ws.send_str(orjson.dumps(turn).decode())
                if revised is not None and revised != speaker:
                    words = [{**w, "speaker": revised} for w in turn["words"]]
                    revision = {"turn_order": order, "speaker_label": revised, "words": words}
                    message = {"type": "SpeakerRevision", "revisions": [revision]}
                    await ws.send_str(orjson.dumps(message).decode())
                    printer.write(f"      (turn {order} relabelled {speaker} -> {revised})\n")
            printer.write("  [the meeting ends]\n")
            end = {"type": "Termination", "audio_duration_seconds": clock // 1000}
            await ws.send_str(orjson.dumps({**end, "session_duration_seconds": 0}).decode())
            await reader  # the server fires the last summary, then closes with 1000
        return len(script), ws.close_code


def meeting_verdict(printer: MeetingPrinter, turns: int, close_code: int | None) -> list[str]:
    """What went wrong in the meeting run, one phrase each (empty: OK)."""
    problems = []
    if printer.failed:
        problems.append(f"{len(printer.failed)} summaries did not complete")
    if printer.errors:
        problems.append(f"{len(printer.errors)} errors")
    if len(printer.summaries) < 2:
        problems.append(f"only {len(printer.summaries)} summaries")
    if not printer.summaries or printer.summaries[-1].get("turn_order") != turns - 1:
        problems.append("the last turn reached no summary")
    if close_code != 1000:
        problems.append(f"the service closed with {close_code}")
    return problems


async def run_meeting(
    *, speed: float = 1.0, token_delay: float = 0.04, out: TextIO = sys.stdout
) -> int:
    printer = MeetingPrinter(out)
    async with local_service(token_delay) as (url, gateway_url):
        printer.write(
            f"realtime demo --meeting: service on {url}, LLM Gateway emulator on {gateway_url}\n"
        )
        async with asyncio.timeout(DEADLINE_S):
            turns, code = await meeting_replay(url, speed, printer)
    problems = meeting_verdict(printer, turns, code)
    printer.write(
        f"{turns} turns, {len(printer.summaries)} summaries, {len(printer.failed)} failed: "
        f"{'NOT OK: ' + '; '.join(problems) if problems else 'ok'}\n"
    )
    return 1 if problems else 0
