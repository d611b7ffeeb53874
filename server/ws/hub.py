"""Every open WebSocket of this instance, by user and by session."""

from __future__ import annotations

from collections import defaultdict

from protocol.close_codes import CloseCode, close_reason
from server.ws.state import Connection

__all__ = ["Hub"]


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
