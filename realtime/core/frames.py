"""A walker over a WebSocket client's raw byte stream that checks every frame is masked. Pure.

RFC 6455 section 5.1: a server MUST close the connection when it receives an unmasked frame.
The walker reads only frame headers and skips payloads, so its cost is a few operations per
frame, whatever the frame's size.
"""

from __future__ import annotations

__all__ = ["MaskCheck"]


class MaskCheck:
    """`feed(data)` returns False as soon as an unmasked frame header is seen."""

    def __init__(self) -> None:
        self._header = bytearray()  # the header bytes of the frame being read
        self._skip = 0  # payload bytes still to skip

    def feed(self, data: bytes) -> bool:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            need = self._needed()
            take = min(need - len(self._header), end - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) < self._needed():
                continue  # the header is incomplete (or its length grew: read on)
            header = self._header
            if not header[1] & 0x80:
                return False
            length = header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(header[2:4], "big")
            elif length == 127:
                length = int.from_bytes(header[2:10], "big")
            self._skip = length
            self._header = bytearray()
        return True

    def _needed(self) -> int:
        """Bytes of the current header: 2, then more once its length field is known."""
        header = self._header
        if len(header) < 2:
            return 2
        length = header[1] & 0x7F
        extra = 2 if length == 126 else 8 if length == 127 else 0
        mask = 4 if header[1] & 0x80 else 0
        return 2 + extra + mask
