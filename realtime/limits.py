"""Admission to the gateway: a global cap on concurrent requests and per-model rate windows.

A request waits here, cancellable, instead of tripping the gateway's 429: a request whose turn
went stale while it waited is cancelled by its session and is never sent. The per-model limit
mirrors the gateway's own rule (N requests per model in a 60-second window); the window can
also be closed early when the gateway reports `X-RateLimit-Remaining: 0`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

WINDOW_S = 60.0


class RateWindow:
    """A sliding 60-second window of send times for one model (pure; the clock is passed in)."""

    def __init__(self, limit: int, window: float = WINDOW_S) -> None:
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()
        self._blocked_until = 0.0

    def delay(self, now: float) -> float:
        """Seconds to wait before one more request may be sent (0 = now)."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        wait = max(0.0, self._blocked_until - now)
        if self.limit > 0 and len(self._sent) >= self.limit:
            wait = max(wait, self._sent[0] + self.window - now)
        return wait

    def record(self, now: float) -> None:
        if self.limit > 0:
            self._sent.append(now)

    def block_until(self, when: float) -> None:
        """The gateway said the window is spent: hold requests until `when`."""
        self._blocked_until = max(self._blocked_until, when)


class Limiter:
    """Global concurrency cap plus per-model rate windows, shared by all sessions."""

    def __init__(
        self,
        *,
        max_concurrent: int = 512,
        per_model_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.per_model_per_minute = per_model_per_minute
        self._sem = asyncio.Semaphore(max_concurrent)
        self._windows: dict[str, RateWindow] = {}
        self._clock = clock
        self.in_flight = 0

    def window(self, model: str) -> RateWindow:
        w = self._windows.get(model)
        if w is None:
            w = self._windows[model] = RateWindow(self.per_model_per_minute)
        return w

    def gateway_said(self, model: str, remaining: str | None, reset: str | None) -> None:
        """Feed the gateway's X-RateLimit-* headers; a spent window holds requests until reset."""
        if remaining is None or reset is None:
            return
        try:
            if int(float(remaining)) > 0:
                return
            reset_s = float(reset)
        except ValueError:
            return
        # Small values are seconds from now; large ones an epoch time (the unit is undocumented).
        now = self._clock()
        delay = reset_s - time.time() if reset_s > 1e9 else reset_s
        self.window(model).block_until(now + max(0.0, min(delay, WINDOW_S)))

    @asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Hold one gateway request slot for `model` for the duration of the block."""
        window = self.window(model)
        async with self._sem:
            # Check the window after taking a slot, so waiters cannot all pass one check at once.
            while (wait := window.delay(self._clock())) > 0:
                await asyncio.sleep(wait)
            window.record(self._clock())
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
