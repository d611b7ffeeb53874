"""One behaviour suite for both cache engines (memory and Redis).

Every test taking the ``engine`` fixture runs twice, against
``MemoryCacheEngine`` and against ``RedisCacheEngine`` on 127.0.0.1:6379
(marked ``redis``), and asserts the same thing on both. Redis keys live under
a per-session random prefix and are deleted after each test; the shared Redis
is never flushed or stopped. The failure tests at the end use a port where
nothing listens, a socket that never answers, and a private ``redis-server``
started (and killed, and restarted) on a free port.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import trio

from store.cache import (
    CacheEngine,
    CacheError,
    CacheUnavailable,
    MemoryCacheEngine,
    RedisCacheEngine,
    Subscription,
    create_cache_engine,
)
from store.cache.base import PRESENCE_RENEW_BATCH

REDIS_URL = os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SESSION_PREFIX = f"parley-test:cache:{uuid.uuid4().hex[:12]}:"

KeyFactory = Callable[[str], str]


@pytest.fixture
def key() -> KeyFactory:
    """Unique key/channel names for one test (shared by both engines' runs)."""
    test_prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}:"
    return lambda name: test_prefix + name


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[CacheEngine]:
    eng: CacheEngine
    if request.param == "memory":
        eng = MemoryCacheEngine()
    else:
        eng = RedisCacheEngine(REDIS_URL, socket_timeout=2.0)
        assert await eng.ping(), (
            f"Redis not reachable at {REDIS_URL} (deselect with -m 'not redis')"
        )
    try:
        yield eng
    finally:
        await eng.aclose()
        if request.param == "redis":
            _delete_prefix(SESSION_PREFIX)


def _delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2.0)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.01)


async def take(sub: Subscription, n: int, timeout: float = 3.0) -> list[tuple[str, bytes]]:
    with trio.fail_after(timeout):
        return [await sub.receive() for _ in range(n)]


async def numsub(engine: CacheEngine, channel: str) -> int:
    """How many subscriptions the backend holds for ``channel``."""
    if isinstance(engine, MemoryCacheEngine):
        return len(engine._subs.get(channel, ()))
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2.0)
    try:
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


def subscription_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("parley-cache-sub-")]


# ---------------------------------------------------------------------------
# key/value and TTLs
# ---------------------------------------------------------------------------


async def test_get_set_roundtrip(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.get(key("missing")) is None
    await engine.set(key("b"), b"\x00\xffbytes")
    await engine.set(key("s"), "héllo")
    assert await engine.get(key("b")) == b"\x00\xffbytes"
    assert await engine.get(key("s")) == "héllo".encode()
    await engine.set(key("s"), b"replaced")
    assert await engine.get(key("s")) == b"replaced"


async def test_ttl_expiry(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.set(key("short"), b"v", ttl=0.25)
    await engine.set(key("forever"), b"v")
    remaining = await engine.ttl(key("short"))
    assert remaining is not None and 0 < remaining <= 0.25
    assert await engine.ttl(key("forever")) is None
    assert await engine.ttl(key("missing")) is None
    await trio.sleep(0.35)
    assert await engine.get(key("short")) is None
    assert await engine.ttl(key("short")) is None
    assert await engine.get(key("forever")) == b"v"


async def test_set_without_ttl_clears_ttl(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.set(key("k"), b"1", ttl=0.2)
    await engine.set(key("k"), b"2")
    assert await engine.ttl(key("k")) is None
    await trio.sleep(0.3)
    assert await engine.get(key("k")) == b"2"


async def test_expire(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.expire(key("missing"), 1.0) is False
    await engine.set(key("k"), b"v")
    assert await engine.expire(key("k"), 0.2) is True
    remaining = await engine.ttl(key("k"))
    assert remaining is not None and 0 < remaining <= 0.2
    await trio.sleep(0.3)
    assert await engine.get(key("k")) is None
    with pytest.raises(ValueError):
        await engine.expire(key("k"), 0)


async def test_set_if_absent_one_winner_among_50(engine: CacheEngine, key: KeyFactory) -> None:
    results: dict[int, bool] = {}

    async def contender(i: int) -> None:
        results[i] = await engine.set_if_absent(key("idem"), f"owner-{i}", ttl=5.0)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(contender, i)

    winners = [i for i, won in results.items() if won]
    assert len(results) == 50
    assert len(winners) == 1
    assert await engine.get(key("idem")) == f"owner-{winners[0]}".encode()
    remaining = await engine.ttl(key("idem"))
    assert remaining is not None and 0 < remaining <= 5.0


async def test_set_if_absent_after_expiry(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.set_if_absent(key("k"), b"first", ttl=0.2) is True
    assert await engine.set_if_absent(key("k"), b"second", ttl=0.2) is False
    assert await engine.get(key("k")) == b"first"
    await trio.sleep(0.3)
    assert await engine.set_if_absent(key("k"), b"third") is True
    assert await engine.get(key("k")) == b"third"
    assert await engine.ttl(key("k")) is None


async def test_get_many(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.set(key("a"), b"A")
    await engine.set(key("c"), "C")
    await engine.rpush(key("list"), [b"x"])
    assert await engine.get_many([key("a"), key("b"), key("c"), key("list")]) == [
        b"A",
        None,
        b"C",
        None,
    ]
    assert await engine.get_many([]) == []


async def test_delete(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.set(key("a"), b"1")
    await engine.rpush(key("l"), [b"1"])
    assert await engine.delete(key("a"), key("l"), key("missing")) == 2
    assert await engine.get(key("a")) is None
    assert await engine.lrange(key("l"), 0, -1) == []
    assert await engine.delete(key("a")) == 0
    assert await engine.delete() == 0


async def test_invalid_arguments(engine: CacheEngine, key: KeyFactory) -> None:
    with pytest.raises(ValueError):
        await engine.set(key("k"), b"v", ttl=0)
    with pytest.raises(ValueError):
        await engine.set(key("k"), b"v", ttl=-1.0)
    with pytest.raises(TypeError):
        await engine.set(key("k"), 123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await engine.rpush(key("l"), b"not-a-sequence-of-values")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await engine.rpush(key("l"), [b"x"], max_len=0)
    assert await engine.get(key("k")) is None


async def test_wrong_type_is_a_cache_error(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.rpush(key("list"), [b"x"])
    await engine.set(key("str"), b"not a number")
    with pytest.raises(CacheError) as get_list:
        await engine.get(key("list"))
    assert not isinstance(get_list.value, CacheUnavailable)
    with pytest.raises(CacheError):
        await engine.rpush(key("str"), [b"y"])
    with pytest.raises(CacheError):
        await engine.incr(key("str"))


# ---------------------------------------------------------------------------
# counters and the limiter
# ---------------------------------------------------------------------------


async def test_incr_fixed_window(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.incr(key("n"), ttl=0.3) == 1
    first_ttl = await engine.ttl(key("n"))
    await trio.sleep(0.1)
    assert await engine.incr(key("n"), ttl=0.3) == 2
    assert await engine.incr(key("n"), amount=5, ttl=0.3) == 7
    second_ttl = await engine.ttl(key("n"))
    # the window is fixed: later increments do not push the expiry back
    assert first_ttl is not None and second_ttl is not None
    assert second_ttl < first_ttl
    await trio.sleep(0.3)
    assert await engine.incr(key("n"), ttl=0.3) == 1


async def test_incr_without_ttl_and_negative(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.incr(key("n")) == 1
    assert await engine.incr(key("n"), amount=-3) == -2
    assert await engine.ttl(key("n")) is None
    assert await engine.get(key("n")) == b"-2"


async def test_incr_is_atomic_under_concurrency(engine: CacheEngine, key: KeyFactory) -> None:
    seen: list[int] = []

    async def bump() -> None:
        seen.append(await engine.incr(key("n"), ttl=5.0))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(bump)
    assert sorted(seen) == list(range(1, 51))


async def test_presence_counts_live_members_and_forgets_the_silent(
    engine: CacheEngine, key: KeyFactory
) -> None:
    k = key("presence")
    assert await engine.presence_add(k, [], ttl=5) == 0
    assert await engine.presence_add(k, ["a", "b"], ttl=5) == 2
    assert await engine.presence_add(k, ["b"], ttl=5) == 2  # refreshing is not adding
    assert await engine.presence_add(k, ["c"], ttl=0.3) == 3
    await engine.presence_remove(k, "a")
    assert await engine.presence_add(k, [], ttl=5) == 2
    await trio.sleep(0.4)  # "c" was not refreshed: it no longer counts
    assert await engine.presence_add(k, [], ttl=5) == 1
    await engine.presence_remove(k, "b", "nobody")
    assert await engine.presence_add(k, [], ttl=5) == 0


async def test_presence_members_go_with_their_owner(engine: CacheEngine, key: KeyFactory) -> None:
    k, alive = key("presence"), key("alive:")
    await engine.set(alive + "i1", b"1", ttl=5)
    await engine.set(alive + "i2", b"1", ttl=0.3)
    members = ["i1|a", "i1|b", "i2|c", "i3|d"]  # i3: no heartbeat at all
    assert await engine.presence_add(k, members, ttl=60, alive_prefix=alive) == 4  # just added
    assert await engine.presence_add(k, [], ttl=60) == 4  # without the check: all of them
    assert await engine.presence_add(k, [], ttl=60, alive_prefix=alive) == 3
    await trio.sleep(0.4)  # i2 died: its heartbeat expired long before its members would
    assert await engine.presence_add(k, [], ttl=60, alive_prefix=alive) == 2


async def test_hit_rate_allows_then_denies_with_retry_after(
    engine: CacheEngine, key: KeyFactory
) -> None:
    for _ in range(3):
        assert await engine.hit_rate(key("rl"), limit=3, window_seconds=0.4) == (True, 0.0)
    allowed, retry_after = await engine.hit_rate(key("rl"), limit=3, window_seconds=0.4)
    assert allowed is False
    assert 0 < retry_after <= 0.4
    await trio.sleep(retry_after + 0.05)
    assert await engine.hit_rate(key("rl"), limit=3, window_seconds=0.4) == (True, 0.0)


async def test_hit_rate_is_atomic_under_concurrency(engine: CacheEngine, key: KeyFactory) -> None:
    outcomes: list[bool] = []

    async def hit() -> None:
        allowed, _ = await engine.hit_rate(key("rl"), limit=5, window_seconds=5.0)
        outcomes.append(allowed)

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(hit)
    assert outcomes.count(True) == 5
    assert outcomes.count(False) == 25


async def test_hit_rate_and_get_counts_and_reads_in_one_call(
    engine: CacheEngine, key: KeyFactory
) -> None:
    await engine.set(key("a"), b"1")
    await engine.rpush(key("list"), [b"x"])  # not a plain value: None, as get_many says
    keys = [key("a"), key("missing"), key("list")]
    for _ in range(2):
        assert await engine.hit_rate_and_get(key("rl"), 2, 0.4, keys) == (
            True,
            0.0,
            [b"1", None, None],
        )
    allowed, retry_after, values = await engine.hit_rate_and_get(key("rl"), 2, 0.4, keys)
    assert (allowed, values) == (False, [b"1", None, None])  # denied: the keys still read
    assert 0 < retry_after <= 0.4
    # the same counter as hit_rate's
    assert (await engine.hit_rate(key("rl"), 2, 0.4))[0] is False
    assert await engine.hit_rate_and_get(key("rl2"), 1, 1.0, []) == (True, 0.0, [])


async def test_hit_rate_and_join_counts_reads_and_adds_in_one_call(
    engine: CacheEngine, key: KeyFactory
) -> None:
    k, alive = key("presence"), key("alive:")
    await engine.set(alive + "i1", b"1", ttl=5)
    await engine.set(key("deny"), b"x")
    assert await engine.presence_add(k, ["i9|gone"], ttl=60) == 1  # its owner has no heartbeat
    got = await engine.hit_rate_and_join(
        key("rl"), 1, 0.4, [key("deny")], k, "i1|a", 5.0, alive_prefix=alive
    )
    assert got == (True, 0.0, [b"x"], 1)  # "i9|gone" went with its owner
    allowed, retry_after, values, count = await engine.hit_rate_and_join(
        key("rl"), 1, 0.4, [], k, "i1|b", 5.0, alive_prefix=alive
    )
    # denied: the member is added all the same (the caller that refuses removes it)
    assert (allowed, values, count) == (False, [], 2) and 0 < retry_after <= 0.4
    await engine.presence_remove(k, "i1|b")
    assert await engine.presence_add(k, [], ttl=5, alive_prefix=alive) == 1
    # the same counter as hit_rate's
    assert (await engine.hit_rate(key("rl"), 1, 0.4))[0] is False


async def test_presence_renew_refreshes_many_sets_at_once(
    engine: CacheEngine, key: KeyFactory
) -> None:
    alive = key("alive:")
    await engine.set(alive + "i1", b"1", ttl=60)  # owner i1 has a heartbeat, i9 none
    n = PRESENCE_RENEW_BATCH + 3  # more sets than one round trip carries
    sets = {key(f"presence{i}"): [f"i1|{i}", f"i1|{i}b"] for i in range(n)}
    first = next(iter(sets))
    assert await engine.presence_add(first, ["i9|gone"], ttl=60) == 1
    await engine.presence_renew(sets, ttl=60, alive_prefix=alive)
    counts = [await engine.presence_add(k, [], ttl=60) for k in sets]
    assert counts == [2] * n  # every set: its two members; "i9|gone" went with its owner
    # members expire unless renewed in time
    short, renewed = key("short"), key("renewed")
    await engine.presence_renew({short: ["i1|s"], renewed: ["i1|r"]}, ttl=0.3)
    await engine.presence_renew({renewed: ["i1|r"]}, ttl=60)
    await trio.sleep(0.5)
    assert await engine.presence_add(short, [], ttl=60) == 0
    assert await engine.presence_add(renewed, [], ttl=60) == 1
    await engine.presence_renew({}, ttl=60)  # nothing to renew
    with pytest.raises(ValueError):
        await engine.presence_renew({first: ["x"]}, ttl=0)


# ---------------------------------------------------------------------------
# lists (stream buffers)
# ---------------------------------------------------------------------------


async def test_rpush_lrange(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.rpush(key("l"), [b"a", "b"]) == 2
    assert await engine.rpush(key("l"), [b"c", b"d", b"e"]) == 5
    assert await engine.rpush(key("l"), []) == 5
    assert await engine.rpush(key("missing"), []) == 0
    # Redis LRANGE semantics: stop inclusive, negatives count from the end,
    # out-of-range indexes clamp, an empty range is [].
    cases = {
        (0, -1): [b"a", b"b", b"c", b"d", b"e"],
        (0, 0): [b"a"],
        (1, 3): [b"b", b"c", b"d"],
        (-2, -1): [b"d", b"e"],
        (-3, 3): [b"c", b"d"],
        (-100, 1): [b"a", b"b"],
        (3, 100): [b"d", b"e"],
        (4, 2): [],
        (5, 10): [],
        (-1, -2): [],
    }
    for (start, stop), expected in cases.items():
        assert await engine.lrange(key("l"), start, stop) == expected, (start, stop)
    assert await engine.lrange(key("missing"), 0, -1) == []


async def test_rpush_max_len_keeps_the_tail(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.rpush(key("l"), [b"1", b"2", b"3"], max_len=4) == 3
    assert await engine.rpush(key("l"), [b"4", b"5", b"6"], max_len=4) == 4
    assert await engine.lrange(key("l"), 0, -1) == [b"3", b"4", b"5", b"6"]
    assert await engine.rpush(key("l"), [b"7"], max_len=2) == 2
    assert await engine.lrange(key("l"), 0, -1) == [b"6", b"7"]


async def test_rpush_refreshes_ttl(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.rpush(key("l"), [b"1"], ttl=0.3)
    await trio.sleep(0.2)
    await engine.rpush(key("l"), [b"2"], ttl=0.3)
    remaining = await engine.ttl(key("l"))
    assert remaining is not None and remaining > 0.2  # refreshed, not 0.1 left
    await engine.rpush(key("l"), [b"3"])  # no ttl given: the existing one stays
    assert await engine.ttl(key("l")) is not None
    await trio.sleep(0.15)
    assert await engine.lrange(key("l"), 0, -1) == [b"1", b"2", b"3"]
    await trio.sleep(0.25)
    assert await engine.lrange(key("l"), 0, -1) == []


# ---------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------


async def test_pipeline_applies_in_order(engine: CacheEngine, key: KeyFactory) -> None:
    await engine.set(key("gone"), b"x")
    async with engine.subscribe(key("ch")) as sub:
        pipe = engine.pipeline()
        assert (
            pipe.set(key("a"), b"1")
            .set(key("a"), "2", ttl=5.0)
            .rpush(key("l"), [b"x", b"y", b"z"], ttl=5.0, max_len=2)
            .rpush(key("l"), [b"w"])
            .set(key("tmp"), b"t")
            .expire(key("tmp"), 0.2)
            .publish(key("ch"), b"hello")
            .delete(key("gone"))
        ) is pipe
        assert len(pipe) == 8
        # nothing is applied before execute
        assert await engine.get(key("a")) is None
        await pipe.execute()
        assert len(pipe) == 0
        assert await take(sub, 1) == [(key("ch"), b"hello")]
    assert await engine.get(key("a")) == b"2"
    a_ttl = await engine.ttl(key("a"))
    assert a_ttl is not None and 0 < a_ttl <= 5.0
    assert await engine.lrange(key("l"), 0, -1) == [b"y", b"z", b"w"]
    assert await engine.get(key("gone")) is None
    await trio.sleep(0.3)
    assert await engine.get(key("tmp")) is None
    await engine.pipeline().execute()  # empty: a no-op


# ---------------------------------------------------------------------------
# pub/sub
# ---------------------------------------------------------------------------


async def test_pubsub_order_and_multiple_subscribers(engine: CacheEngine, key: KeyFactory) -> None:
    a, b = key("a"), key("b")
    async with engine.subscribe(a) as only_a, engine.subscribe(a, b) as both:
        assert only_a.channels == (a,)
        await engine.publish(key("nobody-listens"), b"lost")
        for i in range(50):
            await engine.publish(a, f"a{i}")
            await engine.publish(b, f"b{i}".encode())
        got_a = await take(only_a, 50)
        got_both = await take(both, 100)
    assert got_a == [(a, f"a{i}".encode()) for i in range(50)]
    assert [m for m in got_both if m[0] == a] == got_a
    assert [m for m in got_both if m[0] == b] == [(b, f"b{i}".encode()) for i in range(50)]
    # interleaving across channels is preserved too (one publisher, one order)
    assert got_both[:4] == [(a, b"a0"), (b, b"b0"), (a, b"a1"), (b, b"b1")]
    assert only_a.dropped == both.dropped == 0


async def test_pubsub_cancellation_cleans_up(engine: CacheEngine, key: KeyFactory) -> None:
    channel = key("ch")
    received: list[tuple[str, bytes]] = []
    threads_before = len(subscription_threads())

    async def consumer(*, task_status: trio.TaskStatus[Subscription]) -> None:
        async with engine.subscribe(channel) as sub:
            task_status.started(sub)
            async for item in sub:
                received.append(item)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            sub = await nursery.start(consumer)
            assert await numsub(engine, channel) == 1
            await engine.publish(channel, b"one")
            await wait_until(lambda: len(received) == 1)
            nursery.cancel_scope.cancel()

    assert sub.closed
    assert received == [(channel, b"one")]
    await engine.publish(channel, b"after")  # nobody listening: still fine
    await wait_until(lambda: len(subscription_threads()) == threads_before)
    for _ in range(100):
        if await numsub(engine, channel) == 0:
            break
        await trio.sleep(0.01)
    assert await numsub(engine, channel) == 0
    assert received == [(channel, b"one")]
    with trio.fail_after(1):
        assert [item async for item in sub] == []  # ended, does not block


async def test_pubsub_slow_subscriber_drops_oldest(engine: CacheEngine, key: KeyFactory) -> None:
    channel = key("ch")
    async with engine.subscribe(channel, buffer_size=4) as sub:
        for i in range(10):
            await engine.publish(channel, str(i))
        await wait_until(lambda: sub.dropped == 6)
        assert await take(sub, 4) == [(channel, str(i).encode()) for i in range(6, 10)]
        await engine.publish(channel, b"next")
        assert await take(sub, 1) == [(channel, b"next")]
    assert sub.dropped == 6


async def test_subscribe_needs_a_channel(engine: CacheEngine) -> None:
    with pytest.raises(ValueError):
        async with engine.subscribe():
            pass


async def test_aclose_ends_subscriptions_and_calls(engine: CacheEngine, key: KeyFactory) -> None:
    assert await engine.ping() is True
    async with engine.subscribe(key("ch")) as sub:
        await engine.aclose()
        with trio.fail_after(3), pytest.raises(CacheUnavailable):
            await sub.receive()
    assert await engine.ping() is False
    with pytest.raises(CacheUnavailable):
        await engine.get(key("k"))
    with pytest.raises(CacheUnavailable):
        await engine.pipeline().set(key("k"), b"v").execute()
    await engine.aclose()  # idempotent


async def test_memory_engine_sweeps_expired_keys_on_write(key: KeyFactory) -> None:
    # Keys that are never read again must not accumulate (one process, no Redis).
    engine = MemoryCacheEngine()
    for i in range(1000):
        await engine.set(key(f"k{i}"), b"v", ttl=0.05)
    await engine.rpush(key("l"), [b"x"], ttl=0.05)
    await trio.sleep(0.1)
    await engine.set(key("trigger"), b"v")
    assert list(engine._data) == [key("trigger")]
    assert len(engine._expiry_heap) == 0
    await engine.aclose()


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------


async def test_factory_picks_engine_from_url() -> None:
    assert isinstance(create_cache_engine(None), MemoryCacheEngine)
    assert isinstance(create_cache_engine("  "), MemoryCacheEngine)
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache.example:6380/1"):
        eng = create_cache_engine(url, socket_timeout=0.5)
        assert isinstance(eng, RedisCacheEngine)
        await eng.aclose()
    with pytest.raises(ValueError):
        create_cache_engine("memcached://127.0.0.1:11211")


# ---------------------------------------------------------------------------
# Redis failures: unreachable, stalled, killed and restarted
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _assert_unavailable(eng: RedisCacheEngine, key: KeyFactory) -> None:
    assert await eng.ping() is False
    with pytest.raises(CacheUnavailable):
        await eng.get(key("k"))
    with pytest.raises(CacheUnavailable):
        await eng.set(key("k"), b"v", ttl=1.0)
    with pytest.raises(CacheUnavailable):
        await eng.hit_rate(key("rl"), 1, 1.0)
    with pytest.raises(CacheUnavailable):
        await eng.pipeline().set(key("k"), b"v").execute()
    with pytest.raises(CacheUnavailable):
        async with eng.subscribe(key("ch")):
            pass


@pytest.mark.redis
async def test_redis_nothing_listening_fails_fast(key: KeyFactory) -> None:
    eng = RedisCacheEngine(f"redis://127.0.0.1:{_free_port()}/0", socket_timeout=0.5)
    try:
        # generous hang guard: connection refused must not wait for timeouts/retries
        with trio.fail_after(5):
            await _assert_unavailable(eng, key)
    finally:
        await eng.aclose()


@pytest.mark.redis
async def test_redis_stalled_server_times_out(key: KeyFactory) -> None:
    # Accepts TCP connections (kernel backlog) but never answers a byte.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        eng = RedisCacheEngine(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        try:
            with trio.fail_after(10):  # hang guard: each call is bounded by the timeout
                assert await eng.ping() is False
                with pytest.raises(CacheUnavailable):
                    await eng.get(key("k"))
                with pytest.raises(CacheUnavailable):
                    async with eng.subscribe(key("ch")):
                        pass
        finally:
            await eng.aclose()


class _PrivateRedis:
    """A throwaway redis-server on its own port (never the shared one)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    async def wait_ready(self) -> None:
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        try:
            with trio.fail_after(5):
                while True:
                    try:
                        if await trio.to_thread.run_sync(client.ping):
                            return
                    except redis.RedisError:
                        pass
                    await trio.sleep(0.02)
        finally:
            client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[_PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed")
    server = _PrivateRedis(_free_port(), tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.redis
async def test_redis_killed_then_restarted_recovers(
    private_redis: _PrivateRedis, key: KeyFactory
) -> None:
    private_redis.start()
    await private_redis.wait_ready()
    eng = RedisCacheEngine(f"redis://127.0.0.1:{private_redis.port}/0", socket_timeout=0.5)
    try:
        await eng.set(key("k"), b"before")
        assert await eng.get(key("k")) == b"before"
        async with eng.subscribe(key("ch")) as sub:
            await eng.publish(key("ch"), b"m1")
            assert await take(sub, 1) == [(key("ch"), b"m1")]

            private_redis.kill()

            with trio.fail_after(5):
                with pytest.raises(CacheUnavailable):
                    await sub.receive()  # the subscription reports the loss
                await _assert_unavailable(eng, key)

        private_redis.start()
        await private_redis.wait_ready()
        with trio.fail_after(5):
            assert await eng.ping() is True
            assert await eng.get(key("k")) is None  # a fresh server (no persistence)
            await eng.set(key("k"), b"after")
            assert await eng.get(key("k")) == b"after"
            async with eng.subscribe(key("ch")) as sub2:
                await eng.publish(key("ch"), b"m2")
                assert await take(sub2, 1) == [(key("ch"), b"m2")]

        # A restart between two calls: the pooled connections are stale, yet
        # the very next call succeeds (stale sockets are replaced at checkout).
        private_redis.kill()
        private_redis.start()
        await private_redis.wait_ready()
        with trio.fail_after(5):
            assert await eng.get(key("k")) is None
            assert await eng.set_if_absent(key("k"), b"again") is True
    finally:
        await eng.aclose()
