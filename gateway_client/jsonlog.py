"""JSON log lines, one object per line, for the realtime service and the gateway emulator.

Fields passed with `extra=` (session_id, turn_order, response_id, request_id, model, status,
reason, ...) become top-level keys. Secrets are kept out at the source (nothing logs a key or
token); as a second line of defence, `redact()` removes configured secrets from every line.
It lives here, not in `realtime`, because `gateway_client` never imports `realtime`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

import orjson

__all__ = ["JsonFormatter", "setup"]

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
