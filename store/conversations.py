"""Conversations and their messages. Every query is scoped by the owner's ``user_id``."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.records import ConversationRecord, MessageRecord
from store.schema import conversations, messages

__all__ = [
    "BadCursor",
    "count_conversations",
    "create_conversation",
    "decode_cursor",
    "encode_cursor",
    "get_conversation",
    "list_conversations",
    "list_messages",
    "rename_conversation",
    "soft_delete_all_for_user",
    "soft_delete_conversation",
    "stored_bytes_many",
]


class BadCursor(ValueError):
    """A list cursor that this server did not make."""


def encode_cursor(at: dt.datetime, row_id: str) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.partition("|")
        uuid.UUID(row_id)
        return dt.datetime.fromisoformat(at), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor(cursor) from exc


def count_conversations(conn: Connection, user_id: str) -> int:
    """The user's conversations not deleted (the per-user cap counts these)."""
    q = sa.select(sa.func.count()).where(
        conversations.c.user_id == user_id, conversations.c.deleted_at.is_(None)
    )
    return int(conn.execute(q).scalar_one())


def stored_bytes_many(conn: Connection, user_ids: list[str]) -> dict[str, int]:
    """About how much each user keeps: the length of every live message's content (bytes
    on MySQL, characters on SQLite); the per-user quota compares it. One query for the
    users of a batch of turn starts."""
    if not user_ids:
        return {}
    q = (
        sa.select(conversations.c.user_id, sa.func.sum(sa.func.length(messages.c.content)))
        .select_from(messages.join(conversations, conversations.c.id == messages.c.conversation_id))
        .where(
            conversations.c.user_id.in_(user_ids),
            conversations.c.deleted_at.is_(None),
            messages.c.deleted_at.is_(None),
        )
        .group_by(conversations.c.user_id)
    )
    used = dict.fromkeys(user_ids, 0)
    for user_id, total in conn.execute(q):
        used[user_id] = int(total or 0)
    return used


def create_conversation(conn: Connection, *, user_id: str, title: str) -> ConversationRecord:
    now = utcnow()
    cid = str(uuid.uuid4())
    conn.execute(
        conversations.insert().values(
            id=cid, user_id=user_id, title=title, last_seq=0, created_at=now, updated_at=now
        )
    )
    rec = get_conversation(conn, cid, user_id=user_id)
    assert rec is not None
    return rec


def get_conversation(
    conn: Connection, conversation_id: str, *, user_id: str, for_update: bool = False
) -> ConversationRecord | None:
    """The caller's live conversation, or None (not found, not yours, or deleted)."""
    q = sa.select(conversations).where(
        conversations.c.id == conversation_id,
        conversations.c.user_id == user_id,
        conversations.c.deleted_at.is_(None),
    )
    if for_update:
        q = q.with_for_update()
    row = conn.execute(q).first()
    return ConversationRecord.from_row(row) if row else None


def list_conversations(
    conn: Connection, *, user_id: str, limit: int, cursor: str | None
) -> tuple[list[ConversationRecord], str | None]:
    """Newest activity first (``updated_at`` desc, id desc), keyset-paged."""
    c = conversations.c
    q = sa.select(conversations).where(c.user_id == user_id, c.deleted_at.is_(None))
    if cursor:
        at, cid = decode_cursor(cursor)
        q = q.where(sa.or_(c.updated_at < at, sa.and_(c.updated_at == at, c.id < cid)))
    rows = conn.execute(q.order_by(c.updated_at.desc(), c.id.desc()).limit(limit + 1)).all()
    items = [ConversationRecord.from_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last.updated_at, last.id)
    return items, next_cursor


def rename_conversation(
    conn: Connection, conversation_id: str, *, user_id: str, title: str
) -> ConversationRecord | None:
    res = conn.execute(
        conversations.update()
        .where(
            conversations.c.id == conversation_id,
            conversations.c.user_id == user_id,
            conversations.c.deleted_at.is_(None),
        )
        .values(title=title, updated_at=utcnow())
    )
    if res.rowcount != 1:
        return None
    return get_conversation(conn, conversation_id, user_id=user_id)


def soft_delete_conversation(conn: Connection, conversation_id: str, *, user_id: str) -> bool:
    now = utcnow()
    res = conn.execute(
        conversations.update()
        .where(
            conversations.c.id == conversation_id,
            conversations.c.user_id == user_id,
            conversations.c.deleted_at.is_(None),
        )
        .values(deleted_at=now)
    )
    if res.rowcount != 1:
        return False
    conn.execute(
        messages.update()
        .where(messages.c.conversation_id == conversation_id, messages.c.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    return True


def list_messages(
    conn: Connection, conversation_id: str, *, after_seq: int, limit: int
) -> list[MessageRecord]:
    """History in ascending ``seq`` (the caller has checked ownership)."""
    rows = conn.execute(
        sa.select(messages)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.seq > after_seq,
            messages.c.deleted_at.is_(None),
        )
        .order_by(messages.c.seq)
        .limit(limit)
    )
    return [MessageRecord.from_row(r) for r in rows]


def soft_delete_all_for_user(conn: Connection, user_id: str) -> int:
    """Account deletion: every conversation and message of the user is soft-deleted now."""
    now = utcnow()
    conn.execute(
        messages.update()
        .where(messages.c.user_id == user_id, messages.c.deleted_at.is_(None))
        .values(deleted_at=now)
    )
    return conn.execute(
        conversations.update()
        .where(conversations.c.user_id == user_id, conversations.c.deleted_at.is_(None))
        .values(deleted_at=now)
    ).rowcount
