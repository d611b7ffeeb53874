"""Tombstones of purged client ``messageId`` s: the retention job writes one per user
message it deletes (a hash of "conversation id:messageId", nothing readable), and a turn
start that finds one answers ``REPLAY_EXPIRED`` instead of generating again."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.schema import message_tombstones

__all__ = ["tombstone_key", "tombstoned", "write_tombstones"]

# built once: every turn start asks (store/messages.py says why)
_PURGED = sa.select(message_tombstones.c.key_hash).where(
    message_tombstones.c.key_hash.in_(sa.bindparam("hashes", expanding=True))
)


def tombstone_key(conversation_id: str, client_message_id: str) -> str:
    return hashlib.sha256(f"{conversation_id}:{client_message_id}".encode()).hexdigest()


def tombstoned(conn: Connection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which ``(conversation id, messageId)`` pairs were purged."""
    by_hash = {tombstone_key(c, m): (c, m) for c, m in keys}
    if not by_hash:
        return set()
    rows = conn.execute(_PURGED, {"hashes": sorted(by_hash)})
    return {by_hash[r[0]] for r in rows}


def write_tombstones(conn: Connection, keys: Iterable[tuple[str, str]]) -> int:
    """One row per pair not yet tombstoned (a second purge of a re-sent id is harmless)."""
    pairs = set(keys)
    fresh = pairs - tombstoned(conn, pairs)
    if fresh:
        now = utcnow()
        conn.execute(
            message_tombstones.insert(),
            [{"key_hash": tombstone_key(c, m), "purged_at": now} for c, m in sorted(fresh)],
        )
    return len(fresh)
