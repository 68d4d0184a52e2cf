"""RFC 6455 rules aiohttp's server does not enforce: every client frame must be masked.

aiohttp's frame reader accepts an unmasked client frame. `harden` puts a small pure frame
walker (`realtime.core.frames.MaskCheck`) in front of the connection's frame reader; on an
unmasked frame it stops feeding the reader and hands it a protocol error, which aiohttp turns
into a close with 1002 (PROTOCOL.md "Close codes"). The hook uses aiohttp internals
(`protocol._payload_parser`, `ws._reader`); tests/realtime/test_edges.py guards it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

from realtime.core.frames import MaskCheck

log = logging.getLogger("realtime.strict_ws")


class _MaskedOnly:
    """Feeds the real frame reader only while every frame header seen is masked."""

    def __init__(self, inner: Any, ws: web.WebSocketResponse) -> None:
        self._inner = inner
        self._ws = ws
        self._check = MaskCheck()
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return False, b""
        if not self._check.feed(data):
            self._failed = True
            reader = getattr(self._ws, "_reader", None)
            if reader is not None:
                reader.set_exception(
                    WebSocketError(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked")
                )
            return False, b""
        result: tuple[bool, bytes] = self._inner.feed_data(data)
        return result

    def feed_eof(self) -> Any:
        return self._inner.feed_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def harden(ws: web.WebSocketResponse, request: web.Request) -> None:
    protocol = request.protocol
    inner = getattr(protocol, "_payload_parser", None)
    if inner is None:
        log.warning("aiohttp has no frame parser hook; unmasked client frames go unchecked")
        return
    protocol._payload_parser = _MaskedOnly(inner, ws)
