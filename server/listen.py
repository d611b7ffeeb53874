"""A broker channel listened to for the life of the server: resubscribed after a fault."""

from __future__ import annotations

from collections.abc import Callable

import trio

from server.logging import get_logger
from store.cache import CacheEngine, CacheError

__all__ = ["listen_forever"]

log = get_logger("parley.listen")


async def listen_forever(
    cache: CacheEngine, channel: str, handle: Callable[[str], object], *, name: str
) -> None:
    """Call ``handle(message)`` for every message on ``channel``; when the cache fails,
    log ``<name>_feed_lost`` and subscribe again a second later."""
    while True:
        try:
            async with cache.subscribe(channel) as sub:
                async for _channel, raw in sub:
                    handle(raw.decode(errors="replace"))
        except CacheError:
            log.warning(f"{name}_feed_lost")
        except Exception:
            log.exception(f"{name}_feed_failed")
        await trio.sleep(1.0)
