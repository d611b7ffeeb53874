"""Every open WebSocket of this instance, by user and by session."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import trio

from protocol.close_codes import CloseCode, close_reason
from server.logging import get_logger
from store.cache import CacheEngine, CacheError

if TYPE_CHECKING:
    from server.ws.connection import Connection

__all__ = ["REVOKE_CHANNEL", "Hub"]

REVOKE_CHANNEL = "parley:revoked"
log = get_logger("parley.hub")


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, set[Connection]] = defaultdict(set)
        self._count = 0

    def add(self, conn: Connection) -> None:
        self._by_user[conn.user_id].add(conn)
        self._count += 1

    def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns and conn in conns:
            conns.discard(conn)
            self._count -= 1
            if not conns:
                del self._by_user[conn.user_id]

    def count(self) -> int:
        return self._count

    def count_for_user(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def all(self) -> list[Connection]:
        return [c for conns in self._by_user.values() for c in conns]

    def close_session(self, session_id: str) -> int:
        """A revoked session: its sockets close with 4500."""
        n = 0
        for conn in self.all():
            if conn.session_id == session_id:
                conn.close(int(CloseCode.TOKEN_INVALID), close_reason(CloseCode.TOKEN_INVALID))
                n += 1
        return n

    async def watch_revocations(self, cache: CacheEngine) -> None:
        """Listen for revoked sessions from every instance; resubscribe after a cache fault."""
        while True:
            try:
                async with cache.subscribe(REVOKE_CHANNEL) as sub:
                    async for _channel, message in sub:
                        self.close_session(message.decode(errors="replace"))
            except CacheError:
                log.warning("revocation_feed_lost")
            except Exception:
                log.exception("revocation_feed_failed")
            await trio.sleep(1.0)
