"""Structured logs: one JSON object per line, with the ids that tie a line to a turn.

Fields passed with `extra=` (session_id, turn_order, response_id, request_id, model, status,
reason, ...) become top-level keys. Secrets are kept out at the source (nothing logs a key or
token); as a second line of defence, `redact()` removes configured secrets from every line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(out, default=str).decode()
        return self.redact(line)

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "[redacted]")
        return line


def setup(level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Log JSON lines to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print one line per HTTP request with no ids; keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that merges its ids with the call's own `extra` (3.11's replaces them)."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class RateLimitFilter(logging.Filter):
    """Let through at most one record per `interval` seconds for each (logger, message
    template); counts what it held back and says so on the next line it lets through."""

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) > 256:  # bounded: forget the oldest templates
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.suppressed = held
        return True
