"""Sessions repository: one row per login; refresh tokens stored only as hashes.

Rotation is a compare-and-swap on ``refresh_hash``; the old hash moves to
``refresh_history`` so that presenting it again is recognised as reuse.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.records import SessionRecord
from store.schema import refresh_history, sessions, users

__all__ = [
    "RefreshOutcome",
    "RefreshResult",
    "create_session",
    "get_session",
    "is_session_live",
    "list_active_sessions",
    "live_sessions",
    "revoke_all_sessions",
    "revoke_oldest_sessions",
    "revoke_session",
    "rotate_refresh",
    "swap_refresh",
]


def new_session_record(
    *,
    user_id: str,
    refresh_hash: str,
    ttl: dt.timedelta,
    user_agent: str | None,
    ip: str | None,
) -> SessionRecord:
    """A new session, not stored yet (:func:`create_session` stores one)."""
    now = utcnow()
    return SessionRecord(
        id=str(uuid.uuid4()),
        user_id=user_id,
        refresh_hash=refresh_hash,
        rotation_counter=0,
        created_at=now,
        last_used_at=now,
        expires_at=now + ttl,
        revoked_at=None,
        revoked_reason=None,
        user_agent=(user_agent or "")[:255] or None,
        ip=ip,
    )


def create_session(
    conn: Connection,
    *,
    user_id: str,
    refresh_hash: str,
    ttl: dt.timedelta,
    user_agent: str | None,
    ip: str | None,
) -> SessionRecord:
    rec = new_session_record(
        user_id=user_id, refresh_hash=refresh_hash, ttl=ttl, user_agent=user_agent, ip=ip
    )
    conn.execute(sessions.insert(), rec.as_row())
    return rec  # what was stored (no read-back: every column is given)


def get_session(conn: Connection, session_id: str) -> SessionRecord | None:
    row = conn.execute(sa.select(sessions).where(sessions.c.id == session_id)).first()
    return SessionRecord.from_row(row) if row else None


# built once: a turn start may ask it for its batch (store/turn_start.py)
_LIVE = (
    sa.select(sessions.c.id)
    .join(users, users.c.id == sessions.c.user_id)
    .where(
        sessions.c.id.in_(sa.bindparam("ids", expanding=True)),
        sessions.c.revoked_at.is_(None),
        sessions.c.expires_at > sa.bindparam("now"),
        users.c.deleted_at.is_(None),
    )
)


def live_sessions(conn: Connection, session_ids: list[str]) -> set[str]:
    """The database's word on access tokens' sessions: of these, the ones not revoked, not
    expired, and whose user is not deleted (what decides when the cache has no deny-list
    entry)."""
    if not session_ids:
        return set()
    return {row.id for row in conn.execute(_LIVE, {"ids": session_ids, "now": utcnow()})}


def is_session_live(conn: Connection, session_id: str) -> bool:
    """:func:`live_sessions` for one session."""
    return session_id in live_sessions(conn, [session_id])


def revoke_oldest_sessions(conn: Connection, user_id: str, *, keep: int, reason: str) -> list[str]:
    """Past ``keep`` live sessions, revoke the oldest (by creation); returns their ids."""
    live = conn.execute(
        sa.select(sessions.c.id)
        .where(
            sessions.c.user_id == user_id,
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > utcnow(),
        )
        .order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
    ).all()
    ids = [r[0] for r in live[keep:]]
    if ids:
        conn.execute(
            sessions.update()
            .where(sessions.c.id.in_(ids), sessions.c.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
    return ids


def list_active_sessions(conn: Connection, user_id: str) -> list[SessionRecord]:
    rows = conn.execute(
        sa.select(sessions)
        .where(
            sessions.c.user_id == user_id,
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > utcnow(),
        )
        .order_by(sessions.c.last_used_at.desc(), sessions.c.id)
    )
    return [SessionRecord.from_row(r) for r in rows]


def revoke_session(
    conn: Connection, session_id: str, *, reason: str, user_id: str | None = None
) -> bool:
    """Revoke one session (optionally only if ``user_id`` owns it). True if it changed."""
    q = sessions.update().where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
    if user_id is not None:
        q = q.where(sessions.c.user_id == user_id)
    return conn.execute(q.values(revoked_at=utcnow(), revoked_reason=reason)).rowcount == 1


def revoke_all_sessions(conn: Connection, user_id: str, *, reason: str) -> list[str]:
    """Revoke every live session of a user; returns the ids revoked."""
    ids = [
        r[0]
        for r in conn.execute(
            sa.select(sessions.c.id).where(
                sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None)
            )
        )
    ]
    if ids:
        conn.execute(
            sessions.update()
            .where(sessions.c.id.in_(ids), sessions.c.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
    return ids


def swap_refresh(
    conn: Connection, sess: SessionRecord, *, new_hash: str, ttl: dt.timedelta
) -> bool:
    """Replace the session's refresh hash (compare-and-swap on the one we read) and keep the
    old one in ``refresh_history``, so presenting it again is reuse. False if it changed."""
    now = utcnow()
    res = conn.execute(
        sessions.update()
        .where(
            sessions.c.id == sess.id,
            sessions.c.refresh_hash == sess.refresh_hash,
            sessions.c.revoked_at.is_(None),
        )
        .values(
            refresh_hash=new_hash,
            rotation_counter=sessions.c.rotation_counter + 1,
            last_used_at=now,
            expires_at=now + ttl,
        )
    )
    if res.rowcount != 1:
        return False
    conn.execute(
        refresh_history.insert().values(
            token_hash=sess.refresh_hash, session_id=sess.id, user_id=sess.user_id, rotated_at=now
        )
    )
    return True


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    REUSED = "reused"  # a rotated-away token came back: the session is now revoked
    INVALID = "invalid"  # unknown token, or its session revoked/expired


@dataclass(frozen=True, slots=True)
class RefreshResult:
    outcome: RefreshOutcome
    session: SessionRecord | None = None


def rotate_refresh(
    conn: Connection,
    *,
    old_hash: str,
    new_hash: str,
    ttl_for: Callable[[SessionRecord], dt.timedelta | None],
) -> RefreshResult:
    """Swap the session's refresh hash; detect reuse of an already rotated token.

    ``ttl_for(session)`` gives the renewed lifetime (it depends on the owner), or None
    when the session may not be renewed (its owner is gone): then the token is invalid.
    """
    now = utcnow()
    row = conn.execute(sa.select(sessions).where(sessions.c.refresh_hash == old_hash)).first()
    if row is None:
        hist = conn.execute(
            sa.select(refresh_history.c.session_id).where(refresh_history.c.token_hash == old_hash)
        ).first()
        if hist is None:
            return RefreshResult(RefreshOutcome.INVALID)
        revoke_session(conn, hist[0], reason="token_reuse")
        return RefreshResult(RefreshOutcome.REUSED, get_session(conn, hist[0]))
    sess = SessionRecord.from_row(row)
    if sess.revoked_at is not None or sess.expires_at <= now:
        return RefreshResult(RefreshOutcome.INVALID, sess)
    ttl = ttl_for(sess)
    if ttl is None:
        return RefreshResult(RefreshOutcome.INVALID, sess)
    if not swap_refresh(conn, sess, new_hash=new_hash, ttl=ttl):
        # Lost a race with a concurrent refresh of the same token: that is reuse too.
        revoke_session(conn, sess.id, reason="token_reuse")
        return RefreshResult(RefreshOutcome.REUSED, get_session(conn, sess.id))
    return RefreshResult(RefreshOutcome.ROTATED, get_session(conn, sess.id))
