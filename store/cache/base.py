"""The cache/broker interface every engine implements.

Over 400 lines: the whole interface in one place, each method with the contract both
engines keep (TTLs, atomicity, what a failure raises), which the engines' docstrings
do not repeat.

One interface, two engines (the Centrifuge model): :class:`MemoryCacheEngine`
for a single process and :class:`RedisCacheEngine` for many. Callers hold a
:class:`CacheEngine` and cannot tell which one they have; one test module
asserts every behaviour on both.

All methods are called from trio code. Values are ``bytes`` (``str`` is
accepted on the way in and encoded as UTF-8); TTLs are seconds as ``float``
(millisecond precision on Redis).

Errors: :class:`CacheUnavailable` when the backend cannot be reached (callers
degrade), :class:`CacheError` for everything else the backend refuses (wrong
type, non-integer counter).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from typing import Literal, TypeAlias

import trio

__all__ = [
    "DEFAULT_SUBSCRIPTION_BUFFER",
    "PRESENCE_RENEW_BATCH",
    "CacheEngine",
    "CacheError",
    "CachePipeline",
    "CacheUnavailable",
    "PipelineOp",
    "Subscription",
    "Value",
]

Value: TypeAlias = bytes | str

#: Messages buffered per subscription before the oldest is dropped.
DEFAULT_SUBSCRIPTION_BUFFER = 1024
#: Sets renewed per round trip by :meth:`CacheEngine.presence_renew` (on Redis).
PRESENCE_RENEW_BATCH = 500


class CacheError(Exception):
    """The backend refused an operation (wrong type, not an integer, ...)."""


class CacheUnavailable(CacheError):
    """The backend cannot be reached (connection refused, timed out, closed).

    Wraps ``redis.ConnectionError`` / ``redis.TimeoutError``; callers catch it
    to degrade (skip the cache, allow the request, fall back to one instance).
    """


def to_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"cache values must be bytes or str, not {type(value).__name__}")


def check_ttl(ttl: float | None) -> float | None:
    """Validate a TTL: ``None`` (no expiry) or a positive finite number of seconds."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds or None")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
    return float(ttl)


def ttl_ms(ttl: float) -> int:
    """Seconds to whole milliseconds, never rounding a positive TTL down to 0."""
    return max(1, math.ceil(ttl * 1000))


# ---------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------

PipelineOp: TypeAlias = (
    tuple[Literal["set"], str, bytes, float | None]
    | tuple[Literal["rpush"], str, tuple[bytes, ...], float | None, int | None]
    | tuple[Literal["expire"], str, float]
    | tuple[Literal["publish"], str, bytes]
    | tuple[Literal["delete"], tuple[str, ...]]
)


class CachePipeline(ABC):
    """Queued writes sent in one round trip by :meth:`execute`.

    Queue with ``set``/``rpush``/``expire``/``publish``/``delete`` (each returns
    the pipeline, so calls chain), then ``await execute()``. Arguments are
    validated when queued. On Redis the batch is one MULTI/EXEC round trip, so
    it applies atomically and in order; in memory it is applied in order with
    no checkpoint in between. The queue is emptied by ``execute`` (also when
    it fails), so a pipeline object can be reused.
    """

    def __init__(self) -> None:
        self._ops: list[PipelineOp] = []

    def __len__(self) -> int:
        return len(self._ops)

    def set(self, key: str, value: Value, ttl: float | None = None) -> CachePipeline:
        self._ops.append(("set", key, to_bytes(value), check_ttl(ttl)))
        return self

    def rpush(
        self,
        key: str,
        values: Sequence[Value],
        ttl: float | None = None,
        max_len: int | None = None,
    ) -> CachePipeline:
        _check_max_len(max_len)
        encoded = tuple(to_bytes(v) for v in _as_sequence(values))
        self._ops.append(("rpush", key, encoded, check_ttl(ttl), max_len))
        return self

    def expire(self, key: str, ttl: float) -> CachePipeline:
        checked = check_ttl(ttl)
        if checked is None:
            raise ValueError("expire needs a ttl")
        self._ops.append(("expire", key, checked))
        return self

    def publish(self, channel: str, message: Value) -> CachePipeline:
        self._ops.append(("publish", channel, to_bytes(message)))
        return self

    def delete(self, *keys: str) -> CachePipeline:
        if keys:
            self._ops.append(("delete", tuple(keys)))
        return self

    def _take(self) -> list[PipelineOp]:
        ops, self._ops = self._ops, []
        return ops

    @abstractmethod
    async def execute(self) -> None:
        """Send every queued operation in one round trip, in order."""


def _check_max_len(max_len: int | None) -> None:
    if max_len is not None and (isinstance(max_len, bool) or max_len < 1):
        raise ValueError(f"max_len must be >= 1 or None, got {max_len!r}")


def _as_sequence(values: Sequence[Value]) -> Sequence[Value]:
    if isinstance(values, bytes | str):
        # rpush(key, "abc") would otherwise push "a", "b", "c"
        raise TypeError("rpush takes a sequence of values, not a single bytes/str")
    return values


# ---------------------------------------------------------------------------
# Subscription
# ---------------------------------------------------------------------------


class Subscription:
    """An async iterator of ``(channel, message)`` for subscribed channels.

    Yielded by ``async with engine.subscribe(...) as sub``. Messages wait in a
    bounded buffer (``buffer_size``). When it is full the **oldest** buffered
    message is dropped and :attr:`dropped` is incremented: a slow subscriber
    never blocks a publisher (the turn runner) nor the Redis reader thread.
    Subscribers that must not miss data watch :attr:`dropped` (or a sequence
    number in the payload) and resynchronise from the stream buffer
    (``lrange``), which is the source of truth.

    If the backend connection is lost, the buffered messages are delivered and
    then iteration raises :class:`CacheUnavailable`. After the ``async with``
    block exits, iteration stops (``StopAsyncIteration``) once the buffer is
    drained.
    """

    def __init__(self, channels: Sequence[str], buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER):
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self.channels: tuple[str, ...] = tuple(channels)
        self.dropped = 0
        self._send, self._recv = trio.open_memory_channel[tuple[str, bytes]](buffer_size)
        self._error: CacheError | None = None
        self._closed = False

    # Called in the trio thread only (directly, or via trio.from_thread).
    def _offer(self, channel: str, message: bytes) -> None:
        if self._closed:
            return
        item = (channel, message)
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            with suppress(trio.WouldBlock):
                self._recv.receive_nowait()
            self.dropped += 1
            self._send.send_nowait(item)

    def _fail(self, error: CacheError) -> None:
        if self._closed:
            return
        self._error = error
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._send.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    async def receive(self) -> tuple[str, bytes]:
        """The next message; raises :class:`CacheUnavailable` or ``trio.EndOfChannel``."""
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class CacheEngine(ABC):
    """Key/value with TTLs, counters, list buffers, a limiter, batches and pub/sub.

    Usable as ``async with engine: ...`` (closes on exit).
    """

    # -- key/value ---------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` if absent or expired."""

    @abstractmethod
    async def set(self, key: str, value: Value, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl=None`` means no expiry (an existing TTL is cleared)."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: Value, ttl: float | None = None) -> bool:
        """Atomically store ``value`` only if ``key`` is absent; ``True`` if stored."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values in the order of ``keys`` (``None`` where absent or not a plain value)."""

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Delete keys; returns how many existed."""

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount``; returns the new value.

        ``ttl`` is applied only when the key has no TTL yet (normally: when this
        call creates it), so repeated calls make a fixed-window counter.
        """

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Remaining seconds, or ``None`` if the key is absent or has no TTL."""

    @abstractmethod
    async def expire(self, key: str, ttl: float) -> bool:
        """Set a TTL on an existing key; ``False`` if the key does not exist."""

    # -- lists (stream buffers) --------------------------------------------

    @abstractmethod
    async def rpush(
        self,
        key: str,
        values: Sequence[Value],
        ttl: float | None = None,
        max_len: int | None = None,
    ) -> int:
        """Append ``values``; if ``ttl`` is given refresh the key's TTL; if
        ``max_len`` is given keep only the last ``max_len`` items. Atomic.
        Returns the list length after the push and trim."""

    @abstractmethod
    async def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        """Items ``start..stop`` inclusive, negatives from the end (Redis LRANGE)."""

    # -- presence (who is connected, across instances) --------------------

    @abstractmethod
    async def presence_add(
        self, key: str, members: Sequence[str], ttl: float, *, alive_prefix: str | None = None
    ) -> int:
        """Add or refresh ``members`` of the set ``key``, each alive for ``ttl`` seconds
        from now (a member not refreshed in time drops out by itself); return how many
        members are alive. Atomic. ``members`` may be empty: then it only counts.

        With ``alive_prefix``, a member written ``owner|id`` also drops out as soon as the
        key ``alive_prefix + owner`` is gone: an instance that died takes its members with
        it within its heartbeat's TTL, not the members' own. (Members being added count:
        their owner is the one adding them.)"""

    @abstractmethod
    async def presence_remove(self, key: str, *members: str) -> None:
        """Drop ``members`` from the set ``key`` now."""

    async def presence_renew(
        self, sets: Mapping[str, Sequence[str]], ttl: float, *, alive_prefix: str | None = None
    ) -> None:
        """:meth:`presence_add` for many sets (key → members) at once, the counts not
        wanted (an instance renewing all its sockets: on Redis, one round trip per
        :data:`PRESENCE_RENEW_BATCH` sets instead of one per set)."""
        for key, members in sets.items():
            await self.presence_add(key, members, ttl, alive_prefix=alive_prefix)

    # -- limiter -----------------------------------------------------------

    @abstractmethod
    async def hit_rate(self, key: str, limit: int, window_seconds: float) -> tuple[bool, float]:
        """Count one hit in a fixed window of ``window_seconds``, atomically.

        Returns ``(allowed, retry_after_seconds)``: ``(True, 0.0)`` for the first
        ``limit`` hits of a window, then ``(False, seconds until the window
        resets)``. Denied hits are counted too (they do not extend the window).
        """

    @abstractmethod
    async def hit_rate_and_get(
        self, key: str, limit: int, window_seconds: float, keys: Sequence[str]
    ) -> tuple[bool, float, list[bytes | None]]:
        """:meth:`hit_rate` and :meth:`get_many` in one round trip (a ``chat.send`` counts
        against its limit and reads its keys at once): ``(allowed, retry_after, values)``."""

    @abstractmethod
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
        """:meth:`hit_rate_and_get` and :meth:`presence_add` of ``member`` to the set
        ``presence``, in one round trip (a WebSocket connect): ``(allowed, retry_after,
        values, alive)``. The member is added whatever the hit's outcome: a caller that
        then refuses removes it (:meth:`presence_remove`)."""

    # -- batches -----------------------------------------------------------

    @abstractmethod
    def pipeline(self) -> CachePipeline:
        """A batch of writes sent in one round trip by ``await pipe.execute()``."""

    # -- pub/sub -----------------------------------------------------------

    @abstractmethod
    async def publish(self, channel: str, message: Value) -> None:
        """Deliver ``message`` to current subscribers of ``channel`` (fire and forget)."""

    @abstractmethod
    def subscribe(
        self, *channels: str, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AbstractAsyncContextManager[Subscription]:
        """``async with engine.subscribe("a", "b") as sub: async for ch, msg in sub``.

        The subscription is active when the block is entered: anything
        published afterwards is received. Leaving the block (normally or by
        cancellation) unsubscribes and releases the connection/thread.
        """

    # -- lifecycle ---------------------------------------------------------

    @abstractmethod
    async def ping(self) -> bool:
        """``True`` if the backend answers; never raises."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections. Later calls raise :class:`CacheUnavailable`."""

    async def __aenter__(self) -> CacheEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
