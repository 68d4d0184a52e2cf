"""Structured logs: one JSON object per line (`gateway_client.jsonlog`, shared with the
gateway emulator), a logger adapter that keeps a session's ids on every line, and a filter
that rate-limits repeated lines."""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

from gateway_client.jsonlog import JsonFormatter, setup

__all__ = ["ContextLogger", "JsonFormatter", "RateLimitFilter", "setup"]


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
