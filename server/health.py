"""The cache/broker's health, watched: degraded mode is a metric and a log line, not a 503.

Without Redis, Parley keeps serving (contract: Redis only carries what is in flight):
idempotency falls back to the database, rate limits fail open, revocations are kept
in-process and checked against the database, streams in flight finish, and followers on
other instances finish from the database. ``parley_cache_degraded`` says so (1) and one
log line marks each change; normal mode returns by itself when the cache answers again.
"""

from __future__ import annotations

import trio

from server.logging import get_logger
from server.services import Services
from store.cache import CacheError

__all__ = ["ALIVE_PREFIX", "HEARTBEAT_TTL", "watch_cache"]

ALIVE_PREFIX = "alive:"
HEARTBEAT_TTL = 6.0

log = get_logger("parley.health")


async def watch_cache(svc: Services, every: float = 2.0) -> None:
    """Every ``every`` seconds, write this instance's heartbeat (``alive:<instance id>``,
    which other instances read to tell its sockets from a dead one's); a failed write is
    degraded mode."""
    degraded = False
    while True:
        try:
            await svc.cache.set(ALIVE_PREFIX + svc.instance_id, b"1", ttl=HEARTBEAT_TTL)
            ok = True
        except CacheError:
            ok = False
        if ok == degraded:  # a change
            degraded = not ok
            svc.metrics.cache_degraded.set(1 if degraded else 0)
            if degraded:
                log.warning("cache_degraded", detail="the cache/broker does not answer")
            else:
                log.info("cache_recovered")
        await trio.sleep(every)
