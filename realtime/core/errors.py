"""The realtime service's one error family. Pure.

`RealtimeError` is the base of every error the service raises on purpose. Its two branches
say whose fault it is: `ClientFault` (bad input; `code` is the wire error code the client
receives, and the session goes on) and `UpstreamError` (a remote service the session relies
on failed; the speech-to-text client's `SttError` is one). Gateway errors have their own
family in `gateway_client.errors` and are classified with `isinstance` at the session's edge.
"""

from __future__ import annotations

__all__ = ["ClientFault", "RealtimeError", "UpstreamError"]


class RealtimeError(Exception):
    """Base of the service's own errors."""


class ClientFault(RealtimeError):
    """Bad client input. `code` is the wire code (`invalid_event`, `invalid_config`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UpstreamError(RealtimeError):
    """A remote service failed (upstream speech-to-text)."""
