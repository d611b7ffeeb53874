"""Redis cache/broker: redis-py's sync client, called through trio worker threads.

Over 400 lines: one engine per file, method for method beside ``memory.py`` and the
``base.py`` interface, so the two implementations can be read side by side.

Chosen over ``redis.asyncio`` + trio-asyncio after measuring both
(``benchmarks/redis_clients.py``, ``docs/notes/cache-choice.md``): the
threaded client was faster sequentially, for pipelines and for pub/sub
latency, and needs no asyncio loop around the application.

* Every command runs in ``trio.to_thread.run_sync`` behind a
  ``CapacityLimiter`` sized to the connection pool, so a thread always finds a
  free connection.
* Connection and read timeouts (``socket_connect_timeout``/``socket_timeout``,
  default 1.5 s) bound every call; redis-py's own retries are off so a dead
  server fails fast. ``redis.ConnectionError``/``TimeoutError`` become
  :class:`CacheUnavailable`, other Redis errors :class:`CacheError`.
  Cancelling a caller waits for its in-flight command (bounded by the socket
  timeout) so a connection is never abandoned mid-reply.
* Each subscription owns a connection (from a separate pool) and a daemon
  thread blocked in ``PubSub.get_message(timeout=poll_interval)``; messages go
  to trio through ``trio.from_thread.run_sync`` into the subscription's
  bounded buffer. Leaving the ``subscribe`` block stops the thread (within
  ``poll_interval``), closes the connection (which unsubscribes) and joins it.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, ParamSpec, TypeVar, cast

import redis
import redis.client
import redis.exceptions
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from store.cache.base import (
    DEFAULT_SUBSCRIPTION_BUFFER,
    CacheEngine,
    CacheError,
    CachePipeline,
    CacheUnavailable,
    PipelineOp,
    Subscription,
    Value,
    _as_sequence,
    _check_max_len,
    check_ttl,
    to_bytes,
    ttl_ms,
)

__all__ = ["RedisCacheEngine"]

P = ParamSpec("P")
T = TypeVar("T")

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# INCRBY, then give the key a TTL if it has none (i.e. it was just created):
# a fixed-window counter. Returns {value, remaining ms or -1}.
_INCR_WINDOW = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if ARGV[2] ~= '' and pttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  pttl = tonumber(ARGV[2])
end
return {v, pttl}
"""

_PRESENCE_ADD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[4] ~= '' then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local bar = string.find(m, '|', 1, true)
    if bar and redis.call('EXISTS', ARGV[4] .. string.sub(m, 1, bar - 1)) == 0 then
      redis.call('ZREM', KEYS[1], m)
    end
  end
end
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
end
local n = redis.call('ZCARD', KEYS[1])
if n > 0 and #ARGV >= 5 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])  -- the key lives as long as its longest member
end
return n
"""

_subscription_ids = itertools.count(1)


def _wrap(exc: Exception) -> CacheError:
    if isinstance(exc, _UNAVAILABLE):
        return CacheUnavailable(f"redis unavailable: {exc}")
    return CacheError(str(exc))


def _decode_channel(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _queue_op(pipe: redis.client.Pipeline, op: PipelineOp) -> None:
    match op:
        case ("set", key, value, ttl):
            pipe.set(key, value, px=None if ttl is None else ttl_ms(ttl))
        case ("rpush", key, values, ttl, max_len):
            if values:
                pipe.rpush(key, *values)
                if max_len is not None:
                    pipe.ltrim(key, -max_len, -1)
                if ttl is not None:
                    pipe.pexpire(key, ttl_ms(ttl))
        case ("expire", key, ttl):
            pipe.pexpire(key, ttl_ms(ttl))
        case ("publish", channel, message):
            pipe.publish(channel, message)
        case ("delete", keys):
            pipe.delete(*keys)
        case _:  # pragma: no cover - PipelineOp is closed
            raise AssertionError(op)


def _presence_args(ttl: float, members: Sequence[str], alive_prefix: str | None) -> list[str | int]:
    """The presence script's arguments: now, the members' expiry, the ttl (ms), the
    owners' heartbeat prefix, then the members."""
    checked = check_ttl(ttl)
    if checked is None:
        raise ValueError("presence_add needs a ttl")
    now_ms = int(time.time() * 1000)
    ms = ttl_ms(checked)
    return [now_ms, now_ms + ms, ms, alive_prefix or "", *members]


class _RedisPipeline(CachePipeline):
    def __init__(self, engine: RedisCacheEngine) -> None:
        super().__init__()
        self._engine = engine

    async def execute(self) -> None:
        ops = self._take()
        if not ops:
            return
        client = self._engine._client

        def run() -> None:
            pipe = client.pipeline(transaction=True)
            for op in ops:
                _queue_op(pipe, op)
            if len(pipe):
                pipe.execute()

        await self._engine._call(run)


class RedisCacheEngine(CacheEngine):
    """The cache/broker on Redis, for several Parley instances.

    ``max_connections`` bounds both the command pool and the worker threads
    used for commands; each active subscription uses one extra connection and
    one extra thread. ``socket_timeout``/``socket_connect_timeout`` (seconds)
    bound every call; ``poll_interval`` bounds how long leaving a
    ``subscribe`` block waits for its thread.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 16,
        socket_timeout: float = 1.5,
        socket_connect_timeout: float | None = None,
        poll_interval: float = 0.1,
        health_check_interval: float = 30.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        connect_timeout = (
            socket_timeout if socket_connect_timeout is None else socket_connect_timeout
        )
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": health_check_interval,
            "retry": Retry(NoBackoff(), 0),
        }
        self.url = url
        self.socket_timeout = socket_timeout
        self._pool = redis.ConnectionPool.from_url(url, max_connections=max_connections, **common)
        self._client = redis.Redis(connection_pool=self._pool)
        # Subscriptions hold their connection for their lifetime: separate pool.
        self._pubsub_pool = redis.ConnectionPool.from_url(url, **common)
        self._pubsub_client = redis.Redis(connection_pool=self._pubsub_pool)
        self._limiter = trio.CapacityLimiter(max_connections)
        self._incr_window = self._client.register_script(_INCR_WINDOW)
        self._presence_add = self._client.register_script(_PRESENCE_ADD)
        self._poll_interval = poll_interval
        self._active: dict[threading.Event, Subscription] = {}
        self._closed = False

    # -- plumbing ----------------------------------------------------------

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise CacheUnavailable("redis cache engine is closed")
        try:
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args, **kwargs), limiter=self._limiter
            )
        except redis.exceptions.RedisError as exc:
            raise _wrap(exc) from exc
        except OSError as exc:
            raise _wrap(exc) from exc

    # -- key/value ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._client.get, key)
        return cast("bytes | None", value)

    async def set(self, key: str, value: Value, ttl: float | None = None) -> None:
        data, ttl = to_bytes(value), check_ttl(ttl)
        await self._call(self._client.set, key, data, px=None if ttl is None else ttl_ms(ttl))

    async def set_if_absent(self, key: str, value: Value, ttl: float | None = None) -> bool:
        data, ttl = to_bytes(value), check_ttl(ttl)
        stored = await self._call(
            self._client.set, key, data, nx=True, px=None if ttl is None else ttl_ms(ttl)
        )
        return bool(stored)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        if not keys:
            return []
        values = await self._call(self._client.mget, keys)
        return cast("list[bytes | None]", values)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        n: int = await self._call(self._client.delete, *keys)
        return n

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        ttl = check_ttl(ttl)
        if ttl is None:
            value: int = await self._call(self._client.incrby, key, int(amount))
            return value
        result = await self._call(self._incr_window, keys=[key], args=[int(amount), ttl_ms(ttl)])
        return int(result[0])

    async def ttl(self, key: str) -> float | None:
        ms: int = await self._call(self._client.pttl, key)
        return None if ms < 0 else ms / 1000.0

    async def expire(self, key: str, ttl: float) -> bool:
        checked = check_ttl(ttl)
        if checked is None:
            raise ValueError("expire needs a ttl")
        return bool(await self._call(self._client.pexpire, key, ttl_ms(checked)))

    # -- lists -------------------------------------------------------------

    async def rpush(
        self,
        key: str,
        values: Sequence[Value],
        ttl: float | None = None,
        max_len: int | None = None,
    ) -> int:
        _check_max_len(max_len)
        encoded = [to_bytes(v) for v in _as_sequence(values)]
        ttl = check_ttl(ttl)
        if not encoded:
            n: int = await self._call(self._client.llen, key)
            return n

        def run() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.rpush(key, *encoded)
            if max_len is not None:
                pipe.ltrim(key, -max_len, -1)
            if ttl is not None:
                pipe.pexpire(key, ttl_ms(ttl))
            length = int(pipe.execute()[0])
            return length if max_len is None else min(length, max_len)

        return await self._call(run)

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        items = await self._call(self._client.lrange, key, start, stop)
        return cast("list[bytes]", items)

    # -- presence ------------------------------------------------------------

    async def presence_add(
        self, key: str, members: Sequence[str], ttl: float, *, alive_prefix: str | None = None
    ) -> int:
        args = _presence_args(ttl, members, alive_prefix)
        return int(await self._call(self._presence_add, keys=[key], args=args))

    async def presence_remove(self, key: str, *members: str) -> None:
        if members:
            await self._call(self._client.zrem, key, *members)

    # -- limiter -----------------------------------------------------------

    async def hit_rate(self, key: str, limit: int, window_seconds: float) -> tuple[bool, float]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        count, pttl = await self._call(self._incr_window, keys=[key], args=[1, ttl_ms(window)])
        if int(count) <= limit:
            return True, 0.0
        return False, (int(pttl) / 1000.0 if int(pttl) >= 0 else window)

    async def hit_rate_and_get(
        self, key: str, limit: int, window_seconds: float, keys: Sequence[str]
    ) -> tuple[bool, float, list[bytes | None]]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        count, pttl, values, _ = await self._call(
            self._rate_and_mget, key, ttl_ms(window), list(keys)
        )
        if int(count) <= limit:
            return True, 0.0, values
        return False, (int(pttl) / 1000.0 if int(pttl) >= 0 else window), values

    async def hit_rate_and_join(
        self,
        key: str,
        limit: int,
        window_seconds: float,
        keys: Sequence[str],
        presence: str,
        member: str,
        ttl: float,
        *,
        alive_prefix: str | None = None,
    ) -> tuple[bool, float, list[bytes | None], int]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        join = (presence, _presence_args(ttl, [member], alive_prefix))
        count, pttl, values, alive = await self._call(
            self._rate_and_mget, key, ttl_ms(window), list(keys), join
        )
        if int(count) <= limit:
            return True, 0.0, values, int(alive)
        return False, (int(pttl) / 1000.0 if int(pttl) >= 0 else window), values, int(alive)

    def _rate_and_mget(
        self,
        key: str,
        window_ms: int,
        keys: list[str],
        join: tuple[str, list[str | int]] | None = None,
    ) -> tuple[int, int, list[bytes | None], int]:
        """In a worker thread: the counting script, MGET and (``join``) the presence
        script, pipelined (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        self._incr_window(keys=[key], args=[1, window_ms], client=pipe)
        if keys:
            pipe.mget(keys)
        if join is not None:
            self._presence_add(keys=[join[0]], args=join[1], client=pipe)
        replies = pipe.execute()
        count, pttl = replies[0]
        values = list(replies[1]) if keys else []
        alive = int(replies[-1]) if join is not None else 0
        return int(count), int(pttl), values, alive

    # -- batches -----------------------------------------------------------

    def pipeline(self) -> CachePipeline:
        return _RedisPipeline(self)

    # -- pub/sub -----------------------------------------------------------

    async def publish(self, channel: str, message: Value) -> None:
        await self._call(self._client.publish, channel, to_bytes(message))

    def subscribe(
        self, *channels: str, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AbstractAsyncContextManager[Subscription]:
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        return self._subscribe(channels, buffer_size)

    def _open_pubsub(
        self, channels: Sequence[str]
    ) -> tuple[redis.client.PubSub, list[tuple[str, bytes]]]:
        """Subscribe and wait for every confirmation (so later publishes arrive)."""
        ps = self._pubsub_client.pubsub()
        early: list[tuple[str, bytes]] = []
        try:
            ps.subscribe(*channels)
            pending = set(channels)
            deadline = time.monotonic() + self.socket_timeout
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis.exceptions.TimeoutError("no SUBSCRIBE confirmation")
                msg = ps.get_message(timeout=remaining)
                if msg is None:
                    continue
                if msg["type"] == "subscribe":
                    pending.discard(_decode_channel(msg["channel"]))
                elif msg["type"] == "message":
                    early.append((_decode_channel(msg["channel"]), msg["data"]))
        except BaseException:
            ps.close()
            raise
        return ps, early

    def _pump(
        self,
        ps: redis.client.PubSub,
        sub: Subscription,
        stop: threading.Event,
        token: trio.lowlevel.TrioToken,
        early: list[tuple[str, bytes]],
    ) -> None:
        """Subscription thread: read messages, hand them to trio, until ``stop``."""
        try:
            for channel, data in early:
                trio.from_thread.run_sync(sub._offer, channel, data, trio_token=token)
            while not stop.is_set():
                msg = ps.get_message(timeout=self._poll_interval)
                if msg is None or msg["type"] != "message":
                    continue
                channel = _decode_channel(msg["channel"])
                trio.from_thread.run_sync(sub._offer, channel, msg["data"], trio_token=token)
        except trio.RunFinishedError:
            pass
        except Exception as exc:
            if not stop.is_set():
                error = _wrap(exc)
                with suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(sub._fail, error, trio_token=token)
        finally:
            # Closing the connection drops every subscription server-side.
            ps.close()

    @asynccontextmanager
    async def _subscribe(
        self, channels: Sequence[str], buffer_size: int
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(channels, buffer_size)
        if self._closed:
            raise CacheUnavailable("redis cache engine is closed")
        try:
            # Shielded (bounded by the socket timeouts) so a cancellation cannot
            # lose an opened, subscribed connection; it is closed just below.
            with trio.CancelScope(shield=True):
                ps, early = await trio.to_thread.run_sync(self._open_pubsub, sub.channels)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise _wrap(exc) from exc
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            ps.close()
            raise
        stop = threading.Event()
        thread = threading.Thread(
            target=self._pump,
            args=(ps, sub, stop, trio.lowlevel.current_trio_token(), early),
            name=f"parley-cache-sub-{next(_subscription_ids)}",
            daemon=True,
        )
        self._active[stop] = sub
        thread.start()
        try:
            yield sub
        finally:
            stop.set()
            self._active.pop(stop, None)
            sub._close()
            # Shielded, bounded join: runs even when the block is being cancelled.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(self._poll_interval + self.socket_timeout + 1.0),
            ):
                await trio.to_thread.run_sync(thread.join)

    # -- lifecycle ---------------------------------------------------------

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(await self._call(self._client.ping))
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stop, sub in list(self._active.items()):
            stop.set()
            sub._fail(CacheUnavailable("redis cache engine is closed"))

        def close() -> None:
            self._client.close()
            self._pool.disconnect()
            self._pubsub_pool.disconnect(inuse_connections=False)

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close)
