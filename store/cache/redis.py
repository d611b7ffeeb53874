"""Redis cache/broker: commands on the event loop (``resp.py``), pub/sub in threads.

Over 400 lines: one engine per file, method for method beside ``memory.py`` and the
``base.py`` interface, so the two implementations can be read side by side.

Commands go through :class:`store.cache.resp.CommandPool`: trio sockets, hiredis,
a pool of kept connections, no thread (a command 119 µs of CPU through a worker thread
and redis-py, 57 here: ``benchmarks/results/redis_clients.json``). Pub/sub stays on
redis-py's sync client in a thread per subscription, which measured best for it
(``benchmarks/redis_clients.py``, ``docs/notes/cache-choice.md``).

* Every command is bounded by ``socket_timeout`` (a new connection by
  ``socket_connect_timeout``; default 1.5 s); nothing is retried, so a dead server fails
  fast. A refused, reset, stalled or closed connection raises :class:`CacheUnavailable`,
  a Redis error reply :class:`CacheError` (those that say the server cannot serve now,
  ``LOADING``, ``NOAUTH`` and the like, :class:`CacheUnavailable`). A command sent is
  answered even to a caller cancelled meanwhile (the cancellation comes at its next
  checkpoint), as the threads did: a caller always learns what Redis did.
* Lua scripts are called by SHA1 and sent again by source when the server has not
  cached them (a restart, ``SCRIPT FLUSH``); multi-command writes are ``MULTI``/``EXEC``.
* Each subscription owns a connection (from redis-py's pool) and a daemon
  thread blocked in ``PubSub.get_message(timeout=poll_interval)``; messages go
  to trio through ``trio.from_thread.run_sync`` into the subscription's
  bounded buffer. Leaving the ``subscribe`` block stops the thread (within
  ``poll_interval``), closes the connection (which unsubscribes) and joins it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, cast

import redis
import redis.client
import redis.exceptions
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from store.cache.base import (
    DEFAULT_SUBSCRIPTION_BUFFER,
    PRESENCE_RENEW_BATCH,
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
from store.cache.resp import Arg, Command, CommandPool, RedisUnavailable, ReplyError

__all__ = ["RedisCacheEngine"]

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


# Error replies that mean the server cannot serve anyone now (redis-py raised these as
# connection errors): still loading its data, a password wanted or wrong, no room for
# another client. The rest (WRONGTYPE, a script's error, ...) are the caller's.
_UNAVAILABLE_REPLIES = (
    "LOADING",
    "NOAUTH",
    "WRONGPASS",
    "ERR invalid password",
    "ERR max number of clients",
    "MASTERDOWN",
)


def _reply_error(reply: ReplyError) -> CacheError:
    text = str(reply)
    if text.startswith(_UNAVAILABLE_REPLIES):
        return CacheUnavailable(f"redis unavailable: {text}")
    return CacheError(text)


def _decode_channel(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _px(ttl: float | None) -> tuple[Arg, ...]:
    return () if ttl is None else ("PX", ttl_ms(ttl))


def _op_commands(op: PipelineOp) -> list[Command]:
    match op:
        case ("set", key, value, ttl):
            return [("SET", key, value, *_px(ttl))]
        case ("rpush", key, values, ttl, max_len):
            return _rpush_commands(key, values, ttl, max_len) if values else []
        case ("expire", key, ttl):
            return [("PEXPIRE", key, ttl_ms(ttl))]
        case ("publish", channel, message):
            return [("PUBLISH", channel, message)]
        case ("delete", keys):
            return [("DEL", *keys)] if keys else []
        case _:  # pragma: no cover - PipelineOp is closed
            raise AssertionError(op)


def _rpush_commands(
    key: str, values: Sequence[bytes], ttl: float | None, max_len: int | None
) -> list[Command]:
    commands: list[Command] = [("RPUSH", key, *values)]
    if max_len is not None:
        commands.append(("LTRIM", key, -max_len, -1))
    if ttl is not None:
        commands.append(("PEXPIRE", key, ttl_ms(ttl)))
    return commands


def _presence_args(ttl: float, members: Sequence[str], alive_prefix: str | None) -> list[Arg]:
    """The presence script's arguments: now, the members' expiry, the ttl (ms), the
    owners' heartbeat prefix, then the members."""
    checked = check_ttl(ttl)
    if checked is None:
        raise ValueError("presence_add needs a ttl")
    now_ms = int(time.time() * 1000)
    ms = ttl_ms(checked)
    return [now_ms, now_ms + ms, ms, alive_prefix or "", *members]


class _Script:
    """A Lua script called by its SHA1 (``EVALSHA``); the engine sends its source
    (``EVAL``, which also caches it) when the server answers NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


class _RedisPipeline(CachePipeline):
    def __init__(self, engine: RedisCacheEngine) -> None:
        super().__init__()
        self._engine = engine

    async def execute(self) -> None:
        commands = [c for op in self._take() for c in _op_commands(op)]
        if commands:
            await self._engine._transaction(commands)


class RedisCacheEngine(CacheEngine):
    """The cache/broker on Redis, for several Parley instances.

    ``max_connections`` bounds the commands in flight (one connection each); each active
    subscription uses one extra connection and one thread. ``socket_timeout`` /
    ``socket_connect_timeout`` (seconds) bound every call; ``poll_interval`` bounds how
    long leaving a ``subscribe`` block waits for its thread.
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
        self.url = url
        self._pool = CommandPool(  # checks max_connections; the URL's timeouts win
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            connect_timeout=socket_connect_timeout,
        )
        self.socket_timeout = self._pool.socket_timeout
        # Subscriptions hold a connection each for their lifetime, read by a thread.
        self._pubsub_pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self._pool.connect_timeout,
            socket_keepalive=True,
            health_check_interval=health_check_interval,
            retry=Retry(NoBackoff(), 0),
        )
        self._pubsub_client = redis.Redis(connection_pool=self._pubsub_pool)
        self._scripts: dict[str, str] = {}
        self._incr_window = self._script(_INCR_WINDOW)
        self._presence_add = self._script(_PRESENCE_ADD)
        self._poll_interval = poll_interval
        self._active: dict[threading.Event, Subscription] = {}
        self._closed = False

    # -- plumbing ----------------------------------------------------------

    def _script(self, source: str) -> _Script:
        script = _Script(source)
        self._scripts[script.sha] = source
        return script

    def _as_eval(self, command: Command) -> Command:
        return ("EVAL", self._scripts[str(command[1])], *command[2:])

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        """One round trip; scripts the server had not cached run again by their source;
        error replies stay in place."""
        if self._closed:
            raise CacheUnavailable("redis cache engine is closed")
        try:
            replies = await self._pool.execute_many(commands)
            missing = [
                i
                for i, reply in enumerate(replies)
                if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")
            ]
            if missing:
                again = [self._as_eval(commands[i]) for i in missing]
                for i, reply in zip(missing, await self._pool.execute_many(again), strict=True):
                    replies[i] = reply
        except RedisUnavailable as exc:
            raise CacheUnavailable(f"redis unavailable: {exc}") from exc
        return replies

    async def _run_many(self, commands: Sequence[Command]) -> list[Any]:
        replies = await self._send(commands)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise _reply_error(reply)
        return replies

    async def _run(self, *command: Arg) -> Any:
        (reply,) = await self._run_many((command,))
        return reply

    async def _transaction(self, commands: Sequence[Command]) -> list[Any]:
        """MULTI … EXEC: the commands' replies, all applied or (an error) none."""
        replies = await self._send([("MULTI",), *commands, ("EXEC",)])
        results = replies[-1]
        if isinstance(results, ReplyError):  # EXECABORT: a command was refused when queued
            raise _reply_error(next(r for r in replies if isinstance(r, ReplyError)))
        for reply in results:
            if isinstance(reply, ReplyError):
                raise _reply_error(reply)
        return list(results)

    # -- key/value ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._run("GET", key)
        return cast("bytes | None", value)

    async def set(self, key: str, value: Value, ttl: float | None = None) -> None:
        data, ttl = to_bytes(value), check_ttl(ttl)
        await self._run("SET", key, data, *_px(ttl))

    async def set_if_absent(self, key: str, value: Value, ttl: float | None = None) -> bool:
        data, ttl = to_bytes(value), check_ttl(ttl)
        return await self._run("SET", key, data, "NX", *_px(ttl)) is not None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        if not keys:
            return []
        values = await self._run("MGET", *keys)
        return cast("list[bytes | None]", values)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._run("DEL", *keys))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        ttl = check_ttl(ttl)
        if ttl is None:
            return int(await self._run("INCRBY", key, int(amount)))
        result = await self._run(*self._incr_window([key], [int(amount), ttl_ms(ttl)]))
        return int(result[0])

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._run("PTTL", key))
        return None if ms < 0 else ms / 1000.0

    async def expire(self, key: str, ttl: float) -> bool:
        checked = check_ttl(ttl)
        if checked is None:
            raise ValueError("expire needs a ttl")
        return bool(await self._run("PEXPIRE", key, ttl_ms(checked)))

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
            return int(await self._run("LLEN", key))
        length = int((await self._transaction(_rpush_commands(key, encoded, ttl, max_len)))[0])
        return length if max_len is None else min(length, max_len)

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        items = await self._run("LRANGE", key, start, stop)
        return cast("list[bytes]", items)

    # -- presence ------------------------------------------------------------

    async def presence_add(
        self, key: str, members: Sequence[str], ttl: float, *, alive_prefix: str | None = None
    ) -> int:
        args = _presence_args(ttl, members, alive_prefix)
        return int(await self._run(*self._presence_add([key], args)))

    async def presence_remove(self, key: str, *members: str) -> None:
        if members:
            await self._run("ZREM", key, *members)

    async def presence_renew(
        self, sets: Mapping[str, Sequence[str]], ttl: float, *, alive_prefix: str | None = None
    ) -> None:
        commands = [
            self._presence_add([key], _presence_args(ttl, members, alive_prefix))
            for key, members in sets.items()
        ]
        for start in range(0, len(commands), PRESENCE_RENEW_BATCH):
            await self._run_many(commands[start : start + PRESENCE_RENEW_BATCH])

    # -- limiter -----------------------------------------------------------

    async def hit_rate(self, key: str, limit: int, window_seconds: float) -> tuple[bool, float]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        count, pttl = await self._run(*self._incr_window([key], [1, ttl_ms(window)]))
        if int(count) <= limit:
            return True, 0.0
        return False, (int(pttl) / 1000.0 if int(pttl) >= 0 else window)

    async def hit_rate_and_get(
        self, key: str, limit: int, window_seconds: float, keys: Sequence[str]
    ) -> tuple[bool, float, list[bytes | None]]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        count, pttl, values, _ = await self._rate_and_mget(key, ttl_ms(window), list(keys))
        if count <= limit:
            return True, 0.0, values
        return False, (pttl / 1000.0 if pttl >= 0 else window), values

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
        count, pttl, values, alive = await self._rate_and_mget(
            key, ttl_ms(window), list(keys), join
        )
        if count <= limit:
            return True, 0.0, values, alive
        return False, (pttl / 1000.0 if pttl >= 0 else window), values, alive

    async def _rate_and_mget(
        self,
        key: str,
        window_ms: int,
        keys: list[str],
        join: tuple[str, list[Arg]] | None = None,
    ) -> tuple[int, int, list[bytes | None], int]:
        """The counting script, MGET and (``join``) the presence script: one round trip."""
        commands: list[Command] = [self._incr_window([key], [1, window_ms])]
        if keys:
            commands.append(("MGET", *keys))
        if join is not None:
            commands.append(self._presence_add([join[0]], join[1]))
        replies = await self._run_many(commands)
        count, pttl = replies[0]
        values = list(replies[1]) if keys else []
        alive = int(replies[-1]) if join is not None else 0
        return int(count), int(pttl), values, alive

    # -- batches -----------------------------------------------------------

    def pipeline(self) -> CachePipeline:
        return _RedisPipeline(self)

    # -- pub/sub -----------------------------------------------------------

    async def publish(self, channel: str, message: Value) -> None:
        await self._run("PUBLISH", channel, to_bytes(message))

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
            return await self._run("PING") == b"PONG"
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stop, sub in list(self._active.items()):
            stop.set()
            sub._fail(CacheUnavailable("redis cache engine is closed"))

        with trio.CancelScope(shield=True):
            await self._pool.aclose()
            await trio.to_thread.run_sync(
                functools.partial(self._pubsub_pool.disconnect, inuse_connections=False)
            )
