"""In-process cache/broker for a single Parley instance.

Over 400 lines: one engine per file, method for method beside ``redis.py`` and the
``base.py`` interface, so the two implementations can be read side by side.

State is a dict; expiry uses a monotonic clock. Expired keys are removed
lazily when touched, and a min-heap of expiry times is swept on every write,
so keys that are never read again cannot accumulate. Every operation runs to
completion without a checkpoint, which is what makes ``set_if_absent``,
``incr``, ``hit_rate``, ``rpush`` and pipelines atomic under trio.

Pub/sub uses one bounded trio memory channel per subscription; when a
subscriber falls ``buffer_size`` messages behind, the oldest buffered message
is dropped and ``Subscription.dropped`` counts it (``dropped_messages`` on the
engine counts all drops). Publishers never block.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

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
)

__all__ = ["MemoryCacheEngine"]


@dataclass(slots=True)
class _Entry:
    value: bytes | list[bytes]
    expires_at: float | None


class _MemoryPipeline(CachePipeline):
    def __init__(self, engine: MemoryCacheEngine) -> None:
        super().__init__()
        self._engine = engine

    async def execute(self) -> None:
        ops = self._take()
        self._engine._check_open()
        for op in ops:
            self._engine._apply(op)
        await trio.lowlevel.checkpoint()


class MemoryCacheEngine(CacheEngine):
    """Dict + monotonic expiry + trio channels. One process only."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, _Entry] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        self._subs: dict[str, set[Subscription]] = {}
        self._presence: dict[str, dict[str, float]] = {}
        self._closed = False
        self._dropped_closed = 0

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheUnavailable("memory cache engine is closed")

    def _live(self, key: str) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= self._clock():
            del self._data[key]
            return None
        return entry

    def _schedule(self, key: str, deadline: float) -> None:
        heapq.heappush(self._expiry_heap, (deadline, key))
        # The heap may hold stale deadlines (key rewritten or deleted); rebuild
        # it when it grows well beyond the live key count.
        if len(self._expiry_heap) > 2 * len(self._data) + 1024:
            self._expiry_heap = [
                (e.expires_at, k) for k, e in self._data.items() if e.expires_at is not None
            ]
            heapq.heapify(self._expiry_heap)

    def _sweep(self) -> None:
        """Drop keys whose deadline passed (called on every write; O(expired·log n))."""
        now = self._clock()
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            entry = self._data.get(key)
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                del self._data[key]

    def _set_ttl(self, key: str, entry: _Entry, ttl: float | None) -> None:
        if ttl is None:
            entry.expires_at = None
        else:
            entry.expires_at = self._clock() + ttl
            self._schedule(key, entry.expires_at)

    def _string(self, entry: _Entry | None) -> bytes | None:
        if entry is None:
            return None
        if not isinstance(entry.value, bytes):
            raise CacheError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return entry.value

    def _list(self, entry: _Entry | None) -> list[bytes] | None:
        if entry is None:
            return None
        if not isinstance(entry.value, list):
            raise CacheError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return entry.value

    # synchronous primitives (used by the async API and by pipelines)

    def _do_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._sweep()
        entry = _Entry(value, None)
        self._data[key] = entry
        self._set_ttl(key, entry, ttl)

    def _do_rpush(
        self, key: str, values: Sequence[bytes], ttl: float | None, max_len: int | None
    ) -> int:
        self._sweep()
        entry = self._live(key)
        items = self._list(entry)
        if not values:
            return len(items) if items is not None else 0
        if entry is None or items is None:
            items = []
            entry = _Entry(items, None)
            self._data[key] = entry
        items.extend(values)
        if max_len is not None and len(items) > max_len:
            del items[: len(items) - max_len]
        if ttl is not None:
            self._set_ttl(key, entry, ttl)
        return len(items)

    def _do_expire(self, key: str, ttl: float) -> bool:
        self._sweep()
        entry = self._live(key)
        if entry is None:
            return False
        self._set_ttl(key, entry, ttl)
        return True

    def _do_delete(self, keys: Sequence[str]) -> int:
        self._sweep()
        n = 0
        for key in keys:
            if self._live(key) is not None:
                del self._data[key]
                n += 1
        return n

    def _do_publish(self, channel: str, message: bytes) -> None:
        for sub in tuple(self._subs.get(channel, ())):
            before = sub.dropped
            sub._offer(channel, message)
            self._dropped_closed += sub.dropped - before

    def _do_incr(self, key: str, amount: int, ttl: float | None) -> tuple[int, float | None]:
        """Add ``amount``; set ``ttl`` if the key has none. Returns (value, remaining ttl)."""
        self._sweep()
        entry = self._live(key)
        raw = self._string(entry)
        if entry is None or raw is None:
            current = 0
            entry = _Entry(b"0", None)
            self._data[key] = entry
        else:
            try:
                current = int(raw)
            except ValueError:
                raise CacheError("ERR value is not an integer or out of range") from None
        value = current + amount
        entry.value = str(value).encode()
        if ttl is not None and entry.expires_at is None:
            self._set_ttl(key, entry, ttl)
        remaining = None if entry.expires_at is None else entry.expires_at - self._clock()
        return value, remaining

    def _apply(self, op: PipelineOp) -> None:
        match op:
            case ("set", key, value, ttl):
                self._do_set(key, value, ttl)
            case ("rpush", key, values, ttl, max_len):
                self._do_rpush(key, values, ttl, max_len)
            case ("expire", key, ttl):
                self._do_expire(key, ttl)
            case ("publish", channel, message):
                self._do_publish(channel, message)
            case ("delete", keys):
                self._do_delete(keys)
            case _:  # pragma: no cover - PipelineOp is closed
                raise AssertionError(op)

    # -- key/value ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._string(self._live(key))

    async def set(self, key: str, value: Value, ttl: float | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._do_set(key, to_bytes(value), check_ttl(ttl))

    async def set_if_absent(self, key: str, value: Value, ttl: float | None = None) -> bool:
        data, ttl = to_bytes(value), check_ttl(ttl)
        await trio.lowlevel.checkpoint()
        self._check_open()
        if self._live(key) is not None:
            return False
        self._do_set(key, data, ttl)
        return True

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._live(key)
            out.append(
                entry.value if entry is not None and isinstance(entry.value, bytes) else None
            )
        return out

    async def delete(self, *keys: str) -> int:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._do_delete(keys)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        ttl = check_ttl(ttl)
        await trio.lowlevel.checkpoint()
        self._check_open()
        value, _ = self._do_incr(key, int(amount), ttl)
        return value

    async def ttl(self, key: str) -> float | None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        entry = self._live(key)
        if entry is None or entry.expires_at is None:
            return None
        return max(0.0, entry.expires_at - self._clock())

    async def expire(self, key: str, ttl: float) -> bool:
        checked = check_ttl(ttl)
        if checked is None:
            raise ValueError("expire needs a ttl")
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._do_expire(key, checked)

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
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._do_rpush(key, encoded, ttl, max_len)

    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        items = self._list(self._live(key))
        if not items:
            return []
        n = len(items)
        if start < 0:
            start = max(n + start, 0)
        if stop < 0:
            stop = n + stop
        stop = min(stop, n - 1)
        if start > stop:
            return []
        return list(items[start : stop + 1])

    # -- limiter -----------------------------------------------------------

    async def presence_add(
        self, key: str, members: Sequence[str], ttl: float, *, alive_prefix: str | None = None
    ) -> int:
        checked = check_ttl(ttl)
        if checked is None:
            raise ValueError("presence_add needs a ttl")
        await trio.lowlevel.checkpoint()
        self._check_open()
        now = self._clock()
        alive = {
            m: t
            for m, t in self._presence.get(key, {}).items()
            if t > now
            and (
                alive_prefix is None
                or "|" not in m
                or self._live(alive_prefix + m.split("|", 1)[0]) is not None
            )
        }
        for m in members:
            alive[m] = now + checked
        if alive:
            self._presence[key] = alive
        else:
            self._presence.pop(key, None)
        return len(alive)

    async def presence_remove(self, key: str, *members: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        entries = self._presence.get(key)
        if entries is not None:
            for m in members:
                entries.pop(m, None)
            if not entries:
                del self._presence[key]

    async def hit_rate(self, key: str, limit: int, window_seconds: float) -> tuple[bool, float]:
        window = check_ttl(window_seconds)
        if window is None:
            raise ValueError("hit_rate needs a window")
        await trio.lowlevel.checkpoint()
        self._check_open()
        count, remaining = self._do_incr(key, 1, window)
        if count <= limit:
            return True, 0.0
        return False, max(0.0, remaining if remaining is not None else window)

    async def hit_rate_and_get(
        self, key: str, limit: int, window_seconds: float, keys: Sequence[str]
    ) -> tuple[bool, float, list[bytes | None]]:
        allowed, retry_after = await self.hit_rate(key, limit, window_seconds)
        return allowed, retry_after, await self.get_many(keys)

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
        allowed, retry_after, values = await self.hit_rate_and_get(key, limit, window_seconds, keys)
        alive = await self.presence_add(presence, [member], ttl, alive_prefix=alive_prefix)
        return allowed, retry_after, values, alive

    # -- batches -----------------------------------------------------------

    def pipeline(self) -> CachePipeline:
        return _MemoryPipeline(self)

    # -- pub/sub -----------------------------------------------------------

    @property
    def dropped_messages(self) -> int:
        """Messages dropped across all subscriptions because a subscriber lagged."""
        return self._dropped_closed

    async def publish(self, channel: str, message: Value) -> None:
        data = to_bytes(message)
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._do_publish(channel, data)

    def subscribe(
        self, *channels: str, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AbstractAsyncContextManager[Subscription]:
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        return self._subscribe(channels, buffer_size)

    @asynccontextmanager
    async def _subscribe(
        self, channels: Sequence[str], buffer_size: int
    ) -> AsyncIterator[Subscription]:
        self._check_open()
        sub = Subscription(channels, buffer_size)
        for channel in sub.channels:
            self._subs.setdefault(channel, set()).add(sub)
        try:
            yield sub
        finally:
            for channel in sub.channels:
                subs = self._subs.get(channel)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[channel]
            sub._close()

    # -- lifecycle ---------------------------------------------------------

    async def ping(self) -> bool:
        await trio.lowlevel.checkpoint()
        return not self._closed

    async def aclose(self) -> None:
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in subs:
                sub._fail(CacheUnavailable("memory cache engine is closed"))
        self._subs.clear()
        self._data.clear()
        self._expiry_heap.clear()
        await trio.lowlevel.checkpoint()
