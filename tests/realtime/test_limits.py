"""Admission control: the pure rate window with plain calls, the limiter on a real loop.

The limiter's clock and sleep are fakes: time moves only when a test calls `advance`, and the
tests assert what was admitted, in which order, and what is held, never how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from realtime.limits import MAX_MODELS, Limiter, RateWindow


def test_window_allows_the_limit_then_asks_to_wait_until_the_oldest_expires():
    w = RateWindow(limit=2, window=60)
    assert w.delay(0) == 0
    w.record(0)
    w.record(10)
    assert w.delay(20) == pytest.approx(40)
    assert w.delay(60) == 0  # the first send left the window
    w.record(60)
    assert w.delay(61) == pytest.approx(9)


def test_window_without_a_limit_never_waits_but_honours_a_block():
    w = RateWindow(limit=0)
    for t in range(100):
        w.record(t)
    assert w.delay(100) == 0
    assert w.count(100) == 0
    w.block_until(130)
    assert w.delay(100) == pytest.approx(30)
    assert w.delay(100, ahead=5) == pytest.approx(30)


def test_window_estimates_the_wait_behind_requests_in_line():
    w = RateWindow(limit=2, window=60)
    assert [w.delay(0, ahead=n) for n in range(5)] == [0, 0, 60, 60, 120]
    w.record(0)
    assert [w.delay(0, ahead=n) for n in range(4)] == [0, 60, 60, 120]
    w.block_until(70)
    assert [w.delay(0, ahead=n) for n in range(4)] == [70, 70, 130, 130]


def test_window_delays_give_each_place_in_line_in_one_pass():
    w = RateWindow(limit=2, window=60)
    w.record(0)
    assert w.delays(0, 4) == [w.delay(0, ahead=k) for k in range(4)] == [0, 60, 60, 120]
    w.block_until(70)
    assert w.delays(0, 3) == [70, 70, 130]
    assert RateWindow(limit=0).delays(5, 3) == [0, 0, 0]


def test_window_forgets_a_reservation_and_keeps_sends_sorted():
    w = RateWindow(limit=3, window=60)
    w.record(20)
    w.record(5)  # a late restamp can land before a newer reservation
    w.record(20)
    assert w.count(20) == 3
    assert w.delay(20) == pytest.approx(45)
    w.forget(20)
    w.forget(99)  # not recorded: nothing happens
    assert w.count(20) == 2
    assert w.delay(20) == 0
    assert w.count(65) == 1  # 5 left the window; one 20 is left


def test_gateway_headers_close_the_window_until_reset():
    now = [1000.0]
    lim = Limiter(per_model_per_minute=0, clock=lambda: now[0])
    lim.gateway_said("gpt-4.1", remaining="5", reset="30")
    assert lim.window("gpt-4.1").delay(now[0]) == 0
    lim.gateway_said("gpt-4.1", remaining="0", reset="12")
    assert lim.window("gpt-4.1").delay(now[0]) == pytest.approx(12)
    assert lim.window("other-model").delay(now[0]) == 0


# ---- the limiter, with fake time ----------------------------------------------------------


class FakeTime:
    """A clock that moves only on `advance`, and a sleep that wakes when it has moved enough."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        entry = (self.now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    @property
    def asleep(self) -> int:
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for when, fut in self._sleepers:
            if when <= self.now and not fut.done():
                fut.set_result(None)


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition` holds (a bounded number of loop turns)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def free_slots(lim: Limiter) -> int:
    return lim._sem._value  # the semaphore's count is the resource under test


class Users:
    """Tasks that take a slot and hold it until released; records admissions in order."""

    def __init__(self, lim: Limiter) -> None:
        self.lim = lim
        self.admitted: list[str] = []
        self.waits: dict[str, list[float]] = {}
        self.release: dict[str, asyncio.Event] = {}

    def start(self, name: str, model: str, *, hold: bool = False) -> asyncio.Task[None]:
        self.waits[name] = []
        gate = self.release[name] = asyncio.Event()
        if not hold:
            gate.set()

        async def use() -> None:
            async with self.lim.slot(model, on_wait=self.waits[name].append):
                self.admitted.append(name)
                await gate.wait()

        return asyncio.create_task(use(), name=name)


def limiter(ft: FakeTime, *, cap: int = 10, per_minute: int = 1, **kw: int) -> Limiter:
    return Limiter(
        max_concurrent=cap, per_model_per_minute=per_minute, clock=ft.clock, sleep=ft.sleep, **kw
    )


async def test_a_rate_limited_model_does_not_delay_another_model():
    ft = FakeTime()
    lim = limiter(ft, cap=1)
    u = Users(lim)
    await u.start("a1", "A")  # A's window (1 a minute) is spent for 60 s
    a2 = u.start("a2", "A")
    await until(lambda: ft.asleep == 1)
    assert u.waits["a2"] == [60.0]
    assert (lim.in_flight, free_slots(lim)) == (0, 1)  # waiting for its window, a2 holds no slot
    b = u.start("b", "B", hold=True)
    await until(lambda: "b" in u.admitted)  # the only global slot goes to B at once
    assert (lim.in_flight, free_slots(lim)) == (1, 0)
    ft.advance(60)  # A's window opens while B holds the slot: a2 now waits for the slot
    await settle()
    assert u.admitted == ["a1", "b"] and ft.asleep == 0
    assert lim.window("A").count(ft.now) == 1  # a2's reservation
    u.release["b"].set()
    await asyncio.gather(a2, b)
    assert u.admitted == ["a1", "b", "a2"]
    assert u.waits == {"a1": [], "a2": [60.0], "b": []}
    assert (lim.in_flight, free_slots(lim)) == (0, 1)


async def test_waiters_for_one_model_pass_one_at_a_time_in_order():
    ft = FakeTime()
    lim = limiter(ft, per_minute=2)
    u = Users(lim)
    tasks = [u.start(f"r{i}", "A") for i in range(5)]
    await until(lambda: ft.asleep == 1)
    await settle()
    assert u.admitted == ["r0", "r1"]
    assert [u.waits[f"r{i}"] for i in range(5)] == [[], [], [60.0], [60.0], [120.0]]
    assert ft.asleep == 1  # only the head of the line watches the window
    ft.advance(59.5)
    await settle()
    assert u.admitted == ["r0", "r1"]
    ft.advance(0.5)
    await until(lambda: len(u.admitted) == 4)
    await settle()
    assert u.admitted == ["r0", "r1", "r2", "r3"]  # two per window, never all at once
    assert lim.window("A").count(ft.now) == 2  # r2 and r3 (r0 and r1 have left the window)
    ft.advance(60)
    await asyncio.gather(*tasks)
    assert u.admitted == ["r0", "r1", "r2", "r3", "r4"]
    assert lim.window("A").count(ft.now) == 1  # r4 at +120 (r2 and r3 at +60 have left)


async def test_a_waiter_cancelled_in_line_leaves_no_slot_and_no_reservation():
    ft = FakeTime()
    lim = limiter(ft, cap=2)
    u = Users(lim)
    await u.start("first", "A")
    stale = u.start("stale", "A")  # the head of the line, asleep until +60
    fresh = u.start("fresh", "A")  # behind it
    await until(lambda: ft.asleep == 1)
    assert u.waits == {"first": [], "stale": [60.0], "fresh": [120.0]}
    stale.cancel()  # its turn went stale while it waited
    await until(lambda: stale.done())
    await settle()
    assert ft.asleep == 1  # fresh is the head now
    assert lim.window("A").count(ft.now) == 1  # only first's send
    assert (lim.in_flight, free_slots(lim)) == (0, 2)
    ft.advance(60)  # fresh goes at +60, where stale would have gone: nothing of stale is left
    await fresh
    assert u.admitted == ["first", "fresh"]
    assert (lim.in_flight, free_slots(lim)) == (0, 2)


async def test_cancelling_every_waiter_empties_the_line():
    ft = FakeTime()
    lim = limiter(ft)
    u = Users(lim)
    await u.start("first", "A")
    waiting = [u.start(f"w{i}", "A") for i in range(3)]
    await until(lambda: ft.asleep == 1)
    await settle()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert all(t.cancelled() for t in waiting)
    assert ft.asleep == 0 and lim.window("A").count(ft.now) == 1
    assert (lim.in_flight, free_slots(lim)) == (0, 10)
    ft.advance(60)
    await u.start("later", "A")  # passes at once: no reservation of the cancelled ones is left
    assert u.waits["later"] == []
    assert u.admitted == ["first", "later"]


async def test_a_waiter_cancelled_while_waiting_for_a_global_slot_drops_its_reservation():
    ft = FakeTime()
    lim = limiter(ft, cap=1)
    u = Users(lim)
    holder = u.start("holder", "X", hold=True)
    await until(lambda: "holder" in u.admitted)
    stale = u.start("stale", "A")
    await until(lambda: lim.window("A").count(ft.now) == 1)  # passed its window: reserved
    await settle()
    assert u.admitted == ["holder"]
    stale.cancel()
    await asyncio.gather(stale, return_exceptions=True)
    assert lim.window("A").count(ft.now) == 0
    assert (lim.in_flight, free_slots(lim)) == (1, 0)
    u.release["holder"].set()
    await holder
    assert (lim.in_flight, free_slots(lim)) == (0, 1)
    await u.start("fresh", "A")  # A's window is untouched by the request never sent
    assert u.waits["fresh"] == [] and u.admitted == ["holder", "fresh"]


async def test_the_reservation_becomes_the_send_time_when_the_slot_is_taken():
    ft = FakeTime()
    lim = limiter(ft, cap=1)
    u = Users(lim)
    holder = u.start("holder", "X", hold=True)
    await until(lambda: "holder" in u.admitted)
    late = u.start("late", "A")
    await until(lambda: lim.window("A").count(ft.now) == 1)
    ft.advance(30)  # it waits 30 s for the global slot
    u.release["holder"].set()
    await asyncio.gather(holder, late)
    ft.advance(40)  # 70 s after the reservation, 40 s after the real send
    nxt = u.start("next", "A")
    await until(lambda: ft.asleep == 1)
    assert u.waits["next"] == [pytest.approx(20.0)]  # counted from the send at +30
    ft.advance(20)
    await nxt


async def test_on_wait_is_called_once_even_if_the_window_closes_again():
    ft = FakeTime()
    lim = limiter(ft, per_minute=0)
    u = Users(lim)
    await u.start("free", "A")
    assert u.waits["free"] == []  # no wait, no call
    lim.gateway_said("A", remaining="0", reset="12")
    task = u.start("held", "A")
    await until(lambda: ft.asleep == 1)
    assert u.waits["held"] == [12.0]
    ft.advance(5)
    lim.gateway_said("A", remaining="0", reset="30")  # closed again until +35
    ft.advance(7)
    await until(lambda: ft.asleep == 1 and ft.now == 1012)
    await settle()
    assert u.admitted == ["free"]
    ft.advance(23)
    await task
    assert u.admitted == ["free", "held"] and u.waits["held"] == [12.0]


async def test_a_request_in_line_behind_a_held_head_is_told_the_wait():
    ft = FakeTime()
    lim = limiter(ft, cap=1, per_minute=0)
    u = Users(lim)
    seen: list[float] = []

    async def gated() -> None:
        async with lim.slot("A", on_wait=seen.append):
            pass

    lim.window("A").block_until(ft.now + 10)
    head = asyncio.create_task(gated())
    await until(lambda: ft.asleep == 1)
    behind = u.start("behind", "A")
    await settle()
    assert seen == [10.0] and u.waits["behind"] == [10.0]
    ft.advance(10)
    await asyncio.gather(head, behind)


async def test_global_cap_queues_and_a_cancelled_waiter_is_never_admitted():
    lim = Limiter(max_concurrent=1)
    u = Users(lim)
    first = u.start("first", "m", hold=True)
    await until(lambda: u.admitted == ["first"])
    stale = u.start("stale", "m")
    fresh = u.start("fresh", "m")
    await settle()
    assert u.admitted == ["first"] and lim.in_flight == 1
    stale.cancel()  # its turn went stale while it waited
    u.release["first"].set()
    await asyncio.gather(first, fresh)
    assert stale.cancelled()
    assert u.admitted == ["first", "fresh"]
    assert (lim.in_flight, free_slots(lim)) == (0, 1)


# ---- the bound on windows -----------------------------------------------------------------


def test_windows_are_bounded_least_recently_used_out():
    lim = Limiter(max_models=3)
    for model in ("a", "b", "c"):
        lim.window(model)
    lim.window("a")  # used again: now the most recent
    lim.window("d")
    assert lim.models == ["c", "a", "d"]
    lim.gateway_said("e", remaining="0", reset="5")
    assert lim.models == ["a", "d", "e"]
    with pytest.raises(ValueError):
        Limiter(max_models=0)


def test_the_default_bound_is_1024_models():
    lim = Limiter()
    assert lim.max_models == MAX_MODELS == 1024
    for i in range(1500):
        lim.window(f"m{i}")
    assert len(lim.models) == 1024
    assert lim.models[0] == "m476" and lim.models[-1] == "m1499"


async def test_a_model_with_requests_in_line_keeps_its_window():
    ft = FakeTime()
    lim = limiter(ft, max_models=2)
    u = Users(lim)
    await u.start("first", "A")
    waiting = u.start("waiting", "A")
    await until(lambda: ft.asleep == 1)
    for model in ("b", "c", "d"):
        lim.window(model)
    assert lim.models == ["A", "d"]  # A is the oldest, but in use
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    lim.window("e")
    assert lim.models == ["d", "e"]
