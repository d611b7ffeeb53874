"""What the retention job deletes, in batches: each function deletes at most ``batch`` rows
in one statement and returns how many, so the caller runs one short transaction per batch
and a large purge never holds long locks.

Order respects the foreign keys: messages, then conversations, refresh history, sessions,
then the user. Each user message deleted leaves a tombstone of its client ``messageId``
(:mod:`store.tombstones`); a purged user's audit events stay, pseudonymised.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.audit import pseudonymise_user
from store.schema import (
    audit_events,
    conversations,
    message_tombstones,
    messages,
    refresh_history,
    sessions,
    users,
)
from store.tombstones import write_tombstones

__all__ = [
    "claim_idle_guests",
    "delete_messages",
    "deleted_messages",
    "purge_audit",
    "purge_conversations",
    "purge_expired_sessions",
    "purge_old_refresh_history",
    "purge_tombstones",
    "purge_user_rows",
    "users_to_purge",
]


def delete_messages(conn: Connection, where: sa.ColumnElement[bool], batch: int) -> int:
    """Up to ``batch`` messages matching ``where``, tombstoning their client messageIds."""
    rows = conn.execute(
        sa.select(messages.c.id, messages.c.conversation_id, messages.c.client_message_id)
        .where(where)
        .limit(batch)
    ).all()
    if not rows:
        return 0
    write_tombstones(conn, [(r[1], r[2]) for r in rows if r[2]])
    ids = [r[0] for r in rows]
    return conn.execute(messages.delete().where(messages.c.id.in_(ids))).rowcount


def deleted_messages(deleted_before: dt.datetime) -> list[sa.ColumnElement[bool]]:
    """Messages soft-deleted before the cutoff, then any left in a conversation that was
    (two conditions, each served by an index, rather than one OR that scans the table)."""
    gone = sa.select(conversations.c.id).where(conversations.c.deleted_at < deleted_before)
    return [messages.c.deleted_at < deleted_before, messages.c.conversation_id.in_(gone)]


def _delete_ids(
    conn: Connection, table: sa.Table, col: sa.Column[str], query: sa.Select[Any]
) -> int:
    ids = [r[0] for r in conn.execute(query).all()]
    if not ids:
        return 0
    return conn.execute(table.delete().where(col.in_(ids))).rowcount


def claim_idle_guests(conn: Connection, cutoff: dt.datetime, now: dt.datetime, batch: int) -> int:
    """Guests idle since before ``cutoff``: marked deleted now (so they stop working at
    once, and a guest active again in between is not taken), purged with the rest."""
    ids = [
        r[0]
        for r in conn.execute(
            sa.select(users.c.id)
            .where(
                users.c.kind == "guest",
                users.c.deleted_at.is_(None),
                users.c.last_active_at < cutoff,
            )
            .limit(batch)
        )
    ]
    if not ids:
        return 0
    return conn.execute(
        users.update()
        .where(users.c.id.in_(ids), users.c.deleted_at.is_(None), users.c.last_active_at < cutoff)
        .values(deleted_at=now, email=None, password_hash=None)
    ).rowcount


def users_to_purge(
    conn: Connection, *, deleted_before: dt.datetime, guest_idle: dt.datetime, batch: int
) -> list[str]:
    """Users soft-deleted before the grace cutoff, and claimed guests (deleted, idle since
    before ``guest_idle``: also those a crashed run claimed)."""
    rows = conn.execute(
        sa.select(users.c.id)
        .where(
            sa.or_(
                users.c.deleted_at < deleted_before,
                sa.and_(
                    users.c.kind == "guest",
                    users.c.deleted_at.is_not(None),
                    users.c.last_active_at < guest_idle,
                ),
            )
        )
        .order_by(users.c.id)
        .limit(batch)
    )
    return [r[0] for r in rows]


def purge_user_rows(conn: Connection, user_id: str, kind: str, batch: int) -> int:
    """One batch of what ``user_id`` owns, in foreign-key order; ``kind`` says which table.
    ``user``: the row itself, once nothing else is left (its audit events pseudonymised)."""
    if kind == "messages":
        return delete_messages(conn, messages.c.user_id == user_id, batch)
    if kind == "conversations":
        q = sa.select(conversations.c.id).where(conversations.c.user_id == user_id).limit(batch)
        return _delete_ids(conn, conversations, conversations.c.id, q)
    if kind == "refresh_history":
        q = sa.select(refresh_history.c.token_hash).where(refresh_history.c.user_id == user_id)
        return _delete_ids(conn, refresh_history, refresh_history.c.token_hash, q.limit(batch))
    if kind == "sessions":
        q = sa.select(sessions.c.id).where(sessions.c.user_id == user_id).limit(batch)
        return _delete_ids(conn, sessions, sessions.c.id, q)
    if kind == "user":
        pseudonymise_user(conn, user_id)
        return conn.execute(users.delete().where(users.c.id == user_id)).rowcount
    raise ValueError(kind)


def purge_conversations(conn: Connection, deleted_before: dt.datetime, batch: int) -> int:
    """Conversations soft-deleted before the cutoff whose messages are all gone."""
    has_messages = sa.exists().where(messages.c.conversation_id == conversations.c.id)
    q = (
        sa.select(conversations.c.id)
        .where(conversations.c.deleted_at < deleted_before, ~has_messages)
        .limit(batch)
    )
    return _delete_ids(conn, conversations, conversations.c.id, q)


def purge_expired_sessions(
    conn: Connection, now: dt.datetime, revoked_before: dt.datetime, batch: int
) -> tuple[int, int]:
    """Sessions expired, or revoked before ``revoked_before`` (their access tokens are long
    dead), with their refresh history: ``(sessions, history rows)`` of one batch."""
    ids = [
        r[0]
        for r in conn.execute(
            sa.select(sessions.c.id)
            .where(sa.or_(sessions.c.expires_at < now, sessions.c.revoked_at < revoked_before))
            .limit(batch)
        )
    ]
    if not ids:
        return 0, 0
    hist = 0
    while True:  # a long-lived session may have many rotations: a batch at a time
        n = _delete_ids(
            conn,
            refresh_history,
            refresh_history.c.token_hash,
            sa.select(refresh_history.c.token_hash)
            .where(refresh_history.c.session_id.in_(ids))
            .limit(batch),
        )
        hist += n
        if n < batch:
            break
    return conn.execute(sessions.delete().where(sessions.c.id.in_(ids))).rowcount, hist


def purge_old_refresh_history(conn: Connection, rotated_before: dt.datetime, batch: int) -> int:
    """Rotated-away tokens older than the refresh lifetime: expired anyway."""
    q = (
        sa.select(refresh_history.c.token_hash)
        .where(refresh_history.c.rotated_at < rotated_before)
        .limit(batch)
    )
    return _delete_ids(conn, refresh_history, refresh_history.c.token_hash, q)


def purge_audit(conn: Connection, before: dt.datetime, batch: int) -> int:
    q = sa.select(audit_events.c.id).where(audit_events.c.at < before).limit(batch)
    return _delete_ids(conn, audit_events, audit_events.c.id, q)


def purge_tombstones(conn: Connection, before: dt.datetime, batch: int) -> int:
    q = (
        sa.select(message_tombstones.c.key_hash)
        .where(message_tombstones.c.purged_at < before)
        .limit(batch)
    )
    return _delete_ids(conn, message_tombstones, message_tombstones.c.key_hash, q)
