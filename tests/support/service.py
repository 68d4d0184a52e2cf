"""Helpers for end-to-end tests: a recording WebSocket client and the service handle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from gateway_client.emulator import GatewayEmulator
from realtime.server import Server, ServerSettings

TERMINALS = ("response.done", "response.cancelled", "response.failed")


def turn(
    order: int, text: str, *, final: bool = True, formatted: bool = False, utterance: str = ""
) -> dict[str, Any]:
    """An AssemblyAI v3 Turn message as a client would forward it."""
    words = [
        {"start": 100 * i, "end": 100 * i + 80, "text": w, "confidence": 0.9, "word_is_final": True}
        for i, w in enumerate(text.split())
    ]
    return {
        "type": "Turn",
        "turn_order": order,
        "turn_is_formatted": formatted,
        "end_of_turn": final,
        "transcript": text,
        "end_of_turn_confidence": 0.9 if final else 0.1,
        "words": words,
        "utterance": utterance,
    }


def assert_guarantees(messages: list[dict]) -> None:
    """Guarantees 1 and 2: one terminal per response, nothing after it, deltas join to text."""
    created = [m["response_id"] for m in messages if m["type"] == "response.created"]
    for rid in created:
        mine = [m for m in messages if m.get("response_id") == rid]
        kinds = [m["type"] for m in mine]
        terminals = [k for k in kinds if k in TERMINALS]
        assert len(terminals) == 1, (rid, kinds)
        assert kinds[-1] in TERMINALS, (rid, kinds)
        assert kinds[0] == "response.created"
        joined = "".join(m["delta"] for m in mine if m["type"] == "response.delta")
        last = mine[-1]
        if last["type"] == "response.done":
            assert joined == last["text"]
        else:
            assert joined == last["delivered_text"]


class Client:
    """A WebSocket client of /v1/realtime that records every message it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._new = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                async with self._new:
                    self.messages.append(orjson.loads(frame.data))
                    self._new.notify_all()
        self.close_code = self.ws.close_code
        async with self._new:
            self._new.notify_all()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first recorded message matching `predicate` (waiting for it if needed)."""
        async with asyncio.timeout(timeout), self._new:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"connection closed; got {self.types()}")
                await self._new.wait()

    async def wait_type(self, kind: str, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._new:
            while True:
                found = [m for m in self.messages if m["type"] == kind]
                if len(found) >= n:
                    return found
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"connection closed; got {self.types()}")
                await self._new.wait()

    async def wait_terminals(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._new:
            while True:
                found = [m for m in self.messages if m["type"] in TERMINALS]
                if len(found) >= n:
                    return found
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"connection closed; got {self.types()}")
                await self._new.wait()

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def of(self, response_id: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("response_id") == response_id]

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader


@dataclass
class Service:
    server: Server
    emulator: GatewayEmulator
    http: aiohttp.ClientSession

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/v1/realtime"

    async def connect(
        self,
        query: str = "",
        headers: dict[str, str] | None = None,
        session: dict[str, Any] | None = None,
    ) -> Client:
        ws = await self.http.ws_connect(
            self.ws_url + (f"?{query}" if query else ""), headers=headers or {}
        )
        client = Client(ws)
        await client.start()
        await client.wait_type("session.created")
        if session:
            await client.send({"type": "session.update", "session": session})
            await client.wait_type("session.updated")
        return client


def with_settings(settings: ServerSettings, **changes: Any) -> ServerSettings:
    return replace(settings, **changes)
