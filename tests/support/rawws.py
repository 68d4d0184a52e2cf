"""A minimal RFC 6455 client on a raw socket, for tests where a normal client cannot misbehave.

`RawWs.connect` does the HTTP upgrade by hand (a refusal raises `Refused` with the status and
body); the socket may get a small receive buffer before it connects, so a peer that never
reads fills up fast. Frames are sent exactly as asked: any opcode, masked or not, any payload
(invalid UTF-8, over a size limit). Nothing is read unless a test asks for it, so a `RawWs`
that is never read from is a peer that stopped reading. `abort()` resets the TCP connection
(no close frame, no FIN).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Refused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


def encode_frame(
    opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    """One frame on the wire; `masked=False` makes the protocol violation of an unmasked
    client frame."""
    head = bytearray([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    # Whole-buffer XOR through big integers: fast enough for frames of a few megabytes.
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class RawWs:
    """One client connection on a non-blocking socket, driven through the event loop."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = bytearray(buffered)
        self.close_code: int | None = None  # set when a close frame was received
        self.eof = False  # the server closed the TCP connection
        self.messages: list[dict[str, Any]] = []  # every JSON text message read so far
        # Called with the close code of a received close frame (e.g. to record codes seen).
        self.on_close: Callable[[int | None], None] | None = None

    # ---- connecting ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        *,
        host: str = "127.0.0.1",
        headers: Mapping[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 10.0,
    ) -> RawWs:
        """Upgrade `GET path`; raise `Refused` for any answer but 101."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
                key = base64.b64encode(os.urandom(16)).decode()
                lines = [
                    f"GET {path} HTTP/1.1",
                    f"Host: {host}:{port}",
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    f"Sec-WebSocket-Key: {key}",
                    "Sec-WebSocket-Version: 13",
                    *(f"{k}: {v}" for k, v in (headers or {}).items()),
                ]
                await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
                raw = bytearray()
                while b"\r\n\r\n" not in raw:
                    chunk = await loop.sock_recv(sock, 65536)
                    if not chunk:
                        raise ConnectionError(f"closed during the handshake: {bytes(raw)!r}")
                    raw += chunk
                head, _, rest = bytes(raw).partition(b"\r\n\r\n")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split()[1])
                got = {}
                for line in header_lines:
                    name, _, value = line.partition(":")
                    got[name.strip().lower()] = value.strip()
                if status != 101:
                    body = bytearray(rest)
                    length = int(got.get("content-length", "-1"))
                    while length < 0 or len(body) < length:
                        chunk = await loop.sock_recv(sock, 65536)
                        if not chunk:
                            break
                        body += chunk
                    sock.close()
                    raise Refused(status, got, bytes(body))
                accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
                if got.get("sec-websocket-accept") != accept:
                    raise ConnectionError("bad Sec-WebSocket-Accept")
                return cls(sock, rest)
        except BaseException:
            sock.close()
            raise

    # ---- sending ---------------------------------------------------------------------------

    async def send_frame(
        self,
        opcode: int,
        payload: bytes,
        *,
        masked: bool = True,
        fin: bool = True,
        rsv: int = 0,
    ) -> None:
        data = encode_frame(opcode, payload, masked=masked, fin=fin, rsv=rsv)
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_text(self, text: str | bytes, *, masked: bool = True) -> None:
        payload = text.encode() if isinstance(text, str) else text
        await self.send_frame(OP_TEXT, payload, masked=masked)

    async def send_json(self, message: Any) -> None:
        await self.send_frame(OP_TEXT, orjson.dumps(message))

    async def send_binary(self, data: bytes, *, masked: bool = True) -> None:
        await self.send_frame(OP_BINARY, data, masked=masked)

    async def send_close(self, code: int = 1000, reason: bytes = b"") -> None:
        await self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason)

    # ---- receiving -------------------------------------------------------------------------

    async def _fill(self, need: int) -> bool:
        """Read until `need` bytes are buffered; False at end of stream."""
        loop = asyncio.get_running_loop()
        while len(self._buf) < need:
            try:
                chunk = await loop.sock_recv(self.sock, 65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self._buf += chunk
        return True

    async def recv_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame (pings are answered and skipped); None when the server closed TCP."""
        async with asyncio.timeout(timeout):
            while True:
                if not await self._fill(2):
                    return None
                b0, b1 = self._buf[0], self._buf[1]
                n = b1 & 0x7F
                pos = 2
                if n == 126:
                    if not await self._fill(4):
                        return None
                    n = struct.unpack("!H", self._buf[2:4])[0]
                    pos = 4
                elif n == 127:
                    if not await self._fill(10):
                        return None
                    n = struct.unpack("!Q", self._buf[2:10])[0]
                    pos = 10
                masked = bool(b1 & 0x80)
                if masked:
                    pos += 4
                if not await self._fill(pos + n):
                    return None
                payload = bytes(self._buf[pos : pos + n])
                if masked:
                    payload = _mask(payload, bytes(self._buf[pos - 4 : pos]))
                del self._buf[: pos + n]
                frame = Frame(bool(b0 & 0x80), b0 & 0x0F, payload)
                if frame.opcode == OP_PING:
                    await self.send_frame(OP_PONG, payload)
                    continue
                if frame.opcode == OP_CLOSE:
                    self.close_code = frame.close_code
                    if self.on_close is not None:
                        self.on_close(self.close_code)
                return frame

    def _record(self, frame: Frame) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(frame.payload)
        self.messages.append(message)
        return message

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in self.messages]

    async def recv_json(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next text message as JSON, skipping binary frames; None at a close or EOF."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame is None or frame.opcode == OP_CLOSE:
                return None
            if frame.opcode == OP_TEXT:
                return self._record(frame)

    async def read_until_close(
        self, timeout: float = 10.0
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Every JSON text message until the server's close frame (or EOF), and the close code
        (None when the connection ended without a close frame). TimeoutError when neither came
        within `timeout` (`messages` holds what did)."""
        messages: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv_frame(timeout)
                if frame is None:
                    return messages, None
                if frame.opcode == OP_CLOSE:
                    return messages, frame.close_code
                if frame.opcode == OP_TEXT:
                    messages.append(self._record(frame))

    async def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Read until a JSON message of type `kind` arrives (the ones before it are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv_json(timeout)
                if message is None:
                    raise AssertionError(f"closed ({self.close_code}) before a {kind!r} arrived")
                if message.get("type") == kind:
                    return message

    # ---- ending ----------------------------------------------------------------------------

    def abort(self) -> None:
        """Reset the TCP connection: no close frame, no orderly shutdown."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
