"""Admission to the gateway: per-model rate windows, then a global cap on concurrent requests.

A request waits here, cancellable, instead of tripping the gateway's 429: a request whose turn
went stale while it waited is cancelled by its session and is never sent. The per-model limit
mirrors the gateway's own rule (N requests per model in a 60-second window); the window can
also be closed early when the gateway reports `X-RateLimit-Remaining: 0`.

The order of the two waits matters. A request first waits in its model's line until the
model's window lets one more request through, and only then for one of the global slots: a
rate-limited model holds no slot while it waits, so it never delays the other models. The line
is first come, first served, and only its head watches the window; when the head passes, it
records its send time at once (a reservation), so waiters cannot all pass one check. The
reservation becomes the real send time when the global slot is taken, and is dropped if the
request is cancelled before that: a cancelled request leaves neither a slot nor a reservation.

Cluster mode (`shared`, realtime/cluster/rates.py): the windows are also kept in Redis, for
every node. The line stays per node; its head passes when both its node's window and the
shared one let it, and the shared window's reservation is restamped or dropped as the local
one is. When Redis does not answer, the node's own window decides (`SharedRates.admit` returns
None). The global cap stays per node.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_S = 60.0
MAX_MODELS = 1024  # per-model windows kept, least recently used dropped first


class RateWindow:
    """A sliding 60-second window of send times for one model (pure; the clock is passed in)."""

    def __init__(self, limit: int, window: float = WINDOW_S) -> None:
        self.limit = limit  # requests per window; 0 = no limit (only `block_until` holds)
        self.window = window
        self._sent: list[float] = []  # send times still in the window, sorted
        self._blocked_until = 0.0

    def delay(self, now: float, ahead: int = 0) -> float:
        """Seconds to wait before one more request may be sent (0 = now).

        With `ahead` requests in line before it, each sent as early as the window allows:
        the estimate a queued request is told (`Limiter.slot`'s `on_wait`).
        """
        return self.delays(now, ahead + 1)[-1]

    def delays(self, now: float, count: int) -> list[float]:
        """`delay(now, ahead=k)` for each k in 0..count-1, in one pass."""
        self._expire(now)
        when = max(now, self._blocked_until)
        if self.limit <= 0:
            return [when - now] * count
        times = self._sent[-self.limit :]  # only the newest `limit` sends decide
        waits: list[float] = []
        for _ in range(count):
            if len(times) >= self.limit:
                # One more may go once the limit-th newest send has left the window.
                when = max(when, times[-self.limit] + self.window)
            times.append(when)
            waits.append(when - now)
        return waits

    def record(self, now: float) -> None:
        """A request is sent (or reserved to be sent) at `now`."""
        if self.limit > 0:
            insort(self._sent, now)

    def forget(self, when: float) -> None:
        """Drop one send recorded at `when` (a reservation that was never sent), if present."""
        i = bisect_left(self._sent, when)
        if i < len(self._sent) and self._sent[i] == when:
            del self._sent[i]

    def count(self, now: float) -> int:
        """Sends and reservations in the window at `now`."""
        self._expire(now)
        return len(self._sent)

    def block_until(self, when: float) -> None:
        """The gateway said the window is spent: hold requests until `when`."""
        self._blocked_until = max(self._blocked_until, when)

    def _expire(self, now: float) -> None:
        del self._sent[: bisect_right(self._sent, now - self.window)]


class SharedRates(Protocol):
    """Rate windows shared with other nodes (`realtime.cluster.rates.SharedWindows`)."""

    window: float

    def member(self) -> str:
        """A new request id, unique across nodes."""
        ...

    async def admit(self, model: str, limit: int, member: str) -> float | None:
        """0.0: admitted, `member` reserved; > 0: seconds to wait; None: no answer (local)."""
        ...

    async def estimate(self, model: str, limit: int, ahead: int) -> list[float] | None:
        """Seconds until the requests 0..`ahead` in a line may go; None: no answer."""
        ...

    def sent(self, model: str, member: str) -> None:
        """`member` is sent now (queued write)."""
        ...

    def forget(self, model: str, member: str) -> None:
        """`member` will never be sent (queued write)."""
        ...

    def block(self, model: str, seconds: float) -> None:
        """Hold `model` for every node for `seconds` (queued write)."""
        ...


@dataclass(eq=False, slots=True)
class _Model:
    """One model's window and the line of requests waiting for it."""

    window: RateWindow
    line: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO; its holder is the head
    # The requests in the line, in its order (the head first), each with its `on_wait` until
    # it is told its wait (then None).
    waiting: dict[object, Callable[[float], None] | None] = field(default_factory=dict)
    users: int = 0  # requests between entering the line and being sent (or cancelled)


class Limiter:
    """Per-model rate windows plus a global concurrency cap, shared by all sessions."""

    def __init__(
        self,
        *,
        max_concurrent: int = 512,
        per_model_per_minute: int = 0,
        max_models: int = MAX_MODELS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        shared: SharedRates | None = None,
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be >= 1")
        self.max_concurrent = max_concurrent
        self.per_model_per_minute = per_model_per_minute
        self.max_models = max_models
        self._sem = asyncio.Semaphore(max_concurrent)
        self._models: OrderedDict[str, _Model] = OrderedDict()  # least recently used first
        self._clock = clock
        self._sleep = sleep
        self.shared = shared
        self._window_s = shared.window if shared is not None else WINDOW_S
        self.in_flight = 0

    @property
    def models(self) -> list[str]:
        """The models with a window kept, least recently used first."""
        return list(self._models)

    def window(self, model: str) -> RateWindow:
        return self._model(model).window

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
        hold = max(0.0, min(delay, WINDOW_S))
        self.window(model).block_until(now + hold)
        if self.shared is not None and hold > 0:
            self.shared.block(model, hold)

    @asynccontextmanager
    async def slot(
        self, model: str, *, on_wait: Callable[[float], None] | None = None
    ) -> AsyncIterator[None]:
        """Hold one gateway request slot for `model` for the duration of the block.

        Waits first in `model`'s line for its rate window, then for a global slot. If the
        request must wait for the window, `on_wait` is called once with the expected wait in
        seconds (before waiting; or, if the window closes while it is in line, when the head of
        the line learns it: each request not yet told is told its estimate then). Cancelled
        while waiting, the request takes no slot and leaves no reservation.
        """
        entry = self._model(model)
        entry.users += 1
        try:
            if on_wait is not None:
                expected = await self._expected(model, entry)
                if expected > 0:
                    on_wait(expected)
                    on_wait = None
            reserved, member = await self._wait_in_line(model, entry, on_wait)
            waits = self._sem.locked()
            try:
                await self._sem.acquire()
            except BaseException:
                entry.window.forget(reserved)
                if member is not None and self.shared is not None:
                    self.shared.forget(model, member)
                raise
            entry.window.forget(reserved)  # the reservation becomes the real send time
            entry.window.record(self._clock())
            if member is not None and waits and self.shared is not None:
                self.shared.sent(model, member)
        finally:
            entry.users -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._sem.release()

    async def _expected(self, model: str, entry: _Model) -> float:
        """The wait a request entering the line is told, behind those already in it."""
        ahead = len(entry.waiting)
        expected = entry.window.delay(self._clock(), ahead=ahead)
        if self.shared is not None and ahead > 0:  # with none ahead, the head's answer says it
            remote = await self.shared.estimate(model, self.per_model_per_minute, ahead)
            if remote is not None:
                expected = max(expected, remote[-1])
        return expected

    async def _tell(self, model: str, entry: _Model, wait: float) -> None:
        """The head must wait `wait` s: tell it, and each request behind it not yet told."""
        untold = [(k, t) for k, (t, cb) in enumerate(entry.waiting.items()) if cb is not None]
        if not untold:
            return
        last = untold[-1][0]
        waits = entry.window.delays(self._clock(), last + 1)
        if self.shared is not None and last > 0:
            remote = await self.shared.estimate(model, self.per_model_per_minute, last)
            for k, r in enumerate(remote or ()):  # at most MAX_AHEAD + 1 of them
                waits[k] = max(waits[k], r)
        for k, token in untold:
            on_wait = entry.waiting.get(token)  # gone if it was cancelled meanwhile
            if on_wait is not None:
                entry.waiting[token] = None
                on_wait(max(wait, waits[k]) if k else wait)

    async def _wait_in_line(
        self, model: str, entry: _Model, on_wait: Callable[[float], None] | None
    ) -> tuple[float, str | None]:
        """Wait for the model's window, behind earlier requests; reserve a send. Returns its
        local time and its member in the shared window (None: not reserved there)."""
        token = object()
        entry.waiting[token] = on_wait
        try:
            async with entry.line:
                # The window can close again while the head sleeps (the gateway's headers).
                while True:
                    member = None
                    wait = entry.window.delay(self._clock())
                    if wait <= 0 and self.shared is not None:
                        member, wait = await self._admit_shared(model)
                    if wait <= 0:
                        break
                    await self._tell(model, entry, wait)
                    await self._sleep(wait)
                now = self._clock()
                entry.window.record(now)
                return now, member
        finally:
            del entry.waiting[token]

    async def _admit_shared(self, model: str) -> tuple[str | None, float]:
        """Ask the shared window: (member reserved there or None, seconds to wait)."""
        assert self.shared is not None
        shared, limit = self.shared, self.per_model_per_minute
        member = shared.member()
        try:
            wait = await shared.admit(model, limit, member)
        except BaseException:
            shared.forget(model, member)  # cancelled mid-call: the script may have admitted it
            raise
        if wait is not None and wait > 0:
            return None, wait
        if limit <= 0:  # only the gateway's block was checked: nothing is kept in the window
            return None, 0.0
        if wait is None:  # no answer: this node's window decided; Redis learns it when back
            shared.sent(model, member)
        return member, 0.0

    def _model(self, model: str) -> _Model:
        entry = self._models.get(model)
        if entry is not None:
            self._models.move_to_end(model)
            return entry
        entry = self._models[model] = _Model(
            RateWindow(self.per_model_per_minute, window=self._window_s)
        )
        self._evict(keep=model)
        return entry

    def _evict(self, *, keep: str) -> None:
        """Drop the least recently used windows beyond `max_models`.

        A model with requests in line or reserved is kept (dropping it would let its next
        request skip the line), so the map exceeds the bound only by such models.
        """
        excess = len(self._models) - self.max_models
        if excess <= 0:
            return
        idle: list[str] = []
        for name, entry in self._models.items():
            if len(idle) == excess:
                break
            if entry.users == 0 and name != keep:
                idle.append(name)
        for name in idle:
            del self._models[name]
