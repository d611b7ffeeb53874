"""Every open WebSocket of this instance, by user and by session, and when the
instance's sweeper (``server/ws/connection.py``) is to look at each of them next.

The sweeper does not visit every socket on every sweep: each connection sits in the
slot of its next deadline (its ping falling due, its pong's deadline, its token's
expiry; at most :data:`MAX_AHEAD` away), rounded up to the sweep interval; a new one,
and one whose outbox is over its bound, is watched: looked at on every sweep (the
outbox tells the hub when it goes over) until it is settled and back under. At
10,000 idle sockets pinged every 25 s a sweep every 2 s looks at ~1,600 of them (their
ping and their pong), not 10,000.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

from protocol.close_codes import CloseCode, close_reason
from server.ws.state import Connection

__all__ = ["MAX_AHEAD", "Hub"]

# seconds: a connection is looked at least this often, whatever its deadlines say (the
# wall clock, which a token's expiry is read on, may have moved)
MAX_AHEAD = 60.0


class Hub:
    def __init__(self, tick: float = 2.0) -> None:
        self._by_user: dict[str, set[Connection]] = defaultdict(set)
        self._count = 0
        self.tick = tick  # the sweep interval (trio's clock, seconds)
        self._slots: dict[int, set[Connection]] = {}
        self._watched: set[Connection] = set()

    def add(self, conn: Connection) -> None:
        """Count the connection; the next sweep looks at it (it is watched until then)."""
        self._by_user[conn.user_id].add(conn)
        self._count += 1
        conn.outbox.on_over = functools.partial(self._watched.add, conn)
        self._watched.add(conn)

    def remove(self, conn: Connection) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns and conn in conns:
            conns.discard(conn)
            self._count -= 1
            if not conns:
                del self._by_user[conn.user_id]
        self._unschedule(conn)
        self._watched.discard(conn)
        conn.outbox.on_over = None

    def schedule(self, conn: Connection, at: float) -> None:
        """The sweeper looks at ``conn`` on its first sweep at or after ``at`` (trio's
        clock; a time already past: the next sweep)."""
        slot = math.ceil(at / self.tick)
        if conn.sweep_slot == slot:
            return
        self._unschedule(conn)
        self._slots.setdefault(slot, set()).add(conn)
        conn.sweep_slot = slot

    def _unschedule(self, conn: Connection) -> None:
        slot = conn.sweep_slot
        if slot is None:
            return
        conn.sweep_slot = None
        conns = self._slots.get(slot)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._slots[slot]

    def due(self, now: float) -> list[Connection]:
        """The connections to look at in a sweep at ``now``: those whose slot has come
        (taken out of it: the sweeper schedules them again) and the watched ones, new
        since the last sweep or with an outbox over its bound (the sweeper stops watching
        one, :meth:`unwatch`, once it has looked and the outbox is under)."""
        last = math.floor(now / self.tick)
        due: dict[Connection, None] = dict.fromkeys(self._watched)
        for slot in [s for s in self._slots if s <= last]:
            for conn in self._slots.pop(slot):
                conn.sweep_slot = None
                due[conn] = None
        return list(due)

    def unwatch(self, conn: Connection) -> None:
        self._watched.discard(conn)

    def scheduled(self) -> int:
        """How many connections sit in a slot (for tests and debugging)."""
        return sum(len(conns) for conns in self._slots.values())

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
