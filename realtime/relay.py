"""Binary audio on /v1/realtime: relay it to upstream speech-to-text, feed the events back.

A session's relay opens its upstream connection (`realtime.stt.SttClient`) lazily, on the
first audio frame. Upstream messages are echoed to the session's clients verbatim and drive the
session exactly as client-sent events do. The relay's task is owned by the session's TaskGroup;
when the session ends, the relay sends `Terminate` upstream (billing is per open second) and
waits, within the client's deadline, for `Termination`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from realtime.core.inbound import ClientMessage, ProtocolError, parse_client_frame
from realtime.core.outbound import relayed
from realtime.session import Session
from realtime.stt import SttClient, SttError, SttParams

log = logging.getLogger("realtime.relay")

MAX_QUEUED_FRAMES = 200  # client frames waiting for the upstream writer (about 10 s at 50 ms)
_DEFAULTS = {
    "sample_rate": 16000,
    "speech_model": "universal-streaming-english",
    "format_turns": True,
}


def params_from_query(query: Mapping[str, str]) -> SttParams:
    """Upstream connection parameters from the connection's `stt_*` query parameters.

    `?stt_sample_rate=48000&stt_speech_model=u3-rt-pro` becomes `sample_rate=48000`,
    `speech_model=u3-rt-pro`; every other `stt_X` is passed through as `X` unchanged.
    """
    given = {k[4:]: v for k, v in query.items() if k.startswith("stt_") and len(k) > 4}
    fields = {**_DEFAULTS}
    extra: dict[str, Any] = {}
    for key, value in given.items():
        if key == "sample_rate":
            try:
                fields[key] = int(value)
            except ValueError:
                raise ValueError("stt_sample_rate must be an integer") from None
        elif key == "format_turns":
            fields[key] = value.lower() == "true"
        elif key == "speech_model":
            fields[key] = value
        else:
            extra[key] = value
    return SttParams(**fields, extra=extra)  # type: ignore[arg-type]


class AudioRelay:
    """One session's upstream speech-to-text connection, owned by the session's TaskGroup.

    `feed` and `control` queue for the upstream writer and wait only while the queue is full
    and upstream is alive: once upstream has ended (closed, failed), they return at once and
    the item is dropped, so a client that keeps sending audio never blocks its reader.
    """

    def __init__(
        self, session: Session, *, url: str, api_key: str | None, params: SttParams
    ) -> None:
        self.session = session
        self.url = url
        self.api_key = api_key
        self.params = params
        # Audio frames, control messages for upstream (dicts), or None for "terminate".
        self._items: deque[bytes | dict[str, Any] | None] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False  # the session asked for Terminate
        self._ended = False  # upstream is over: nothing more is queued
        self._task = session.spawn(self._run())

    @property
    def ended(self) -> bool:
        return self._ended

    async def feed(self, pcm: bytes) -> None:
        """Queue one client audio frame; waits (slowing the client's reads) when far behind."""
        await self._put(pcm)

    async def control(self, message: dict[str, Any]) -> None:
        """Forward UpdateConfiguration / ForceEndpoint / KeepAlive / Terminate upstream."""
        await self._put(message)

    async def _put(self, item: bytes | dict[str, Any]) -> None:
        while len(self._items) >= MAX_QUEUED_FRAMES and not (self._ended or self._closing):
            self._space.clear()
            await self._space.wait()
        if self._ended or self._closing:
            return
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        """End the upstream session: Terminate, then close (sync; the task finishes it
        within SttClient's terminate deadline)."""
        if self._closing:
            return
        self._closing = True
        self._items.append(None)
        self._ready.set()
        self._space.set()

    async def _run(self) -> None:
        session = self.session
        try:
            async with SttClient(
                self.url,
                api_key=self.api_key,
                params=self.params,
                log_fields={"session_id": session.id},
            ) as stt:
                sender = asyncio.create_task(self._send(stt))
                try:
                    async for raw, upstream in stt.received():
                        self._dispatch(raw, upstream)
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
            if not self._closing:
                session.stt_failed(None, "upstream speech-to-text ended the session")
        except SttError as exc:
            session.stt_failed(exc.code, exc.message)
        finally:
            self._ended = True
            self._items.clear()
            self._space.set()

    async def _send(self, stt: SttClient) -> None:
        items = self._items
        try:
            while True:
                while not items:
                    self._ready.clear()
                    await self._ready.wait()
                item = items.popleft()
                self._space.set()
                if item is None:
                    break
                if isinstance(item, bytes):
                    await stt.send_audio(item)
                    continue
                kind = item.get("type")
                if kind == "Terminate":
                    break
                if kind == "ForceEndpoint":
                    await stt.force_endpoint()
                elif kind == "KeepAlive":
                    await stt.keep_alive()
                elif kind == "UpdateConfiguration":
                    await stt.update_configuration(**{k: v for k, v in item.items() if k != "type"})
            await stt.terminate()
        except SttError:
            return  # the reading side raises the same failure and reports it

    def _dispatch(self, raw: bytes, upstream: dict[str, Any]) -> None:
        """`raw`: the frame as upstream sent it (forwarded byte for byte); `upstream`: parsed."""
        try:
            parsed: ClientMessage | None = parse_client_frame(raw)
        except ProtocolError:
            parsed = None  # a type the session does not act on (Warning, Heartbeat, ...)
        # Clients see what speech-to-text said, verbatim; then it drives the session.
        self.session.relayed(relayed(str(upstream.get("type")), raw, upstream), parsed)
