"""Parley's cache/broker: one interface, an in-process engine and a Redis engine.

Use :func:`create_cache_engine` with the configured URL; code that receives a
:class:`CacheEngine` cannot tell which engine it has.
"""

from __future__ import annotations

from typing import Any

from store.cache.base import (
    DEFAULT_SUBSCRIPTION_BUFFER,
    CacheEngine,
    CacheError,
    CachePipeline,
    CacheUnavailable,
    Subscription,
    Value,
)
from store.cache.memory import MemoryCacheEngine
from store.cache.redis import RedisCacheEngine

__all__ = [
    "DEFAULT_SUBSCRIPTION_BUFFER",
    "CacheEngine",
    "CacheError",
    "CachePipeline",
    "CacheUnavailable",
    "MemoryCacheEngine",
    "RedisCacheEngine",
    "Subscription",
    "Value",
    "create_cache_engine",
]

_REDIS_SCHEMES = ("redis://", "rediss://")


def create_cache_engine(url: str | None, **redis_options: Any) -> CacheEngine:
    """Empty/``None`` URL: :class:`MemoryCacheEngine` (one process);
    ``redis://`` or ``rediss://``: :class:`RedisCacheEngine` (``redis_options``
    are passed to it, e.g. ``max_connections``, ``socket_timeout``)."""
    if url is None or not url.strip():
        return MemoryCacheEngine()
    url = url.strip()
    if url.lower().startswith(_REDIS_SCHEMES):
        return RedisCacheEngine(url, **redis_options)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(f"unsupported cache URL scheme {scheme!r}: use redis:// or rediss://")
