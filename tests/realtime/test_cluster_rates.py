"""Shared rate windows (cluster mode) against a real Redis: several limiters, one per "node".

Redis is the one at REDIS_URL (default redis://127.0.0.1:6379/0). Without it these tests skip
with one line, unless REQUIRE_REDIS=1 (CI), where they fail. Each test uses its own key prefix;
afterwards every key under it must carry a TTL (then the keys are deleted). The tests about an
unreachable or silent Redis need no Redis. The windows are long (nothing leaves them during a
test) or short (2 s, for what happens when they open): no assertion is on speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from support.service import turn

from realtime.cluster import rates
from realtime.cluster.rates import SharedWindows
from realtime.limits import Limiter
from realtime.server import ServerSettings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "gpt-4.1"
GUARD_S = 15.0  # hang guard, never a performance bound

MakeStore = Callable[..., Awaitable[SharedWindows]]


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    """A client for the test's own checks; skips (or fails, REQUIRE_REDIS=1) without Redis."""
    client = aioredis.Redis.from_url(
        REDIS_URL, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = f"no Redis at {REDIS_URL} ({type(exc).__name__}); set REDIS_URL, or REQUIRE_REDIS=1 to fail"
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; afterwards, every key under it has a TTL."""
    name = f"test:{uuid.uuid4().hex}:rate"
    yield name
    keys = [k async for k in admin.scan_iter(match=f"{name}:*")]
    try:
        forever = [k for k in keys if await admin.pttl(k) == -1]
        assert not forever, f"keys left without a TTL: {forever}"
    finally:
        if keys:
            await admin.delete(*keys)


@asynccontextmanager
async def _stores(**defaults: Any) -> AsyncIterator[MakeStore]:
    stores: list[SharedWindows] = []

    async def make(url: str = REDIS_URL, **kw: Any) -> SharedWindows:
        store = SharedWindows(url, **(defaults | kw))
        stores.append(store)
        await store.start()
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def make_store(prefix: str) -> AsyncIterator[MakeStore]:
    """`await make_store(window=...)`: a started store (a node's) on the test's keys, closed
    afterwards (before the keys are checked)."""
    async with _stores(prefix=prefix) as make:
        yield make


@pytest.fixture
async def make_lone_store() -> AsyncIterator[MakeStore]:
    """`await make_lone_store(url)`: the same, for a Redis that is not there (no Redis needed)."""
    async with _stores(prefix=f"test:{uuid.uuid4().hex}:rate") as make:
        yield make


# ---- helpers ------------------------------------------------------------------------------


class Requests:
    """Requests through several limiters; records who was admitted and what each was told."""

    def __init__(self, limiters: list[Limiter]) -> None:
        self.limiters = limiters
        self.admitted: list[int] = []
        self.waits: dict[int, list[float]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.inside: Callable[[], Awaitable[object]] | None = None  # run while holding a slot

    def start(self, i: int, model: str = MODEL, *, node: int | None = None) -> asyncio.Task[None]:
        lim = self.limiters[i % len(self.limiters) if node is None else node]
        told = self.waits[i] = []

        async def use() -> None:
            async with lim.slot(model, on_wait=told.append):
                self.admitted.append(i)
                if self.inside is not None:
                    await self.inside()

        task = self.tasks[i] = asyncio.create_task(use())
        return task

    async def cancel_the_rest(self) -> None:
        waiting = [t for t in self.tasks.values() if not t.done()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def until(condition: Callable[[], bool], what: str, timeout: float = GUARD_S) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def nodes(stores: list[SharedWindows], limit: int, **kw: Any) -> list[Limiter]:
    return [Limiter(per_model_per_minute=limit, shared=s, **kw) for s in stores]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """A TCP relay to Redis the test can stop and start again on the same port: to the store,
    a Redis that went away and came back (connections dropped, then refused, then accepted).
    With `silent`, it accepts and never answers (a Redis that hangs)."""

    def __init__(self, target: str = REDIS_URL, *, silent: bool = False) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.db = parts.path or "/0"
        self.silent = silent
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            if self.silent:
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.transport.abort()
                self._writers.discard(up_writer)
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._conns.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


# ---- several nodes, one Redis -------------------------------------------------------------


async def test_three_nodes_admit_at_most_the_limit_while_30_requests_arrive(
    make_store: MakeStore, admin: aioredis.Redis
):
    """Limit 6 per window, three nodes, 30 concurrent requests: 6 are sent, each of the 24
    others is told its wait once and holds no reservation once cancelled."""
    stores = [await make_store() for _ in range(3)]
    reqs = Requests(nodes(stores, limit=6))
    for i in range(30):
        reqs.start(i)
    told = lambda: sum(1 for w in reqs.waits.values() if w)  # noqa: E731
    await until(lambda: len(reqs.admitted) == 6 and told() == 24, "6 sent, 24 told to wait")
    await asyncio.sleep(0.3)  # nothing else gets through: the window is spent for 60 s
    assert len(reqs.admitted) == 6
    assert sorted(len(w) for w in reqs.waits.values()) == [0] * 6 + [1] * 24
    assert all(0 < w[0] <= 180 for w in reqs.waits.values() if w)
    await reqs.cancel_the_rest()
    for store in stores:
        assert await store.written()
    key = stores[0].key(MODEL)
    assert await admin.zcard(key) == 6
    assert 0 < await admin.pttl(key) <= 60_000


async def test_when_the_window_opens_the_queued_go_and_never_more_than_the_limit_in_it(
    make_store: MakeStore, admin: aioredis.Redis
):
    stores = [await make_store(window=2.0) for _ in range(3)]
    reqs = Requests(nodes(stores, limit=3))
    key = stores[0].key(MODEL)
    in_window: list[int] = []

    async def count() -> None:
        in_window.append(int(await admin.zcard(key)))

    reqs.inside = count
    for i in range(9):
        reqs.start(i)
    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(*reqs.tasks.values())
    assert sorted(reqs.admitted) == list(range(9))
    assert max(in_window) <= 3  # right after each admission, the window holds at most 3
    assert sorted(len(w) for w in reqs.waits.values()) == [0] * 3 + [1] * 6
    assert all(0 < w[0] <= 6.0 for w in reqs.waits.values() if w)


async def test_models_are_independent(make_store: MakeStore):
    stores = [await make_store() for _ in range(2)]
    reqs = Requests(nodes(stores, limit=1))
    await reqs.start(0, "gpt-4.1", node=0)
    await reqs.start(1, "claude-sonnet-4-6", node=1)  # another model: at once
    held = reqs.start(2, "gpt-4.1", node=1)  # gpt-4.1 is spent, on every node
    await until(lambda: reqs.waits[2] != [], "the second gpt-4.1 request told to wait")
    assert reqs.admitted == [0, 1] and not held.done()
    assert reqs.waits[0] == reqs.waits[1] == []
    await reqs.cancel_the_rest()


async def test_a_cancelled_waiter_leaves_no_member(make_store: MakeStore, admin: aioredis.Redis):
    """Cancelled in line (never admitted), and cancelled after the script admitted it while it
    waited for its node's global slot: neither leaves a member in the shared window."""
    a, b = await make_store(), await make_store()
    node_a = Limiter(per_model_per_minute=2, shared=a)
    node_b = Limiter(per_model_per_minute=2, max_concurrent=1, shared=b)
    reqs = Requests([node_a, node_b])
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    reqs.inside = hold
    reqs.start(0, "other-model", node=1)  # holds node B's only global slot
    await until(lambda: reqs.admitted == [0], "B's slot taken")
    admitted_then_cancelled = reqs.start(1, node=1)
    key = a.key(MODEL)
    await until(lambda: node_b.window(MODEL).count(node_b._clock()) == 1, "B reserved one")
    assert await admin.zcard(key) == 1  # the script admitted it; it waits for B's slot
    reqs.start(2, node=0)
    await until(lambda: reqs.admitted == [0, 2], "A sent one")
    in_line = reqs.start(3, node=0)  # the window (2) is spent: it waits in A's line
    await until(lambda: reqs.waits[3] != [], "told to wait")
    admitted_then_cancelled.cancel()
    in_line.cancel()
    await asyncio.gather(admitted_then_cancelled, in_line, return_exceptions=True)
    assert await a.written() and await b.written()
    members = await admin.zrange(key, 0, -1)
    assert len(members) == 1 and members[0].decode().startswith(a.node)  # only A's send
    gate.set()
    await asyncio.gather(*reqs.tasks.values(), return_exceptions=True)
    assert node_b.in_flight == 0


async def test_the_gateway_saying_the_window_is_spent_holds_every_node(
    make_store: MakeStore, admin: aioredis.Redis
):
    stores = [await make_store() for _ in range(3)]
    limiters = nodes(stores, limit=6)
    limiters[0].gateway_said(MODEL, remaining="0", reset="5")
    assert await stores[0].written()
    pttl = await admin.pttl(stores[0].block_key(MODEL))
    assert 0 < pttl <= 5000
    reqs = Requests(limiters)
    for i in range(3):
        reqs.start(i)
    await until(lambda: all(reqs.waits[i] for i in range(3)), "every node told to wait")
    assert reqs.admitted == []
    assert all(0 < reqs.waits[i][0] <= 5 for i in range(3))
    reqs.start(3, "claude-sonnet-4-6")  # only the model the gateway named is held
    await until(lambda: reqs.admitted == [3], "the other model sent")
    await reqs.cancel_the_rest()


# ---- Redis away ---------------------------------------------------------------------------


async def test_an_unreachable_redis_falls_back_to_the_nodes_window(
    make_lone_store: MakeStore, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="realtime.cluster.rates")
    async with asyncio.timeout(GUARD_S):
        store = await make_lone_store(f"redis://127.0.0.1:{closed_port()}/0")
        assert not store.healthy
        reqs = Requests([Limiter(per_model_per_minute=2, shared=store)])
        for i in range(3):
            reqs.start(i)
        await until(lambda: len(reqs.admitted) == 2 and reqs.waits[2] != [], "local window")
    assert reqs.waits[2][0] == pytest.approx(60, abs=1)  # the node's own window is spent
    warnings = [r for r in caplog.records if r.name == "realtime.cluster.rates"]
    assert len(warnings) == 1  # once per interval, however many requests fell back
    assert "Redis unavailable" in warnings[0].getMessage()
    await reqs.cancel_the_rest()


async def test_a_redis_that_never_answers_holds_a_request_no_longer_than_the_deadline(
    make_lone_store: MakeStore,
):
    silent = Relay(silent=True)
    await silent.start()
    try:
        async with asyncio.timeout(GUARD_S):
            store = await make_lone_store(silent.url, timeout=0.2)
            reqs = Requests([Limiter(per_model_per_minute=5, shared=store)])
            await reqs.start(0)  # the store pauses after the failed check: local at once
            await asyncio.sleep(2 * rates.RETRY_MIN_S)
            await reqs.start(1)  # it asks again, and gives up at the deadline
        assert reqs.admitted == [0, 1] and not store.healthy
    finally:
        await silent.stop()


async def test_redis_going_away_and_coming_back(make_store: MakeStore, admin: aioredis.Redis):
    """Connections dropped and refused: requests go by the node's window; once Redis is back,
    the store uses it again and the sends it missed are in the shared window."""
    relay = Relay()
    await relay.start()
    try:
        store = await make_store(relay.url)
        node = Limiter(per_model_per_minute=10, shared=store)
        reqs = Requests([node])
        await reqs.start(0)
        key = store.key(MODEL)
        assert store.healthy and await admin.zcard(key) == 1
        await relay.stop()  # Redis "restarts": every connection dropped, new ones refused
        async with asyncio.timeout(GUARD_S):
            await reqs.start(1)
            await reqs.start(2)
        assert reqs.admitted == [0, 1, 2] and not store.healthy
        await relay.start()  # back, on the same address
        async with asyncio.timeout(GUARD_S):
            while await store.estimate(MODEL, 10, 0) is None:
                await asyncio.sleep(0.05)
        assert store.healthy
        assert await store.written(timeout=GUARD_S)
        assert await admin.zcard(key) == 3  # the two sends made meanwhile, with their age
        await reqs.start(3)
        assert await admin.zcard(key) == 4
    finally:
        await relay.stop()


async def test_killed_connections_are_replaced(make_store: MakeStore, admin: aioredis.Redis):
    store = await make_store()
    reqs = Requests([Limiter(per_model_per_minute=10, shared=store)])
    await reqs.start(0)
    clients = await admin.client_list()
    mine = [c["id"] for c in clients if c.get("name") == store.client_name]
    assert mine
    for client_id in mine:
        await admin.client_kill_filter(_id=client_id)
    await reqs.start(1)
    assert store.healthy and await admin.zcard(store.key(MODEL)) == 2


# ---- end to end: two servers, one gateway -------------------------------------------------


async def test_two_servers_share_the_rate_limit(
    serve: Any, settings: ServerSettings, prefix: str, admin: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    """Two nodes with --rate-limit 2 and one Redis: of 5 turns across both, 2 reach the
    gateway and the 3 others are told they are queued."""
    monkeypatch.setattr(rates, "KEY_PREFIX", prefix)
    shared = replace(settings, redis_url=REDIS_URL, rate_limit_per_minute=2)
    async with serve(shared) as a, serve(shared) as b:
        clients = [await svc.connect() for svc in (a, a, a, b, b)]
        for c in clients:
            await c.send(turn(0, "hello there"))
        async with asyncio.timeout(GUARD_S):
            while True:
                kinds = [m["type"] for c in clients for m in c.messages]
                if kinds.count("response.done") == 2 and kinds.count("response.queued") == 3:
                    break
                await asyncio.sleep(0.02)
        assert len(a.emulator.requests) == 2  # one gateway for both nodes
        for c in clients:
            await c.close()
    members = await admin.zrange(f"{prefix}:{{{MODEL}}}", 0, -1)
    assert len(members) == 2  # the 3 replies cancelled while queued left no reservation
