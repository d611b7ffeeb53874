"""The checks before a turn start touches the database (server/turns/starts.py): what
the user keeps, as last measured, refuses a send from the cache; without a figure (or
without the cache) the start measures it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from protocol.errors import ErrorCode, ProtocolError
from server.turns.starts import idem_key, precheck, quota_key
from store.cache import CacheUnavailable
from store.cache.memory import MemoryCacheEngine


class _Up:
    def unavailable_for(self) -> float:
        return 0.0


async def _check(cache: Any, *, cap: int | None = 100, message: str = "m1") -> Any:
    svc: Any = SimpleNamespace(cache=cache)
    return await precheck(
        svc,
        _Up(),
        user_id="u1",
        conversation_id="c1",
        client_message_id=message,
        content="hello",
        max_stored_bytes=cap,
    )


async def test_no_figure_yet_the_start_measures() -> None:
    check = await _check(MemoryCacheEngine())
    assert check.measure_quota and not check.known


async def test_a_figure_under_the_cap_needs_no_measuring() -> None:
    cache = MemoryCacheEngine()
    await cache.set(quota_key("u1"), "99", ttl=60)
    assert not (await _check(cache)).measure_quota


async def test_a_figure_at_the_cap_refuses_before_the_database() -> None:
    cache = MemoryCacheEngine()
    await cache.set(quota_key("u1"), "100", ttl=60)
    with pytest.raises(ProtocolError) as caught:
        await _check(cache)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "keeps 100 bytes of 100" in caught.value.message


async def test_a_known_message_replays_even_at_the_cap() -> None:
    cache = MemoryCacheEngine()
    await cache.set(quota_key("u1"), "500", ttl=60)
    await cache.set(idem_key("c1", "m1"), "assistant-id", ttl=60)
    check = await _check(cache)
    assert check.known and not check.measure_quota


async def test_no_cap_no_quota_key_read() -> None:
    cache = MemoryCacheEngine()
    await cache.set(quota_key("u1"), "500", ttl=60)
    assert not (await _check(cache, cap=None)).measure_quota


async def test_without_the_cache_the_database_measures() -> None:
    class Down:
        async def get_many(self, keys: list[str]) -> list[bytes | None]:
            raise CacheUnavailable("down")

    assert (await _check(Down())).measure_quota
