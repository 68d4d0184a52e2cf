"""Admission control: the pure rate window with plain calls, the limiter on a real loop."""

from __future__ import annotations

import asyncio

import pytest

from realtime.limits import Limiter, RateWindow


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
    w.block_until(130)
    assert w.delay(100) == pytest.approx(30)


def test_gateway_headers_close_the_window_until_reset():
    now = [1000.0]
    lim = Limiter(per_model_per_minute=0, clock=lambda: now[0])
    lim.gateway_said("gpt-4.1", remaining="5", reset="30")
    assert lim.window("gpt-4.1").delay(now[0]) == 0
    lim.gateway_said("gpt-4.1", remaining="0", reset="12")
    assert lim.window("gpt-4.1").delay(now[0]) == pytest.approx(12)
    assert lim.window("other-model").delay(now[0]) == 0


async def test_global_cap_queues_and_a_cancelled_waiter_is_never_admitted():
    lim = Limiter(max_concurrent=1)
    admitted: list[str] = []
    release = asyncio.Event()

    async def use(name: str) -> None:
        async with lim.slot("m"):
            admitted.append(name)
            await release.wait()

    first = asyncio.create_task(use("first"))
    await asyncio.sleep(0.01)
    stale = asyncio.create_task(use("stale"))
    fresh = asyncio.create_task(use("fresh"))
    await asyncio.sleep(0.01)
    assert admitted == ["first"] and lim.in_flight == 1
    stale.cancel()  # its turn went stale while it waited
    release.set()
    await asyncio.wait_for(asyncio.gather(first, fresh), 5)
    assert admitted == ["first", "fresh"]
    assert lim.in_flight == 0
