"""Per-model rate windows shared by every node through Redis (cluster mode, `--redis-url`).

The gateway's limit is per API key: N requests per model per 60-second window, whichever node
sends them. Each model's window is one sorted set, `{prefix}:{<model>}`, of send times (score:
milliseconds on the Redis server's clock, so the nodes' clocks need not agree; member: one
request's id). A Lua script decides atomically: it drops the sends that left the window, then
either admits the request (adds its member, and sets the key's TTL to the window, so a key
outlives its newest send by one window at most) or answers how long until the window lets one
more through. The gateway's `X-RateLimit-Remaining: 0` closes a model for every node: a key
`{prefix}:blocked:{<model>}` whose TTL is the time until the reset. The braces are Redis
Cluster hash tags: a model's two keys live in one slot, as one script needs.

`Limiter` (realtime/limits.py) keeps its per-node line per model: only the head of a node's
line asks Redis, so a node makes one call per request it sends (plus one per wait).

Writes that need no answer (a reservation dropped by a cancelled request, a send restamped
after a wait for a global slot, the gateway's block) are queued, bounded, and written by the
store's own task, so neither a cancellation nor the gateway's headers wait for Redis.

Redis unavailable: every call has a deadline (`timeout`, default 1 s, per socket operation and
overall); a call that fails returns None and the caller falls back to its node's local window
(`healthy` turns False, a warning is logged at most once per `LOG_EVERY_S`). After a failure
the store does not try again for a short, growing pause (`RETRY_MIN_S` to `RETRY_MAX_S`), so a
request never waits more than one deadline for Redis; redis-py's pool reconnects on the next
try, and a script that a restarted Redis forgot is loaded again (EVALSHA, then SCRIPT LOAD).
Sends admitted locally meanwhile are written to Redis (with their age) once it is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("realtime.cluster.rates")

KEY_PREFIX = "realtime:rate"
WINDOW_S = 60.0
TIMEOUT_S = 1.0  # each Redis call: connect, each socket read/write, and the call overall
RETRY_MIN_S = 0.25  # after a failure, requests use local windows for this long, then retry
RETRY_MAX_S = 5.0  # ... the pause doubles on each failed retry up to this
LOG_EVERY_S = 30.0  # "Redis unavailable" is logged at most this often
MAX_PENDING = 4096  # queued writes; beyond it the oldest are dropped (they expire anyway)
MAX_AHEAD = 1000  # an estimate counts at most this many requests in line

T = TypeVar("T")

# KEYS[1] the model's sorted set of send times; KEYS[2] its block key.
# ARGV: limit (0 = none: only the block holds), window (ms), member ('' = estimate only),
# requests in line ahead of this one (for the estimate).
# Returns 0 if admitted (the member is added), else the milliseconds to wait; with no member,
# the milliseconds each of the requests 0..ahead in a line would wait (a list).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local member, ahead = ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local when = now
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then when = now + blocked end
local waits, times = {}, {}
if limit > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -limit, -1, 'WITHSCORES')
  for i = 2, #newest, 2 do times[#times + 1] = tonumber(newest[i]) end
end
for k = 0, ahead do
  if limit > 0 and #times >= limit then
    local opens = times[#times - limit + 1] + window
    if opens > when then when = opens end
  end
  times[#times + 1] = when
  waits[k + 1] = when - now
end
if member == '' then return waits end
if waits[1] > 0 then return waits[1] end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
end
return 0
"""

# KEYS[1] the model's sorted set. ARGV: member, its age (ms), window (ms).
# A send (or a reservation restamped as a send) made `age` ms ago; gone if older than the window.
RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local age, window = tonumber(ARGV[2]), tonumber(ARGV[3])
if age >= window then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now - age, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""

# KEYS[1] the model's block key. ARGV: milliseconds. Only ever extends a block.
BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
"""


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SharedWindows:
    """The per-model rate windows of every node, in one Redis.

    `start()` connects (and returns even if Redis is down); `close()` stops the writer task
    and closes the connection pool. Between them, `admit`/`estimate` answer, or return None
    when Redis cannot (the caller then uses its own window); `sent`/`forget`/`block` queue a
    write and return at once.
    """

    def __init__(
        self,
        url: str,
        *,
        window: float = WINDOW_S,
        prefix: str | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.url = url
        self.window = window
        self.prefix = prefix if prefix is not None else KEY_PREFIX
        self.timeout = timeout
        self.node = uuid.uuid4().hex[:12]  # this store's members are "<node>:<n>"
        self.client_name = f"realtime-rates-{self.node}"
        self._clock = time.monotonic
        self._ids = itertools.count(1)
        self._client: aioredis.Redis | None = None
        self._admit: Any = None
        self._record: Any = None
        self._block: Any = None
        self._writer: asyncio.Task[None] | None = None
        self._pending: deque[tuple[str, str, str, float]] = deque(maxlen=MAX_PENDING)
        self._blocks: dict[str, float] = {}  # model -> until (store clock), not yet written
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.healthy = True  # False from a failed call until the next one that succeeds
        self._retry_at = 0.0
        self._pause = RETRY_MIN_S
        self._logged_at: float | None = None
        self._fallbacks = 0  # calls answered locally since the last warning

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Create the pool and the writer task, and check Redis once (bounded)."""
        if self._client is not None:
            return
        # One immediate retry on a broken connection (a restarted Redis); each try is bounded
        # by the socket timeouts and the whole call by `timeout` (`_call`).
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1),
            client_name=self.client_name,
        )
        self._admit = self._client.register_script(ADMIT)
        self._record = self._client.register_script(RECORD)
        self._block = self._client.register_script(BLOCK)
        self._writer = asyncio.create_task(self._write(), name="realtime.cluster.rates writer")
        if await self._call(self._client.ping) is not None:
            log.info("rate windows are shared through Redis", extra={"redis": redact(self.url)})

    async def close(self) -> None:
        """Write what is queued (briefly, if Redis answers), stop the writer, close the pool."""
        if self._writer is not None:
            if self.healthy:
                await self.written()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def written(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is written; False if not within `timeout` (default:
        the store's call deadline)."""
        if self._idle.is_set():
            return True
        if self._writer is None:
            return False
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # ---- keys -------------------------------------------------------------------------

    def key(self, model: str) -> str:
        return f"{self.prefix}:{{{model}}}"

    def block_key(self, model: str) -> str:
        return f"{self.prefix}:blocked:{{{model}}}"

    def member(self) -> str:
        """A new request id, unique across nodes."""
        return f"{self.node}:{next(self._ids)}"

    # ---- answers ------------------------------------------------------------------------

    async def admit(self, model: str, limit: int, member: str) -> float | None:
        """Admit one request for `model` (0.0: `member` is now in the window) or say how many
        seconds until the window may let one through; None: Redis did not answer."""
        result = await self._ask(model, limit, member, 0)
        return None if result is None else max(0.0, int(result) / 1000)

    async def estimate(self, model: str, limit: int, ahead: int) -> list[float] | None:
        """Seconds until each of the requests 0..`ahead` in a line may go (at most
        MAX_AHEAD + 1 of them); None: Redis did not answer."""
        result = await self._ask(model, limit, "", min(ahead, MAX_AHEAD))
        return None if result is None else [max(0.0, int(ms) / 1000) for ms in result]

    async def _ask(self, model: str, limit: int, member: str, ahead: int) -> Any:
        script = self._admit
        if script is None:
            return None
        args = (max(0, limit), self._ms(self.window), member, ahead)
        keys = (self.key(model), self.block_key(model))
        return await self._call(lambda: script(keys=keys, args=args))

    # ---- writes, queued ---------------------------------------------------------------

    def sent(self, model: str, member: str) -> None:
        """`member` was sent now (a reservation restamped, or a send admitted locally)."""
        self._queue(("sent", model, member, self._clock()))

    def forget(self, model: str, member: str) -> None:
        """`member` will never be sent (cancelled): drop it from the window."""
        self._queue(("forget", model, member, 0.0))

    def block(self, model: str, seconds: float) -> None:
        """The gateway said `model`'s window is spent for `seconds`: hold every node."""
        until = self._clock() + seconds
        if until > self._blocks.get(model, 0.0):
            if model not in self._blocks and len(self._blocks) >= MAX_PENDING:
                return
            self._blocks[model] = until
            self._idle.clear()
            self._wake.set()

    def _queue(self, op: tuple[str, str, str, float]) -> None:
        self._pending.append(op)  # a full deque drops its oldest
        self._idle.clear()
        self._wake.set()

    async def _write(self) -> None:
        """The writer: applies queued writes in order; on failure waits and tries again."""
        while True:
            if not self._pending and not self._blocks:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            pause = self._retry_at - self._clock()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            if self._blocks:
                model, until = next(iter(self._blocks.items()))
                ok = await self._write_block(model, until)
                if ok and self._blocks.get(model) == until:
                    del self._blocks[model]
            else:
                ok = await self._write_op(self._pending[0])
                if ok and self._pending:
                    self._pending.popleft()

    async def _write_block(self, model: str, until: float) -> bool:
        ms = self._ms(until - self._clock())
        if ms <= 0:
            return True
        script = self._block
        key = self.block_key(model)
        return await self._call(lambda: script(keys=(key,), args=(ms,))) is not None

    async def _write_op(self, op: tuple[str, str, str, float]) -> bool:
        kind, model, member, at = op
        client, key = self._client, self.key(model)
        if client is None:
            return False
        if kind == "forget":
            return await self._call(lambda: client.zrem(key, member)) is not None
        script = self._record
        args = (member, self._ms(self._clock() - at), self._ms(self.window))
        return await self._call(lambda: script(keys=(key,), args=args)) is not None

    # ---- every call: bounded, and a failure falls back --------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T | None:
        if self._client is None or self._clock() < self._retry_at:
            self._fell_back(None)
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        if not self.healthy:
            self.healthy = True
            log.info("Redis answers again: rate windows are shared", extra={"redis": redact(self.url)})
        self._pause = RETRY_MIN_S
        return result

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        if now >= self._retry_at:  # concurrent failures of one outage grow the pause once
            self._retry_at = now + self._pause
            self._pause = min(self._pause * 2, RETRY_MAX_S)
        self.healthy = False
        self._fell_back(exc)

    def _fell_back(self, exc: BaseException | None) -> None:
        self._fallbacks += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
            return
        if exc is None and self.healthy:
            return
        self._logged_at = now
        log.warning(
            "Redis unavailable: rate limits fall back to this node's own windows",
            extra={
                "redis": redact(self.url),
                "reason": f"{type(exc).__name__}: {exc}" if exc is not None else "retry paused",
                "fallbacks": self._fallbacks,
            },
        )
        self._fallbacks = 0

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(0, round(seconds * 1000))
