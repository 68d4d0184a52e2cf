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
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from realtime.core import outbound as msg
from realtime.core.inbound import ProtocolError, parse_client_frame
from realtime.outbox import Outbox
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
    """One session's upstream speech-to-text connection."""

    def __init__(
        self, session: Session, box: Outbox, *, url: str, api_key: str | None, params: SttParams
    ) -> None:
        self.session = session
        self.box = box
        self.url = url
        self.api_key = api_key
        self.params = params
        # Audio frames, control messages for upstream (dicts), or None for "terminate".
        self._frames: asyncio.Queue[bytes | dict[str, Any] | None] = asyncio.Queue(
            MAX_QUEUED_FRAMES
        )
        self._closed = False
        self._task = session.spawn(self._run())

    async def feed(self, pcm: bytes) -> None:
        """Queue one client audio frame; waits (slowing the client's reads) when far behind."""
        if not self._closed:
            await self._frames.put(pcm)

    async def control(self, message: dict[str, Any]) -> None:
        """Forward UpdateConfiguration / ForceEndpoint / KeepAlive / Terminate upstream."""
        if not self._closed:
            await self._frames.put(message)

    def close(self) -> None:
        """End the upstream session: Terminate, then close (sync; the task finishes it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._frames.put_nowait(None)
        except asyncio.QueueFull:
            self._task.cancel()  # the writer is stuck: the client's abort path still Terminates

    async def _run(self) -> None:
        session = self.session
        try:
            async with SttClient(self.url, api_key=self.api_key, params=self.params) as stt:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._send(stt))
                    async for upstream in stt:
                        self._dispatch(upstream)
        except* SttError as group:
            exc = group.exceptions[0]
            assert isinstance(exc, SttError)
            log.warning(
                "upstream speech-to-text failed",
                extra={"session_id": session.id, "status": exc.code},
            )
            session.publish(
                msg.dumps(
                    {
                        "type": "error",
                        "error": {"code": "stt_error", "status": exc.code, "message": exc.message},
                    }
                )
            )
            session.handle_frame(
                self.box, parse_client_frame(b'{"type":"Termination"}'), time.perf_counter()
            )

    async def _send(self, stt: SttClient) -> None:
        try:
            while (item := await self._frames.get()) is not None:
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

    def _dispatch(self, upstream: dict[str, Any]) -> None:
        raw = orjson.dumps(upstream)
        self.session.publish(raw)  # clients see what speech-to-text said, verbatim
        try:
            message = parse_client_frame(raw)
        except ProtocolError:
            return  # a type the session does not act on (Warning, Heartbeat, ...)
        self.session.handle_frame(self.box, message, time.perf_counter())


def relay_factory(
    url: str, api_key: str | None
) -> Callable[[Session, Outbox, Mapping[str, str]], AudioRelay]:
    """What `Server.relay_factory` holds when upstream speech-to-text is configured."""

    def make(session: Session, box: Outbox, query: Mapping[str, str]) -> AudioRelay:
        return AudioRelay(session, box, url=url, api_key=api_key, params=params_from_query(query))

    return make
